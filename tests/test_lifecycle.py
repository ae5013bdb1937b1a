"""Lifecycle of a running daemon: model reload on SIGHUP or a changed file, a camera that comes back, privacy."""

from __future__ import annotations

import io
import json
import shutil
import signal
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from .conftest import CLIP_AUDIO, CLIP_VIDEO, MODELS, Subscriber, run_cli, start_daemon, stop_daemon, write_config


def with_own_models(tmp_path: Path, port: int) -> tuple[Path, Path]:
    """A copy of the shipped models that a test may overwrite, and a config (file camera, no mic) that uses it."""
    models = tmp_path / "models"
    shutil.copytree(MODELS, models)
    cfg = write_config(
        tmp_path / "config.yaml",
        device_id="life",
        models={"dir": str(models)},
        camera={"source": str(CLIP_VIDEO)},
        microphone={"enabled": False},
        mqtt={"host": "127.0.0.1", "port": port},
    )
    return models, cfg


def test_sighup_rejects_a_bad_model_keeps_running_and_takes_a_good_one(
    tmp_path: Path, broker: Any, subscribe: Any
) -> None:
    models, cfg = with_own_models(tmp_path, broker.port)
    sub: Subscriber = subscribe("emotion-edge/life/events")
    proc = start_daemon(cfg)
    try:
        assert sub.wait_for(lambda: len(sub.events()) >= 1, timeout=30)
        good = (models / "face_emotion.tflite").read_bytes()
        (models / "face_emotion.tflite").write_bytes(b"not a model")  # a botched copy
        proc.send_signal(signal.SIGHUP)
        seen = len(sub.events())
        assert sub.wait_for(lambda: len(sub.events()) >= seen + 2, timeout=20), "events stopped after a bad reload"
        (models / "face_emotion.tflite").write_bytes(good)
        meta = json.loads((models / "face_emotion.json").read_text())
        meta["version"] = "reloaded-1"
        (models / "face_emotion.json").write_text(json.dumps(meta))
        proc.send_signal(signal.SIGHUP)
        assert sub.wait_for(lambda: sub.events()[-1]["models"]["face_emotion"] == "reloaded-1", timeout=20)
    finally:
        err = stop_daemon(proc)
    rejected = [line for line in err.splitlines() if "model reload rejected" in line]
    assert len(rejected) == 1 and "face_emotion.tflite" in rejected[0], err
    assert "models reloaded" in err


def test_changed_model_files_are_reloaded_without_a_signal(tmp_path: Path, broker: Any, subscribe: Any) -> None:
    models, cfg = with_own_models(tmp_path, broker.port)
    sub: Subscriber = subscribe("emotion-edge/life/events")
    proc = start_daemon(cfg)
    try:
        assert sub.wait_for(lambda: len(sub.events()) >= 1, timeout=30)
        meta = json.loads((models / "speech_emotion.json").read_text())
        meta["version"] = "copied-in-2"
        (models / "speech_emotion.json").write_text(json.dumps(meta))
        assert sub.wait_for(lambda: sub.events()[-1]["models"]["speech_emotion"] == "copied-in-2", timeout=30)
    finally:
        stop_daemon(proc)


def test_a_camera_that_fails_and_returns_is_reported_and_used_again(
    tmp_path: Path, broker: Any, subscribe: Any
) -> None:
    camera = tmp_path / "camera.mp4"  # absent at start, like an unplugged camera
    cfg = write_config(
        tmp_path / "config.yaml",
        device_id="life",
        camera={"source": str(camera), "reconnect_min_s": 0.2, "reconnect_max_s": 0.5},
        microphone={"enabled": False},
        mqtt={"host": "127.0.0.1", "port": broker.port},
    )
    sub: Subscriber = subscribe("emotion-edge/life/#")
    proc = start_daemon(cfg)
    try:
        assert sub.wait_for(lambda: any('"offline"' in p for p in sub.payloads("/status")), timeout=20)
        assert sub.events() == []
        shutil.copy(CLIP_VIDEO, camera)  # plugged in
        assert sub.wait_for(lambda: len(sub.events()) >= 1, timeout=30)
        assert sub.wait_for(lambda: json.loads(sub.payloads("/status")[-1])["camera"] == "online", timeout=10)
    finally:
        err = stop_daemon(proc)
    assert err.count("offline: cannot open") == 1, "a missing camera is logged once, not once per retry"


