"""End to end: the bundled clip replayed through the real models and the daemon pipeline, received by a real subscriber."""

from __future__ import annotations

import json
import re
from datetime import datetime
from pathlib import Path
from typing import Any

from .conftest import CLIP_AUDIO, CLIP_VIDEO, SEGMENTS, Subscriber, run_cli, start_daemon, stop_daemon, write_config

ISO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
EMOTIONS = {"angry", "disgust", "fear", "happy", "sad", "surprise", "neutral", "uncertain"}


def check_schema(e: dict[str, Any]) -> None:
    """The documented event schema (README, 'MQTT API')."""
    assert e["schema"] == 2
    assert re.fullmatch(r"[0-9a-f-]{36}", e["event_id"])
    assert isinstance(e["seq"], int) and e["seq"] >= 1
    assert ISO.match(e["window_start"]) and ISO.match(e["window_end"])
    start = datetime.fromisoformat(e["window_start"].replace("Z", "+00:00"))
    end = datetime.fromisoformat(e["window_end"].replace("Z", "+00:00"))
    assert (end - start).total_seconds() == e["media_end_s"] - e["media_start_s"] == 2.0
    assert e["emotion"] in EMOTIONS and 0.0 <= e["confidence"] <= 1.0
    assert e["method"] == "product"  # the default rule (fusion.method)
    assert set(e["modalities"]) == {"face", "speech"}
    assert e["used"] == [m for m in ("face", "speech") if e["modalities"][m] is not None] and e["used"]
    for m in e["used"]:
        s = e["modalities"][m]
        assert set(s) == {"label", "confidence", "votes", "probs", "count"}
        assert s["label"] in EMOTIONS and sum(s["votes"].values()) == s["count"] >= 1
        assert abs(sum(s["probs"].values()) - 1.0) < 0.01
    assert set(e["models"]) == {"face_detector", "face_emotion", "speech_emotion"}
    # Per-face results: the frame's pixels (the clip is 640x480), a label each, one face in this clip.
    assert e["face_count"] == len(e["faces"]) == (1 if e["modalities"]["face"] else 0)
    for f in e["faces"]:
        x, y, w, h = f["box"]
        assert 0 <= x < 640 and 0 <= y < 480 and 20 < w <= 640 and 20 < h <= 480, f
        assert f["label"] in EMOTIONS and 0.0 <= f["confidence"] <= 1.0


def replay(tmp_path: Path, port: int, *extra: str, state: str = "state") -> tuple[Any, list[dict[str, Any]]]:
    cfg = write_config(tmp_path / "config.yaml", mqtt={"host": "127.0.0.1", "port": port}, device_id="e2e")
    out = tmp_path / "events.jsonl"
    proc = run_cli(
        "--config", str(cfg), "replay", *extra, "--events-out", str(out), "--state-dir", str(tmp_path / state)
    )
    assert proc.returncode == 0, proc.stderr
    return proc, [json.loads(line) for line in out.read_text().splitlines()] if out.exists() else []


def test_replay_publishes_schema_valid_events_with_both_modalities_and_right_emotions(
    tmp_path: Path, broker: Any, subscribe: Any
) -> None:
    sub: Subscriber = subscribe("emotion-edge/e2e/#")
    _, written = replay(tmp_path, broker.port, "--video", str(CLIP_VIDEO), "--audio", str(CLIP_AUDIO))
    assert sub.wait_for(lambda: len(sub.events()) == len(written) and sub.payloads("/availability")[-1:] == ["stopped"])
    events = sub.events()
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))  # in order, no gap, from 1
    assert [e["event_id"] for e in events] == [e["event_id"] for e in written]
    assert len(events) == 9  # 18 s of media in 2 s windows
    for e in events:
        check_schema(e)
    assert all(
        e["used"] == ["face", "speech"] for e in events[1:]
    )  # the first window may precede the first voiced speech
    # The middle window of each segment is clear: face and voice agree on one emotion.
    for start, _end, emotion in SEGMENTS:
        middle = next(e for e in events if e["media_start_s"] == start + 2.0)
        assert middle["emotion"] == emotion, (emotion, middle)
    # Availability: online then stopped, both retained; a state was published.
    assert sub.payloads("/availability")[0] == "online"
    assert sub.payloads("/state")
    stats = json.loads(sub.payloads("/stats")[-1])
    assert stats["frames_analysed"] == 90  # 18 s at face.rate_hz 5
    # face.detect_every 5: the detector ran on every 5th frame (and after each of the clip's two cuts), faces were
    # followed on the others, and the windows above were still right.
    assert 18 <= stats["face_detections"] <= 24, stats


