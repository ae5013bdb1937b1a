"""Lifecycle of a running daemon: model reload on SIGHUP or a changed file, a camera that comes back, privacy."""

from __future__ import annotations

import json
import shutil
import signal
import time
from pathlib import Path
from typing import Any

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
    assert set(written) <= {"outbox.sqlite3", "outbox.sqlite3-wal", "outbox.sqlite3-shm"}, written
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
        assert len(m.payload) < 8192, (m.topic, len(m.payload))
        if text.startswith("{"):
            assert small(json.loads(text)), m.topic


def test_a_stuck_stage_ends_the_process_so_its_supervisor_restarts_it(tmp_path: Path, monkeypatch: Any) -> None:
    import threading

    from edge_daemon import daemon as daemon_module
    from edge_daemon.config import load_config

    monkeypatch.setattr(daemon_module, "STALL_S", 2.0)
    monkeypatch.setattr(daemon_module, "MODEL_CHECK_S", 0.5)
    cfg = write_config(tmp_path / "config.yaml", camera={"source": str(CLIP_VIDEO)}, microphone={"enabled": False})
    d = daemon_module.Daemon(load_config(cfg), publish=False)
    release = threading.Event()

    class HungDetector:  # fault injection: a stage that never returns, as a wedged driver call would
        meta = None

        def detect(self, frame: Any) -> list:
            release.wait()
            return []

    d.face_worker.use_models(HungDetector(), d.models.face)
    t0 = time.monotonic()
    try:
        code = d.run()
    finally:
        release.set()
    assert code == 1 and time.monotonic() - t0 < 20


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