def test_nothing_but_the_outbox_is_written_and_no_payload_carries_media(
    tmp_path: Path, broker: Any, subscribe: Any
) -> None:
    state = tmp_path / "state"
    cfg = write_config(tmp_path / "config.yaml", device_id="priv", mqtt={"host": "127.0.0.1", "port": broker.port})
    sub: Subscriber = subscribe("#")
    proc = run_cli(
        "--config",
        str(cfg),
        "replay",
        "--video",
        str(CLIP_VIDEO),
        "--audio",
        str(CLIP_AUDIO),
        "--state-dir",
        str(state),
    )
    assert proc.returncode == 0, proc.stderr
    assert sub.wait_for(lambda: sub.payloads("/availability")[-1:] == ["stopped"], timeout=10)
    written = sorted(p.name for p in state.rglob("*"))
    dbs = {f"{db}.sqlite3{suffix}" for db in ("outbox", "history") for suffix in ("", "-wal", "-shm")}
    assert set(written) <= dbs | {"outbox.seq"}, written
    # The history holds labels, scores and times: text and numbers in known columns, nothing that could be media.
    import sqlite3

    db = sqlite3.connect(state / "history.sqlite3")
    assert {r[1] for r in db.execute("PRAGMA table_info(events)")} == {
        "id", "ts", "seq", "event_id", "window_start", "window_end", "emotion", "confidence", "face_label",
        "face_confidence", "speech_label", "speech_confidence", "media_start_s", "media_end_s",
    }  # fmt: skip
    assert (
        db.execute("SELECT MAX(LENGTH(CAST(event_id AS BLOB)) + LENGTH(window_start)) FROM events").fetchone()[0] < 100
    )
    assert not db.execute("SELECT COUNT(*) FROM events WHERE typeof(face_label) = 'blob'").fetchone()[0]
    db.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.yaml", "state"]
    assert sub.messages

    def small(value: Any) -> bool:
        """Labels, numbers, times: media would need long strings (encoded) or long arrays (samples, pixels)."""
        if isinstance(value, dict):
            return len(value) <= 32 and all(small(v) for v in value.values())
        if isinstance(value, list):
            return len(value) <= 16 and all(small(v) for v in value)
        return not isinstance(value, str) or len(value) <= 200

    for m in sub.messages:
        text = m.payload.decode("utf-8")  # text only: no binary payloads
        # The Home Assistant discovery message (every entity and trigger's config, about 13 KB) is no user data.
        assert len(m.payload) < (16384 if m.topic.startswith("homeassistant/") else 8192), (m.topic, len(m.payload))
        if text.startswith("{"):
            assert small(json.loads(text)), m.topic


class HangingDetector:
    """Fault injection: a detector call that never returns, as a wedged driver or runtime call would."""

    meta = None

    def __init__(self) -> None:
        self.release = threading.Event()
        self.returned = threading.Event()

    def detect(self, frame: Any) -> list:
        self.release.wait()
        self.returned.set()
        return []


class FailingDetector:
    """Fault injection: a detector that raises, as a runtime in a bad state would."""

    meta = None

    def detect(self, frame: Any) -> list:
        raise RuntimeError("tensor arena corrupted")


def live_face_daemon(tmp_path: Path, monkeypatch: Any, **limits: float) -> Any:
    """The real daemon in this process (file camera, no mic, no broker), with short supervision intervals."""
    from edge_daemon import daemon as daemon_module
    from edge_daemon import supervisor
    from edge_daemon.config import load_config

    # STALL_S: long enough that a fresh stage's first inference on a loaded CI machine is not taken for a hang.
    monkeypatch.setattr(daemon_module, "MODEL_CHECK_S", 0.5)
    for name, value in {"STALL_S": 5.0, **limits}.items():
        monkeypatch.setattr(supervisor, name, value)
    cfg = write_config(tmp_path / "config.yaml", camera={"source": str(CLIP_VIDEO)}, microphone={"enabled": False})
    return daemon_module.Daemon(load_config(cfg), publish=False, events_out=io.StringIO())


