"""Home Assistant device and control, against a real Mosquitto: discovery, switches, pausing, empty room, forget.

A file stands in for the camera (this machine has none), through the same capture code; the microphone is the real
PortAudio path, which finds no sound card here. scripts/ha-e2e.sh checks the same payloads against a real
Home Assistant.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from datetime import datetime, timezone
from itertools import pairwise
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from edge_daemon.config import load_config
from edge_daemon.fusion import FaceResult, Prediction, faces_of
from edge_daemon.history import HistoryReader
from edge_daemon.labels import CANONICAL, NO_ONE
from edge_daemon.models import load_detector

from .conftest import CLIP_VIDEO, MODELS, Subscriber, run_cli, start_daemon, stop_daemon, write_config

BASE = "emotion-edge/ha"
DEVICE_TOPIC = "homeassistant/device/emotion_edge_ha/config"
REPLAY_DEVICE_TOPIC = "homeassistant/device/emotion_edge_ha_replay/config"
STATES = [*CANONICAL, "uncertain", "no_one", "paused", "starting", "stopped"]


def ha_config(tmp_path: Path, port: int, **extra: Any) -> Path:
    sections: dict[str, Any] = {
        "camera": {"source": str(CLIP_VIDEO), "reconnect_min_s": 0.2},
        "microphone": {"reconnect_min_s": 0.2, "reconnect_max_s": 0.5},
        "fusion": {"absent_after_s": 2},
        "mqtt": {"host": "127.0.0.1", "port": port, "stats_interval_s": 1},
    }
    for key, value in extra.items():
        sections[key] = {**sections.get(key, {}), **value} if isinstance(value, dict) else value
    return write_config(tmp_path / "config.yaml", device_id="ha", **sections)


def last_json(sub: Subscriber, suffix: str) -> dict[str, Any] | None:
    payloads = sub.payloads(suffix)
    return json.loads(payloads[-1]) if payloads else None


def retained(port: int, topic: str) -> dict[str, bytes]:
    """What the broker keeps under a filter now, as a client that connects later sees it."""
    late = Subscriber(port, topic)
    try:
        time.sleep(0.3)  # retained messages follow the SUBACK at once
        return {m.topic: m.payload for m in late.messages if m.retain}
    finally:
        late.close()


def open_files(pid: int) -> list[str]:
    out = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            out.append(os.readlink(f"/proc/{pid}/fd/{fd}"))
        except OSError:
            pass  # closed meanwhile
    return out


def face_events_since(sub: Subscriber, when: datetime) -> list[dict[str, Any]]:
    """Face events of windows that began at or after `when`."""
    return [
        e
        for e in sub.events()
        if datetime.fromisoformat(e["window_start"].replace("Z", "+00:00")) >= when and e["modalities"]["face"]
    ]


# ----------------------------------------------------------------------------------------------- discovery


def test_discovery_is_one_retained_device_message_with_origin_diagnostics_event_and_switches(
    tmp_path: Path, broker: Any, subscribe: Any
) -> None:
    # A device announced by 0.1 (one topic per sensor) must not show twice after the upgrade.
    legacy = "homeassistant/sensor/emotion_edge_ha/emotion/config"
    sub: Subscriber = subscribe("#")
    sub.client.publish(legacy, json.dumps({"name": "Emotion", "state_topic": f"{BASE}/state"}), qos=1, retain=True)
    proc = start_daemon(ha_config(tmp_path, broker.port))
    try:
        assert sub.wait_for(lambda: sub.payloads(DEVICE_TOPIC), timeout=30), [m.topic for m in sub.messages]
        assert sub.wait_for(lambda: sub.payloads(legacy)[-1:] == [""], timeout=10), "legacy config not cleared"
        kept = retained(broker.port, "homeassistant/#")
        assert list(kept) == [DEVICE_TOPIC], "legacy per-entity configs must be cleared, the device config kept"
        c = json.loads(kept[DEVICE_TOPIC])
        assert c["origin"]["name"] == "emotion-edge" and c["origin"]["sw"] == c["device"]["sw_version"] == "0.1.0"
        assert c["device"]["serial_number"] == "ha" and c["device"]["model"]
        assert c["device"]["identifiers"] == ["emotion-edge-ha"]  # unchanged: Home Assistant keeps the device
        # Anything but `online` (the will `offline`, a clean `stopped`) reads as unavailable.
        assert c["availability_topic"] == f"{BASE}/availability" and c["payload_not_available"] == "offline"
        assert "'online' if value == 'online' else 'offline'" in c["availability_template"]
        cmps = c["components"]
        assert {k: v["p"] for k, v in cmps.items()} == {
            "emotion": "sensor", "confidence": "sensor", "people": "sensor", "window": "event",
            "camera_connected": "binary_sensor", "microphone_connected": "binary_sensor", "drops": "sensor",
            "uptime": "sensor", "frames_per_s": "sensor", "last_error": "sensor",
            "last_event_age": "sensor", "face_detect_ms": "sensor", "face_track_ms": "sensor",
            "face_emotion_ms": "sensor", "speech_emotion_ms": "sensor", "analysis": "switch", "camera": "switch",
            "microphone": "switch", "reload_models": "button", "purge_history": "button",
            "min_confidence": "number", "state_after_windows": "number", "absent_after_s": "number", "method": "select",
            **{f"became_{s}": "device_automation" for s in STATES},
        }  # fmt: skip
        entities = {k: v for k, v in cmps.items() if v["p"] != "device_automation"}
        # Current Home Assistant reads default_entity_id (object_id is ignored from 2026.4); 2025.4 reads object_id.
        # Both name the same entity id, the one docs/homeassistant.md lists.
        for key, v in entities.items():
            assert v["default_entity_id"] == f"{v['p']}.emotion_edge_ha_{key}" and v["object_id"] == v["unique_id"]
        assert cmps["emotion"]["default_entity_id"] == "sensor.emotion_edge_ha_emotion"
        # One device trigger per state, on the topic that carries each change once (never a retained copy).
        for state in STATES:
            t = cmps[f"became_{state}"]
            assert (t["automation_type"], t["type"], t["subtype"], t["payload"]) == ("trigger", "emotion", state, state)
            assert t["topic"] == f"{BASE}/state_changed" and t["value_template"] == "{{ value_json.emotion }}"
            assert t["unique_id"] and "default_entity_id" not in t and "object_id" not in t  # a trigger has no id
        assert cmps["reload_models"]["command_topic"] == f"{BASE}/reload_models/set"
        assert cmps["purge_history"]["payload_press"] == "PRESS"
        assert set(cmps["emotion"]["options"]) == {*CANONICAL, "uncertain", "no_one", "paused", "starting", "stopped"}
        assert "unknown" not in cmps["emotion"]["options"], "Home Assistant's own 'no data' word"
        assert cmps["window"]["state_topic"] == f"{BASE}/events"
        assert set(cmps["window"]["event_types"]) == {*CANONICAL, "uncertain"}
        assert cmps["confidence"]["unit_of_measurement"] == "%"
        diagnostic = {k for k, v in cmps.items() if v.get("entity_category") == "diagnostic"}
        assert diagnostic == {
            k for k in cmps
            if k.endswith(("_connected", "_ms")) or k in ("drops", "last_event_age", "uptime", "frames_per_s", "last_error")
        }  # fmt: skip
        assert {k for k, v in cmps.items() if v.get("enabled_by_default") is False} == {
            "last_event_age", "face_detect_ms", "face_track_ms", "face_emotion_ms", "speech_emotion_ms"
        }  # fmt: skip
        assert cmps["analysis"]["command_topic"] == f"{BASE}/analysis/set"
        assert cmps["analysis"]["state_topic"] == f"{BASE}/analysis/state"
        assert len({v["unique_id"] for v in cmps.values()}) == len(cmps)
        # The switch states are retained from the start, so Home Assistant shows them before anyone touches them.
        assert sub.wait_for(lambda: sub.payloads(f"{BASE}/analysis/state") == ["ON"], timeout=10)
        # The diagnostics' topic carries what their templates read.
        assert sub.wait_for(lambda: (last_json(sub, "/stats") or {}).get("last_event_age_s") is not None, timeout=30)
        stats = last_json(sub, "/stats")
        assert stats is not None and set(stats["paused_s"]) == {"camera", "microphone"}
        assert {"face_detect", "face_track", "face_emotion"} <= set(stats["inference_ms"])  # what the _ms sensors read
        # What Uptime, Analysed frames per second and Last error read (no error yet: null, shown as "none").
        assert sub.wait_for(lambda: (last_json(sub, "/stats") or {}).get("frames_analysed_per_s"), timeout=10)
        stats = last_json(sub, "/stats")
        assert stats is not None and stats["uptime_s"] > 0 and stats["last_error"] is None
        assert 0 < stats["frames_analysed_per_s"] <= 5.5, stats  # face.rate_hz 5
        before = len(sub.payloads(DEVICE_TOPIC))
        sub.client.publish("homeassistant/status", "online", qos=1)  # Home Assistant restarted and forgot it
        assert sub.wait_for(lambda: len(sub.payloads(DEVICE_TOPIC)) > before, timeout=10), "not announced again"
    finally:
        stop_daemon(proc)
    assert sub.wait_for(lambda: sub.payloads(f"{BASE}/availability")[-1:] == ["stopped"], timeout=5)


def test_commands_false_removes_switches_and_buttons_and_discovery_false_clears_once_then_says_nothing(
    tmp_path: Path, broker: Any, subscribe: Any
) -> None:
    sub: Subscriber = subscribe("#")
    proc = start_daemon(ha_config(tmp_path, broker.port))
    try:
        assert sub.wait_for(lambda: sub.payloads(DEVICE_TOPIC), timeout=30)
    finally:
        stop_daemon(proc)
    assert {v["p"] for v in json.loads(sub.payloads(DEVICE_TOPIC)[-1])["components"].values()} >= {"switch", "button"}
    # Remote control off: Home Assistant removes a component of a device only when it comes with its `p` key alone.
    proc = start_daemon(ha_config(tmp_path, broker.port, mqtt={"commands": False}))
    try:
        assert sub.wait_for(lambda: len(sub.payloads(DEVICE_TOPIC)) >= 2, timeout=30)
        assert sub.wait_for(lambda: sub.payloads("/availability")[-1:] == ["online"], timeout=10)
        for name in ("analysis", "reload_models"):
            sub.client.publish(f"{BASE}/{name}/set", "OFF" if name == "analysis" else "PRESS", qos=1)
        time.sleep(1.0)  # a daemon that obeyed would have echoed OFF by now (it does within 0.1 s)
        assert sub.payloads(f"{BASE}/analysis/state")[-1:] == ["ON"], "remote control was off"
    finally:
        stderr = stop_daemon(proc)
    assert "analysis switched off" not in stderr and "reload models pressed" not in stderr
    cmps = json.loads(sub.payloads(DEVICE_TOPIC)[-1])["components"]
    for name, platform in [("analysis", "switch"), ("camera", "switch"), ("microphone", "switch"),
                           ("reload_models", "button"), ("purge_history", "button"), ("min_confidence", "number"),
                           ("state_after_windows", "number"), ("absent_after_s", "number"), ("method", "select")]:  # fmt: skip
        assert cmps[name] == {"p": platform}, cmps[name]
    assert not [k for k, v in cmps.items() if "command_topic" in v], "nothing that takes commands may stay"
    assert cmps["emotion"]["default_entity_id"] == "sensor.emotion_edge_ha_emotion"  # the rest stays as it was
    # Discovery off: the retained announcement is cleared once...
    cfg = ha_config(tmp_path, broker.port, mqtt={"homeassistant": {"discovery": False}})
    proc = start_daemon(cfg)
    try:
        assert sub.wait_for(lambda: sub.payloads(DEVICE_TOPIC)[-1:] == [""], timeout=30), "discovery not cleared"
    finally:
        stop_daemon(proc)
    assert retained(broker.port, "homeassistant/#") == {}
    # ... and then nothing at all: an empty message at every connect makes Home Assistant log "No device
    # components to cleanup" each time.
    said = len([m for m in sub.messages if m.topic.startswith("homeassistant/")])
    stats = len(sub.payloads("/stats"))
    proc = start_daemon(cfg)
    try:
        assert sub.wait_for(lambda: len(sub.payloads("/stats")) >= stats + 2, timeout=30)  # connected for a while
    finally:
        stop_daemon(proc)
    assert [m.topic for m in sub.messages if m.topic.startswith("homeassistant/")][said:] == []


# ----------------------------------------------------------------------------------------------- control


def test_camera_off_releases_the_device_pauses_face_events_and_on_brings_them_back(
    tmp_path: Path, broker: Any, subscribe: Any
) -> None:
    sub: Subscriber = subscribe(f"{BASE}/#")
    proc = start_daemon(ha_config(tmp_path, broker.port))
    try:
        assert sub.wait_for(lambda: len(sub.events()) >= 2, timeout=40), "no events before the switch"
        assert any(str(CLIP_VIDEO) == f for f in open_files(proc.pid)), "the camera (a file here) should be open"
        sub.client.publish(f"{BASE}/camera/set", "OFF", qos=1)
        assert sub.wait_for(lambda: sub.payloads(f"{BASE}/camera/state")[-1:] == ["OFF"], timeout=10)
        assert sub.wait_for(lambda: (last_json(sub, "/status") or {}).get("camera") == "paused", timeout=10)
        assert str(CLIP_VIDEO) not in open_files(proc.pid), "a paused camera must release its device"
        paused_at = datetime.now(timezone.utc)
        # Nothing seen and nothing heard (no microphone here): after fusion.absent_after_s the room reads empty.
        assert sub.wait_for(lambda: (last_json(sub, f"{BASE}/state") or {}).get("emotion") == NO_ONE, timeout=20)
        state = last_json(sub, f"{BASE}/state")
        assert state is not None and state["confidence"] is None and state["people"] == 0
        # The device triggers' topic said each change once, with what came before: "emotion became no_one". It is
        # published just after the retained state, so it may arrive a moment later.
        said = lambda: [json.loads(p)["emotion"] for p in sub.payloads(f"{BASE}/state_changed")][-1:]  # noqa: E731
        assert sub.wait_for(lambda: said() == [NO_ONE], timeout=5), said()
        changes = [json.loads(p) for p in sub.payloads(f"{BASE}/state_changed")]
        assert changes and changes[-1]["emotion"] == NO_ONE and changes[-1]["previous"] not in (NO_ONE, None)
        assert all(b["previous"] == a["emotion"] != b["emotion"] for a, b in pairwise(changes)), changes
        assert len(changes) <= len(sub.payloads(f"{BASE}/state"))  # a new people count is no new state
        assert retained(broker.port, f"{BASE}/state_changed") == {}, "a retained change would fire again"
        late = face_events_since(sub, paused_at)  # windows that began before the switch may still close after it
        assert late == [], f"face events while the camera was off: {[e['window_start'] for e in late]}"
        stats = last_json(sub, "/stats")
        assert stats is not None and stats["paused_s"]["camera"] > 0
        assert stats["sources"][next(k for k in stats["sources"] if k.startswith("camera"))]["failures"] == 0
        sub.client.publish(f"{BASE}/camera/set", "ON", qos=1)
        assert sub.wait_for(lambda: (last_json(sub, "/status") or {}).get("camera") == "online", timeout=10)
        resumed_at = datetime.now(timezone.utc)
        assert sub.wait_for(lambda: face_events_since(sub, resumed_at), timeout=20), "no face events after ON"
        # The next real window ends the empty room at once, not after state_after_windows windows.
        assert sub.wait_for(
            lambda: (last_json(sub, f"{BASE}/state") or {}).get("emotion") not in (NO_ONE, None), timeout=10
        )
        assert last_json(sub, f"{BASE}/state")["people"] == 1  # type: ignore[index]
    finally:
        stop_daemon(proc)


def test_analysis_off_is_saved_and_holds_from_the_first_frame_after_a_restart(
    tmp_path: Path, broker: Any, subscribe: Any
) -> None:
    sub: Subscriber = subscribe(f"{BASE}/#")
    cfg = ha_config(tmp_path, broker.port)
    proc = start_daemon(cfg)
    try:
        assert sub.wait_for(lambda: sub.payloads(f"{BASE}/analysis/state")[-1:] == ["ON"], timeout=30)
        sub.client.publish(f"{BASE}/analysis/set", "OFF", qos=1)
        assert sub.wait_for(lambda: sub.payloads(f"{BASE}/analysis/state")[-1:] == ["OFF"], timeout=10)
        assert sub.wait_for(lambda: (last_json(sub, f"{BASE}/state") or {}).get("emotion") == "paused", timeout=10)
    finally:
        stop_daemon(proc)
    assert json.loads((tmp_path / "state" / "controls.json").read_text())["analysis"] is False
    sub.messages.clear()
    proc = start_daemon(cfg)
    try:
        assert sub.wait_for(lambda: sub.payloads("/availability")[-1:] == ["online"], timeout=30)
        assert sub.wait_for(lambda: len(sub.payloads("/stats")) >= 3, timeout=30)
        statuses = [json.loads(p) for p in sub.payloads("/status")]
        assert statuses and all(s == {"camera": "paused", "microphone": "paused"} for s in statuses[1:]), statuses
        assert not any(s.get("camera") == "online" for s in statuses), "the camera was opened after a paused start"
        stats = last_json(sub, "/stats")
        assert stats is not None and stats["frames_analysed"] == 0 and sub.events() == []
        # The microphone did not even try its device (no sound card here: trying would count a failure).
        assert all(s["failures"] == 0 and s["state"] == "paused" for s in stats["sources"].values()), stats
        assert sub.payloads(f"{BASE}/analysis/state")[-1:] == ["OFF"]
        assert (last_json(sub, f"{BASE}/state") or {}).get("emotion") == "paused"
        sub.client.publish(f"{BASE}/analysis/set", "ON", qos=1)
        assert sub.wait_for(lambda: len(sub.events()) >= 1, timeout=30), "no events after analysis ON"
    finally:
        stop_daemon(proc)


def test_garbage_and_retained_commands_are_ignored_with_one_log_line_each(
    tmp_path: Path, broker: Any, subscribe: Any
) -> None:
    sub: Subscriber = subscribe(f"{BASE}/#")
    # Left retained by a misconfigured client, it would undo every later change at each reconnect of the daemon.
    sub.client.publish(f"{BASE}/camera/set", "OFF", qos=1, retain=True).wait_for_publish(5)
    assert retained(broker.port, f"{BASE}/camera/set") == {f"{BASE}/camera/set": b"OFF"}
    # No microphone: PyAudio's set-up silences fd 2 for a moment (capture/microphone.py, _quiet_stderr), and a log
    # line of another thread written then is lost; this test counts log lines.
    proc = start_daemon(ha_config(tmp_path, broker.port, microphone={"enabled": False}))
    try:
        assert sub.wait_for(lambda: sub.payloads(f"{BASE}/analysis/state")[-1:] == ["ON"], timeout=30)
        sub.client.publish(f"{BASE}/analysis/set", "maybe", qos=1)
        sub.client.publish(f"{BASE}/analysis/set", "OFF", qos=1)  # a good one after it: both were read
        assert sub.wait_for(lambda: sub.payloads(f"{BASE}/analysis/state")[-1:] == ["OFF"], timeout=10)
        assert sub.payloads(f"{BASE}/camera/state")[-1:] == ["ON"], "a retained command was obeyed"
    finally:
        sub.client.publish(f"{BASE}/camera/set", b"", qos=1, retain=True)
        stderr = stop_daemon(proc)
    assert "Traceback" not in stderr
    garbage = [line for line in stderr.splitlines() if "ignored" in line]
    assert len(garbage) == 2, stderr
    assert "retained command" in garbage[0] and "camera/set" in garbage[0]
    assert "'maybe'" in garbage[1] and "expected ON or OFF" in garbage[1]
    assert json.loads((tmp_path / "state" / "controls.json").read_text()) == {
        "analysis": False, "camera": True, "microphone": True
    }  # fmt: skip


def test_buttons_reload_the_models_and_purge_the_history_and_a_failed_reload_is_the_last_error(
    tmp_path: Path, broker: Any, subscribe: Any
) -> None:
    models = tmp_path / "models"
    shutil.copytree(MODELS, models)  # a copy of its own: this test breaks one model file
    sub: Subscriber = subscribe(f"{BASE}/#")
    cfg = ha_config(tmp_path, broker.port, models={"dir": str(models)}, microphone={"enabled": False})
    history = HistoryReader(tmp_path / "state")
    proc = start_daemon(cfg)
    try:
        # The history commits the first event at once and the rest every 180 s (docs/storage.md): the purge must
        # take both what is on disk and what waits in memory.
        has_events = lambda: history.exists() and history.count() >= 1 and len(sub.events()) >= 3  # noqa: E731
        assert sub.wait_for(has_events, timeout=60), "no history to purge"
        sub.client.publish(f"{BASE}/purge_history/set", "PRESS", qos=1)
        assert sub.wait_for(lambda: history.count() == 0, timeout=10), "the history was not purged"
        sub.client.publish(f"{BASE}/reload_models/set", "PRESS", qos=1)
        time.sleep(2.0)  # the main loop reloads within a second; the log says so at the end
        assert (last_json(sub, "/stats") or {}).get("last_error") is None
        (models / "face_emotion.tflite").write_bytes(b"not a model")
        sub.client.publish(f"{BASE}/reload_models/set", "PRESS", qos=1)
        assert sub.wait_for(lambda: (last_json(sub, "/stats") or {}).get("last_error"), timeout=15)
        error = last_json(sub, "/stats")["last_error"]  # type: ignore[index]
        assert "model reload rejected" in error["message"] and "face_emotion" in error["message"], error
        assert error["at"].endswith("Z")
        assert len(sub.events()) >= 1 and (last_json(sub, f"{BASE}/state") or {}).get("emotion") is not None
    finally:
        stderr = stop_daemon(proc)
    assert "purge history pressed (from mqtt)" in stderr and "history purged:" in stderr
    assert "reload models pressed (from mqtt)" in stderr and "models reloaded:" in stderr, stderr[-3000:]


# ----------------------------------------------------------------------------------------------- replay


def test_a_replay_is_a_device_of_its_own_and_never_speaks_on_the_services_topics(
    tmp_path: Path, broker: Any, subscribe: Any
) -> None:
    sub: Subscriber = subscribe("#")
    cfg = ha_config(tmp_path, broker.port)
    proc = run_cli("--config", str(cfg), "replay", "--video", str(CLIP_VIDEO))
    assert proc.returncode == 0, proc.stderr
    replay = f"{BASE}/replay"
    assert sub.wait_for(lambda: sub.payloads(f"{replay}/availability")[-1:] == ["stopped"], timeout=10)
    topics = {m.topic for m in sub.messages}
    # Nothing on the service's topics (its availability, state, events; its Home Assistant device): a replay beside
    # the service neither flips its emotion nor makes it unavailable nor fires its users' automations.
    assert {t for t in topics if t.startswith(f"{BASE}/") and not t.startswith(f"{replay}/")} == set(), topics
    assert DEVICE_TOPIC not in topics
    assert len(sub.payloads(f"{replay}/events")) == 9 and sub.payloads(f"{replay}/state")
    c = json.loads(sub.payloads(REPLAY_DEVICE_TOPIC)[-1])
    assert c["device"]["identifiers"] == ["emotion-edge-ha-replay"] and c["device"]["name"] == "emotion-edge ha replay"
    assert c["availability_topic"] == f"{replay}/availability"
    cmps = c["components"]
    assert not [k for k, v in cmps.items() if v["p"] in ("switch", "button")], "a replay obeys no commands"
    assert "camera_connected" not in cmps and cmps["video_file"]["name"] == f"Video {CLIP_VIDEO.name}"  # its file
    assert cmps["emotion"]["default_entity_id"] == "sensor.emotion_edge_ha_replay_emotion"
    used = [v for cmp in cmps.values() for k, v in cmp.items() if k.endswith("topic")]
    assert used and all(t.startswith(f"{replay}/") for t in used), used
    # Its outbox (and history) are its own: the service would otherwise publish what the replay queued, as its own.
    assert (tmp_path / "state" / "replay" / "outbox.sqlite3").exists()
    assert not (tmp_path / "state" / "outbox.sqlite3").exists()
    # `forget` removes the replay's device and topics with the service's.
    assert REPLAY_DEVICE_TOPIC in retained(broker.port, "homeassistant/#")
    done = run_cli("--config", str(cfg), "forget", timeout=60)
    assert done.returncode == 0, done.stderr
    assert retained(broker.port, "#") == {}, "the replay's device or topics were left behind"


# ----------------------------------------------------------------------------------------------- forget


def test_forget_clears_every_retained_topic_and_refuses_while_the_service_runs(
    tmp_path: Path, broker: Any, subscribe: Any
) -> None:
    sub: Subscriber = subscribe("#")
    cfg = ha_config(tmp_path, broker.port)
    proc = start_daemon(cfg)
    try:
        assert sub.wait_for(lambda: sub.payloads(f"{BASE}/status") and sub.payloads(DEVICE_TOPIC), timeout=30)
        running = run_cli("--config", str(cfg), "forget", timeout=60)
        assert running.returncode == 2 and "stop it first" in running.stderr, running.stderr
        assert DEVICE_TOPIC in retained(broker.port, "homeassistant/#"), "refused, so nothing may be cleared"
    finally:
        stop_daemon(proc)
    before = retained(broker.port, "#")
    assert {DEVICE_TOPIC, f"{BASE}/availability", f"{BASE}/status", f"{BASE}/analysis/state"} <= set(before)
    done = run_cli("--config", str(cfg), "forget", timeout=60)
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
    assert f"cleared {len(before)} retained topic(s)" in done.stdout, done.stdout
    assert retained(broker.port, "#") == {}, "ghost topics left on the broker"


def test_forget_without_a_broker_is_one_clear_line(tmp_path: Path) -> None:
    cfg = write_config(tmp_path / "config.yaml", mqtt={"host": "127.0.0.1", "port": 1})
    proc = run_cli("--config", str(cfg), "forget", timeout=60)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert [line for line in proc.stderr.splitlines() if "error" in line] == [
        line for line in proc.stderr.splitlines() if "127.0.0.1:1" in line
    ]


# ----------------------------------------------------------------------------------------------- empty room, faces


def _face(t: float, label: str = "happy", n: int = 1) -> Prediction:
    probs = np.zeros(len(CANONICAL), dtype=np.float32)
    probs[CANONICAL.index(label)] = 1.0
    faces = tuple(FaceResult((10 * i, 0, 50, 50), label, 1.0) for i in range(n))
    return Prediction("face", t, probs, faces)


def test_a_window_reports_the_typical_face_count_not_one_spurious_detection() -> None:
    preds = [_face(0.1, n=1), _face(0.3, n=2), _face(0.5, n=1), _face(0.7, n=1)]
    assert len(faces_of(preds)) == 1
    assert len(faces_of([_face(0.1, n=2), _face(0.3, n=1), _face(0.5, n=2)])) == 2
    # A false face found at one detection and followed until the next: half the window's frames. A tie: one person.
    assert len(faces_of([_face(0.1 * k, n=2 if k < 5 else 1) for k in range(10)])) == 1
    assert faces_of([]) == ()


def _around(image: np.ndarray, box: tuple[float, ...], size: int = 320) -> np.ndarray:
    """A size x size crop centred on a face box (black beyond the frame)."""
    cx, cy = int(box[0] + box[2] / 2), int(box[1] + box[3] / 2)
    padded = cv2.copyMakeBorder(image, size, size, size, size, cv2.BORDER_CONSTANT)
    return padded[cy + size // 2 : cy + size * 3 // 2, cx + size // 2 : cx + size * 3 // 2]


def test_replay_of_two_people_reports_each_face_with_its_box_and_label(tmp_path: Path) -> None:
    # Two real faces side by side in one 640x480 frame: the astronaut (the clip's happy segment) on the left, the
    # FER2013 angry face (its angry segment) on the right, larger.
    cfg = write_config(tmp_path / "config.yaml")
    detector = load_detector(load_config(cfg))
    cap = cv2.VideoCapture(str(CLIP_VIDEO))
    frames = [cap.read()[1] for _ in range(91)]
    happy, angry = frames[10], frames[90]
    two = np.zeros((480, 640, 3), np.uint8)
    two[80:400, :320] = _around(happy, detector.detect(happy)[0].box)
    two[80:400, 320:] = _around(angry, detector.detect(angry)[0].box)
    video = tmp_path / "two.mp4"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"mp4v"), 10, (640, 480))
    for _ in range(40):
        writer.write(two)
    writer.release()
    proc = run_cli("--config", str(cfg), "replay", "--video", str(video), "--no-mqtt", "--events-out", "-")
    assert proc.returncode == 0, proc.stderr
    events = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert events and all(e["face_count"] == 2 for e in events), [e["face_count"] for e in events]
    for e in events:
        left, right = sorted(e["faces"], key=lambda f: f["box"][0])
        assert left["box"][0] + left["box"][2] <= 330 and right["box"][0] >= 310, e["faces"]  # one in each half
        assert all(80 <= f["box"][1] < 400 for f in e["faces"]), e["faces"]
        assert (left["label"], right["label"]) == ("happy", "angry")  # each face its own label
        # Every face votes (pipeline.room_vote), the far one as much as the near one: both emotions lead the window.
        probs = e["modalities"]["face"]["probs"]
        assert right["box"][2] > left["box"][2] and set(sorted(probs, key=probs.get)[-2:]) == {"happy", "angry"}, probs


def test_the_device_page_is_the_devices_configuration_url(tmp_path: Path) -> None:
    """Home Assistant's "visit device" opens the page when the daemon serves one, and is absent when it does not."""
    import socket

    from edge_daemon.daemon import Daemon, page_url
    from edge_daemon.homeassistant import discovery_payload

    on = load_config(write_config(tmp_path / "on.yaml", web={"enabled": True, "port": 18765}))
    assert page_url(on) == f"http://{socket.getfqdn()}:18765/"
    daemon = Daemon(on, broker=("127.0.0.1", 1))  # not started: nothing listens or connects
    try:
        assert discovery_payload(on, daemon.session.configuration_url)["device"]["configuration_url"] == page_url(on)
    finally:
        daemon.outbox.close()
    off = load_config(write_config(tmp_path / "off.yaml"))
    daemon = Daemon(off, broker=("127.0.0.1", 1))
    try:
        assert "configuration_url" not in discovery_payload(off, daemon.session.configuration_url)["device"]
    finally:
        daemon.outbox.close()