def test_retained_topics_greet_a_late_subscriber(tmp_path: Path, broker: Any, subscribe: Any) -> None:
    replay(tmp_path, broker.port, "--video", str(CLIP_VIDEO))
    late: Subscriber = subscribe("emotion-edge/e2e/#")
    assert late.wait_for(lambda: late.payloads("/availability") and late.payloads("/state"), timeout=5)
    assert late.payloads("/availability") == ["stopped"]
    assert json.loads(late.payloads("/state")[0])["emotion"] in EMOTIONS
    assert late.events() == []  # events are never retained
    assert json.loads(late.payloads("/status")[-1]) == {"video-file": "ended"}  # the source's last word


def test_a_replay_beside_the_live_daemon_of_the_same_device_does_not_knock_it_off(
    tmp_path: Path, broker: Any, subscribe: Any
) -> None:
    sub: Subscriber = subscribe("emotion-edge/e2e/#")
    cfg = write_config(
        tmp_path / "config.yaml",
        mqtt={"host": "127.0.0.1", "port": broker.port},
        device_id="e2e",
        camera={"source": str(CLIP_VIDEO)},
        microphone={"enabled": False},
    )
    service = "emotion-edge/e2e/availability"
    live = start_daemon(cfg)
    try:
        assert sub.wait_for(lambda: sub.payloads(service)[-1:] == ["online"], timeout=30)
        proc = run_cli("--config", str(cfg), "replay", "--audio", str(CLIP_AUDIO), "--state-dir", str(tmp_path / "r"))
        assert proc.returncode == 0, proc.stderr
        # The replay speaks under <base>/replay/ (its own device in Home Assistant): its `stopped` is its own.
        assert sub.payloads("emotion-edge/e2e/replay/availability") == ["online", "stopped"]
        assert sub.wait_for(lambda: len(sub.payloads("emotion-edge/e2e/replay/events")) >= 1, timeout=5)
        late: Subscriber = subscribe(service)
        assert late.wait_for(lambda: late.payloads(service) == ["online"], timeout=10), late.payloads(service)
    finally:
        log = stop_daemon(live)
    assert "connection lost" not in log, "the replay took over the live daemon's MQTT session"
    # The service's availability never moved while the replay ran: online until its own clean stop.
    assert sub.payloads(service) == ["online", "stopped"], sub.payloads(service)
    assert "was set to" not in log, "the replay wrote on the service's availability"


def test_one_modality_still_yields_events_that_say_which(tmp_path: Path, broker: Any, subscribe: Any) -> None:
    sub: Subscriber = subscribe("emotion-edge/e2e/replay/events")  # a replay speaks under <base>/replay/
    _, written = replay(tmp_path, broker.port, "--audio", str(CLIP_AUDIO))
    assert written and all(e["used"] == ["speech"] and e["modalities"]["face"] is None for e in written)
    assert sub.wait_for(lambda: len(sub.events()) == len(written))


def test_seq_continues_across_runs_with_the_same_state_dir(tmp_path: Path, broker: Any) -> None:
    _, first = replay(tmp_path, broker.port, "--video", str(CLIP_VIDEO))
    _, both = replay(tmp_path, broker.port, "--video", str(CLIP_VIDEO))
    second = both[len(first) :]  # --events-out appends
    assert [e["seq"] for e in second] == list(range(len(first) + 1, len(first) + len(second) + 1))


def test_replay_without_a_broker_keeps_events_for_later(tmp_path: Path) -> None:
    _, written = replay(tmp_path, 1, "--audio", str(CLIP_AUDIO), "--drain-timeout", "1")  # nothing listens on port 1
    assert written
    from edge_daemon.outbox import Outbox

    assert Outbox(tmp_path / "state").depth() == len(written)