@pytest.mark.parametrize("fault", ["hangs", "raises"])
def test_a_face_stage_that_hangs_or_dies_is_replaced_and_faces_are_classified_again(
    tmp_path: Path, monkeypatch: Any, fault: str
) -> None:
    d = live_face_daemon(tmp_path, monkeypatch)
    broken = d.face_worker
    bad = HangingDetector() if fault == "hangs" else FailingDetector()
    broken.use_models(bad, d.models.face)
    codes: list[int] = []
    runner = threading.Thread(target=lambda: codes.append(d.run()))
    runner.start()
    try:
        deadline = time.monotonic() + 30
        while not (d.restarts["face"] >= 1 and d.face_worker.faces_seen >= 3) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert d.restarts["face"] >= 1 and d.face_worker is not broken, "the broken stage was not replaced"
        assert d.face_worker.faces_seen >= 3, "the fresh stage classifies no faces"
        assert d.stats()["restarts"]["camera"] == 0
    finally:
        d.request_stop()
        runner.join(timeout=10)
    assert codes == [0], "a replaced stage is not a reason to stop"
    faces = [json.loads(line)["modalities"]["face"] for line in d.events_out.getvalue().splitlines()]
    assert any(f is not None for f in faces), "no event carries a face after the replacement"
    if isinstance(bad, HangingDetector):
        bad.release.set()  # the wedged call finally returns: the retired thread must go quietly
        assert bad.returned.wait(2) and broken.finished.wait(2), "the retired thread did not end"


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")  # the injected fault
def test_a_camera_thread_that_dies_is_replaced_and_frames_flow_again(tmp_path: Path, monkeypatch: Any) -> None:
    from edge_daemon.capture import camera

    real_open, calls = camera.open_capture, []

    def open_capture_that_raises_once(source: Any, cfg: Any) -> Any:
        calls.append(source)
        if len(calls) == 1:
            raise MemoryError("fault injection: an error the camera thread does not expect")
        return real_open(source, cfg)

    monkeypatch.setattr(camera, "open_capture", open_capture_that_raises_once)
    d = live_face_daemon(tmp_path, monkeypatch)
    runner = threading.Thread(target=d.run)
    runner.start()
    try:
        deadline = time.monotonic() + 30
        while not (d.restarts["camera"] == 1 and d.face_worker.faces_seen >= 3) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert d.restarts["camera"] == 1 and len(calls) >= 2, "the dead camera thread was not replaced"
        assert d.face_worker.faces_seen >= 3, "no frames after the camera thread was replaced"
        assert d.sources[0].is_alive()
    finally:
        d.request_stop()
        runner.join(timeout=10)
    assert not runner.is_alive()


def test_an_outbox_that_cannot_be_written_drops_events_with_a_count_and_the_daemon_recovers(
    tmp_path: Path, monkeypatch: Any
) -> None:
    # As when the SD card's file system is remounted read-only after errors, or the disk is full: SQLite refuses
    # every write. The daemon must count and log the loss, keep running, and store again once it can.
    d = live_face_daemon(tmp_path, monkeypatch)
    db = d.outbox._db
    with d.outbox._lock:
        db.execute("PRAGMA query_only = ON")
    runner = threading.Thread(target=d.run)
    runner.start()
    try:
        deadline = time.monotonic() + 30
        while d.store_failures < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert d.store_failures >= 2 and d.events == 0 and runner.is_alive()
        assert d.outbox.last_seq == 0, "a failed write must not use up a seq"
        with d.outbox._lock:
            db.execute("PRAGMA query_only = OFF")  # writable again
        while d.events < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert d.events >= 2, "events were not stored again once the outbox was writable"
        stats = d.stats()
        assert stats["drops"]["outbox_write_failed"] >= 2 and stats["last_seq"] == stats["events"] >= 2
    finally:
        d.request_stop()
        runner.join(timeout=10)
    assert not runner.is_alive()


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")  # the injected faults
def test_a_camera_thread_that_keeps_dying_rests_offline_and_the_daemon_goes_on(
    tmp_path: Path, monkeypatch: Any
) -> None:
    from edge_daemon.capture import camera

    def open_capture_that_always_raises(source: Any, cfg: Any) -> Any:
        raise MemoryError("fault injection: an error the camera thread does not expect")

    monkeypatch.setattr(camera, "open_capture", open_capture_that_always_raises)
    d = live_face_daemon(tmp_path, monkeypatch, MAX_RESTARTS=2)
    runner = threading.Thread(target=d.run)
    runner.start()
    try:
        deadline = time.monotonic() + 20
        while "within the hour" not in str(d.sources[0].status.snapshot()["reason"]) and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(1.5)  # a few more supervision rounds: no more restarts, no exit
        assert runner.is_alive(), "a failing camera must not end the daemon"
        assert d.restarts["camera"] == 2
        assert d.sources[0].status.snapshot()["state"] == "offline"
    finally:
        d.request_stop()
        runner.join(timeout=10)
    assert not runner.is_alive()


