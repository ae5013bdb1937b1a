"""`emotion-edge run` and `check` as a service runs them: a file stands in for the camera; this machine has no sound card."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from .conftest import CLIP_VIDEO, ROOT, Subscriber, run_cli, write_config


def live_config(tmp_path: Path, port: int, **extra: Any) -> Path:
    return write_config(
        tmp_path / "config.yaml",
        device_id="live",
        camera={"source": str(CLIP_VIDEO), "reconnect_min_s": 0.2},
        microphone={"reconnect_min_s": 0.2, "reconnect_max_s": 0.5},
        mqtt={"host": "127.0.0.1", "port": port, "stats_interval_s": 1},
        **extra,
    )


def test_run_publishes_face_events_without_a_microphone_and_stops_cleanly_on_sigterm(
    tmp_path: Path, broker: Any, subscribe: Any
) -> None:
    sub: Subscriber = subscribe("emotion-edge/live/#")
    cfg = live_config(tmp_path, broker.port)
    proc = subprocess.Popen(
        [sys.executable, "-m", "edge_daemon", "--config", str(cfg), "run"], cwd=ROOT, stderr=subprocess.PIPE, text=True
    )
    try:
        assert sub.wait_for(lambda: len(sub.events()) >= 2, timeout=30), "no events from a live run"
        stats = [json.loads(p) for p in sub.payloads("/stats")]
        assert stats and stats[-1]["frames_analysed"] > 0
        mic = next(v for k, v in stats[-1]["sources"].items() if k.startswith("microphone"))
        assert mic["state"] == "offline" and mic["failures"] >= 1  # reported and retried, not fatal
        assert stats[-1]["audio_s"] == 0, "silence standing in for an absent microphone counted as audio"
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=10)
        elapsed = time.monotonic() - t0
    finally:
        if proc.poll() is None:
            proc.kill()
    stderr = proc.stderr.read() if proc.stderr else ""
    assert proc.returncode == 0 and elapsed < 5, (proc.returncode, elapsed, stderr)
    assert "Traceback" not in stderr
    assert "offline" in stderr and stderr.count("microphone default offline") == 1, (
        "a failing device is logged once, not per retry"
    )
    events = sub.events()
    assert all(e["used"] == ["face"] and "media_start_s" not in e for e in events)
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    assert sub.wait_for(lambda: sub.payloads("/availability")[-1:] == ["stopped"], timeout=5)


def test_check_reports_each_problem_in_one_line(tmp_path: Path) -> None:
    cfg = write_config(
        tmp_path / "config.yaml",
        camera={"source": str(tmp_path / "no-camera.mp4")},
        mqtt={"host": "127.0.0.1", "port": 1, "username": "edge"},
        state_dir=str(CLIP_VIDEO),  # a file, not a directory
    )
    env = {k: v for k, v in os.environ.items() if k not in ("EMOTION_EDGE_MQTT_PASSWORD", "CREDENTIALS_DIRECTORY")}
    proc = subprocess.run(
        [sys.executable, "-m", "edge_daemon", "--config", str(cfg), "check"],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=60,
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert [line.split(":")[0] for line in lines] == ["camera", "microphone", "mqtt", "mqtt", "state_dir"], lines
    assert "no-camera.mp4" in lines[0] and "127.0.0.1:1" in lines[2] and "EMOTION_EDGE_MQTT_PASSWORD" in lines[3]
    assert "clip.mp4 is not a directory" in lines[4]


def test_check_passes_when_everything_is_usable(tmp_path: Path, broker: Any) -> None:
    cfg = write_config(
        tmp_path / "config.yaml",
        camera={"source": str(CLIP_VIDEO)},
        microphone={"enabled": False},
        mqtt={"host": "127.0.0.1", "port": broker.port},
    )
    proc = run_cli("--config", str(cfg), "check")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.startswith("ok")


def test_sigterm_while_the_broker_does_not_answer_still_stops_within_5_s(tmp_path: Path) -> None:
    # A broker host that swallows connection attempts (a full accept queue, or a firewall that drops them):
    # the MQTT thread sits in a connect that times out only after seconds. systemd must not have to SIGKILL us.
    import socket

    with socket.socket() as black_hole:
        black_hole.bind(("127.0.0.1", 0))
        black_hole.listen(0)
        fillers = [socket.socket() for _ in range(4)]
        try:
            for filler in fillers:  # fill the accept queue: from here on SYNs go unanswered
                filler.setblocking(False)
                filler.connect_ex(black_hole.getsockname())
            cfg = live_config(tmp_path, black_hole.getsockname()[1])
            proc = subprocess.Popen(
                [sys.executable, "-m", "edge_daemon", "--config", str(cfg), "run"],
                cwd=ROOT,
                stderr=subprocess.PIPE,
                text=True,
            )
            try:
                assert proc.stderr is not None
                seen = ""
                while "connecting to MQTT broker" not in seen and proc.poll() is None:
                    seen += proc.stderr.readline()
                time.sleep(0.5)  # the first connect attempt is under way and will hang for seconds
                t0 = time.monotonic()
                proc.send_signal(signal.SIGTERM)
                proc.wait(timeout=15)
                elapsed = time.monotonic() - t0
            finally:
                if proc.poll() is None:
                    proc.kill()
        finally:
            for f in fillers:
                f.close()
    stderr = seen + (proc.stderr.read() if proc.stderr else "")
    assert proc.returncode == 0 and "Traceback" not in stderr, stderr
    assert elapsed < 5, f"stopping took {elapsed:.1f} s:\n{stderr}"