def test_a_stage_that_keeps_hanging_ends_the_process_for_its_supervisor(tmp_path: Path, monkeypatch: Any) -> None:
    from edge_daemon import wiring

    hung: list[HangingDetector] = []

    def hanging_detector(config: Any) -> HangingDetector:
        hung.append(HangingDetector())
        return hung[-1]

    d = live_face_daemon(tmp_path, monkeypatch, MAX_RESTARTS=2, STALL_S=2.0)
    monkeypatch.setattr(wiring, "load_detector", hanging_detector)  # every fresh stage hangs too
    d.face_worker.use_models(hanging_detector(d.config), d.models.face)
    t0 = time.monotonic()
    try:
        code = d.run()
    finally:
        for h in hung:
            h.release.set()
    assert code == 1 and d.restarts["face"] == 2 and time.monotonic() - t0 < 30


def test_a_replay_whose_stage_dies_exits_non_zero(tmp_path: Path, monkeypatch: Any) -> None:
    from edge_daemon.config import load_config
    from edge_daemon.daemon import Daemon, ReplayInputs

    cfg = write_config(tmp_path / "config.yaml")
    d = Daemon(load_config(cfg), replay=ReplayInputs(video=CLIP_VIDEO), publish=False, state_dir=tmp_path / "state")
    d.face_worker.use_models(FailingDetector(), d.models.face)
    assert d.run() == 1, "a replay that did not process its input must not report success"


def test_a_model_copied_over_in_place_does_not_crash_the_running_daemon(
    tmp_path: Path, broker: Any, subscribe: Any
) -> None:
    """`cp new.tflite models/` truncates the file in place; a memory-mapped model would die with SIGBUS."""
    models, cfg = with_own_models(tmp_path, broker.port)
    sub: Subscriber = subscribe("emotion-edge/life/events")
    proc = start_daemon(cfg)
    try:
        assert sub.wait_for(lambda: len(sub.events()) >= 1, timeout=30)
        with open(models / "face_emotion.tflite", "r+b") as f:
            f.truncate(0)  # the first moment of a copy
        seen = len(sub.events())
        assert sub.wait_for(lambda: len(sub.events()) >= seen + 3, timeout=30), "the daemon stopped producing events"
    finally:
        stop_daemon(proc)


@pytest.mark.parametrize(
    "rhythm, code",
    [
        ([(signal.SIGINT, 0.0)] * 50, 130),  # a burst: Ctrl-C held down, or hit twice in one breath
        ([(signal.SIGINT, 0.05), (signal.SIGTERM, 0.3), (signal.SIGINT, 0.0)], 130),  # the first decides the code
        ([(signal.SIGTERM, 0.0)] * 20, 0),  # systemd's stop, repeated by an impatient operator
        ([(signal.SIGINT, 0.002)] * 1500, 130),  # every 2 ms for 3 s: signals land all through the shutdown
    ],
    ids=["sigint-burst", "mixed", "sigterm-burst", "sigint-all-through-shutdown"],
)
def test_any_number_of_stop_signals_in_any_rhythm_end_run_cleanly(
    tmp_path: Path, broker: Any, subscribe: Any, rhythm: list[tuple[int, float]], code: int
) -> None:
    _, cfg = with_own_models(tmp_path, broker.port)
    sub: Subscriber = subscribe("emotion-edge/life/#")
    proc = start_daemon(cfg)
    try:
        assert sub.wait_for(lambda: sub.payloads("/availability")[-1:] == ["online"], timeout=30)
        t0 = time.monotonic()
        for signum, pause_s in rhythm:
            if proc.poll() is not None:
                break
            proc.send_signal(signum)
            time.sleep(pause_s)
        proc.wait(timeout=15)
        elapsed = time.monotonic() - t0
    finally:
        if proc.poll() is None:
            proc.kill()
    stderr = proc.stderr.read() if proc.stderr else ""
    assert proc.returncode == code and "Traceback" not in stderr, (proc.returncode, stderr)
    assert elapsed < 6, f"stopping took {elapsed:.1f} s"
    assert stderr.count("received: stopping") == 1, "the first signal stops; the others change nothing"
    assert sub.wait_for(lambda: sub.payloads("/availability")[-1:] == ["stopped"], timeout=5)
    assert json.loads(sub.payloads("life/state")[-1])["emotion"] == "stopped"


def state_config(tmp_path: Path, port: int, **extra: Any) -> Path:
    """A file camera with faces (the clip), no microphone; a state after one window, so tests need not wait long."""
    return write_config(
        tmp_path / "config.yaml",
        device_id="life",
        camera={"source": str(CLIP_VIDEO)},
        microphone={"enabled": False},
        fusion={"state_after_windows": 1},
        mqtt={"host": "127.0.0.1", "port": port},
        **extra,
    )


def states(sub: Subscriber) -> list[str]:
    return [json.loads(p)["emotion"] for p in sub.payloads("life/state")]


@pytest.mark.parametrize("door", ["mqtt", "api"])
def test_paused_stays_paused_when_the_window_open_at_the_pause_closes(
    tmp_path: Path, broker: Any, subscribe: Any, door: str
) -> None:
    from .webtools import PASSWORD, admin, free_port, wait_until

    page = free_port()
    cfg = state_config(tmp_path, broker.port, web={"enabled": True, "host": "127.0.0.1", "port": page})
    sub: Subscriber = subscribe("emotion-edge/life/#")
    proc = start_daemon(cfg, env={"EMOTION_EDGE_WEB_PASSWORD": PASSWORD})
    try:
        assert sub.wait_for(lambda: states(sub)[-1:] not in ([], ["starting"]), timeout=30), states(sub)
        seen = len(sub.events())
        if door == "mqtt":
            sub.client.publish("emotion-edge/life/analysis/set", "OFF", qos=1)
        else:  # the page's button (HTTP Basic: a script, no session cookie, so no CSRF token)
            r = admin(page, "/api/controls", method="POST", body='{"analysis": false}')
            assert r.status == 200, r.text
        assert sub.wait_for(lambda: states(sub)[-1:] == ["paused"], timeout=10)
        # The window open at the pause closes about 2 s later (the live lag) and goes out as an event.
        assert sub.wait_for(lambda: len(sub.events()) > seen, timeout=10), "the open window was not an event"
        time.sleep(1.0)
        after = states(sub)[states(sub).index("paused") :]
        assert set(after) == {"paused"}, f"a window overwrote paused: {after}"
        late: Subscriber = subscribe("emotion-edge/life/state")  # what Home Assistant reads
        assert late.wait_for(lambda: states(late) == ["paused"], timeout=5), states(late)
        on_page = wait_until(lambda: admin(page, "/api/state").json()["state"], 10, "the page's state")
        assert {k: v for k, v in on_page.items() if k != "emoji"} == json.loads(late.payloads("life/state")[0])
    finally:
        stop_daemon(proc)


def test_a_restart_replaces_the_previous_runs_emotion_before_it_says_online(
    tmp_path: Path, broker: Any, subscribe: Any
) -> None:
    # What a crashed run leaves: its emotion retained, and its will.
    sub: Subscriber = subscribe("emotion-edge/life/#")
    stale = {"emotion": "happy", "confidence": 0.9, "since": "2026-12-01T00:00:00Z", "seq": 7, "people": 1}
    sub.client.publish("emotion-edge/life/state", json.dumps(stale), qos=1, retain=True).wait_for_publish(5)
    sub.client.publish("emotion-edge/life/availability", "offline", qos=1, retain=True).wait_for_publish(5)
    assert sub.wait_for(lambda: states(sub) == ["happy"], timeout=5)
    sub.messages.clear()
    proc = start_daemon(state_config(tmp_path, broker.port))
    try:
        assert sub.wait_for(lambda: "online" in sub.payloads("/availability") and states(sub), timeout=30)
        order = [m.topic.rsplit("/", 1)[1] + ":" + m.payload.decode()[:24] for m in sub.messages]
        first_state = next(i for i, m in enumerate(sub.messages) if m.topic.endswith("life/state"))
        online = next(i for i, m in enumerate(sub.messages) if m.payload == b"online")
        assert states(sub)[0] == "starting" and first_state < online, order
    finally:
        stop_daemon(proc)
    # A clean stop leaves `stopped`, not the last emotion, for whoever looks before the next start.
    assert sub.wait_for(lambda: states(sub)[-1:] == ["stopped"], timeout=5), states(sub)
