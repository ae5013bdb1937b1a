"""Fault injection with a real Mosquitto: outages, kills and bounds lose no event silently, and seq never repeats."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
import time
import wave
from pathlib import Path
from typing import Any

import pytest

from edge_daemon.devbroker import LocalBroker, free_port

from .conftest import CLIP_VIDEO, ROOT, Subscriber, run_cli, start_daemon, stop_daemon, write_config

persistent_broker = pytest.mark.parametrize("broker", [True], indirect=True)


def daemon_config(tmp_path: Path, port: int, reconnect_s: float = 1, **extra: Any) -> Path:
    """A daemon with the clip as its camera and no microphone. The test subscribers retry every second: a daemon that
    retries more slowly finds them back before it drains, which is the point of these tests."""
    return write_config(
        tmp_path / "config.yaml",
        device_id="faults",
        camera={"source": str(CLIP_VIDEO), "reconnect_min_s": 0.2},
        microphone={"enabled": False},
        mqtt={
            "host": "127.0.0.1",
            "port": port,
            "stats_interval_s": 1,
            "reconnect_min_s": reconnect_s,
            "reconnect_max_s": reconnect_s,
        },
        **extra,
    )


def last_seq(state_dir: Path) -> int:
    with sqlite3.connect(state_dir / "outbox.sqlite3") as db:
        return int(db.execute("SELECT value FROM meta WHERE key='last_seq'").fetchone()[0])


def unique_seqs(sub: Subscriber) -> list[int]:
    """Seqs in arrival order, duplicates (same event_id, at-least-once) dropped."""
    seen: dict[str, int] = {}
    for e in sub.events():
        seen.setdefault(e["event_id"], e["seq"])
    return list(seen.values())


@persistent_broker
def test_broker_down_for_30s_mid_realtime_replay_loses_no_event(
    tmp_path: Path, broker: LocalBroker, subscribe: Any
) -> None:
    # A replay speaks under <base>/replay/, never on the service's topics.
    sub: Subscriber = subscribe("emotion-edge/faults/replay/events", persistent=True)
    cfg = daemon_config(tmp_path, broker.port, reconnect_s=3)
    replay = subprocess.Popen(
        [sys.executable, "-m", "edge_daemon", "--config", str(cfg), "replay", "--realtime", "--video", str(CLIP_VIDEO),
         "--state-dir", str(tmp_path / "state"), "--drain-timeout", "60"],
        cwd=ROOT, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert sub.wait_for(lambda: len(sub.events()) >= 1, timeout=20)
        broker.stop()  # mid-replay: the rest of the clip is produced while the broker is away
        time.sleep(30)
        broker.start()
        replay.wait(timeout=120)
    finally:
        if replay.poll() is None:
            replay.kill()
    assert replay.returncode == 0
    n = last_seq(tmp_path / "state")
    assert n == 9
    assert sub.wait_for(lambda: len(unique_seqs(sub)) == n, timeout=30), unique_seqs(sub)
    assert unique_seqs(sub) == list(range(1, n + 1))  # every seq, in order, no gap


@persistent_broker
def test_sigkill_while_broker_is_down_then_restart_delivers_the_backlog(
    tmp_path: Path, broker: LocalBroker, subscribe: Any
) -> None:
    sub: Subscriber = subscribe("emotion-edge/faults/events", persistent=True)
    cfg = daemon_config(tmp_path, broker.port)
    first = start_daemon(cfg)
    try:
        assert sub.wait_for(lambda: len(sub.events()) >= 1, timeout=30)
        broker.stop()
        before = last_seq(tmp_path / "state")
        deadline = time.monotonic() + 30
        while last_seq(tmp_path / "state") < before + 3 and time.monotonic() < deadline:  # events pile up in the outbox
            time.sleep(0.2)
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=10)
    finally:
        if first.poll() is None:
            first.kill()
    killed_at = last_seq(tmp_path / "state")
    assert killed_at >= before + 3
    broker.start()
    assert sub.wait_for(sub.connected.is_set, timeout=10)
    second = start_daemon(cfg)
    try:
        assert sub.wait_for(lambda: len(unique_seqs(sub)) > killed_at + 1, timeout=40), unique_seqs(sub)
    finally:
        stop_daemon(second)
    n = last_seq(tmp_path / "state")
    assert sub.wait_for(lambda: len(unique_seqs(sub)) == n, timeout=20), (n, killed_at, unique_seqs(sub))
    assert sorted(unique_seqs(sub)) == list(range(1, n + 1))  # nothing lost, and no seq used twice
    # The killed run's events arrive before the restarted run's own, in order.
    assert unique_seqs(sub)[:killed_at] == list(range(1, killed_at + 1))


def test_broker_restart_without_persistence_gets_availability_and_state_back(
    tmp_path: Path, broker: LocalBroker, subscribe: Any
) -> None:
    cfg = daemon_config(tmp_path, broker.port, fusion={"state_after_windows": 1})
    proc = start_daemon(cfg)
    try:
        first: Subscriber = subscribe("emotion-edge/faults/#")
        assert first.wait_for(lambda: first.payloads("faults/state") and first.payloads("/availability"), timeout=30)
        broker.stop()  # a broker without persistence forgets every retained message
        broker.start()
        t0 = time.monotonic()
        late: Subscriber = subscribe("emotion-edge/faults/#")
        assert late.wait_for(lambda: late.payloads("/availability") and late.payloads("faults/state"), timeout=15)
        assert time.monotonic() - t0 < 10
        assert late.payloads("/availability")[0] == "online"
        assert json.loads(late.payloads("faults/state")[0])["emotion"]
    finally:
        stop_daemon(proc)


def test_outbox_bound_drops_are_counted_exactly(tmp_path: Path) -> None:
    port = free_port()  # no broker here yet: everything waits in the outbox, bounded at 10
    cfg = daemon_config(tmp_path, port, outbox={"max_events": 10})
    state = tmp_path / "state"
    for _ in range(2):  # 9 events each
        proc = run_cli(
            "--config",
            str(cfg),
            "replay",
            "--video",
            str(CLIP_VIDEO),
            "--state-dir",
            str(state),
            "--drain-timeout",
            "0",
        )
        assert proc.returncode == 0, proc.stderr
    assert "dropped 8 oldest" in proc.stderr or "dropped" in proc.stderr
    silence = tmp_path / "silence.wav"  # the draining run adds no event of its own, so the count is exact
    with wave.open(str(silence), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes(bytes(2 * 16000 * 3))
    with LocalBroker(port=port) as broker:
        sub = Subscriber(broker.port, "emotion-edge/faults/#")
        try:
            proc = run_cli("--config", str(cfg), "replay", "--audio", str(silence), "--state-dir", str(state))
            assert proc.returncode == 0, proc.stderr
            n = last_seq(state)
            assert sub.wait_for(lambda: sub.payloads("/stats") and len(unique_seqs(sub)) == n - 8, timeout=20), (
                n,
                unique_seqs(sub),
                sub.payloads("/stats"),
                proc.stderr[-2000:],
            )
            missed = sorted(set(range(1, n + 1)) - set(unique_seqs(sub)))
            dropped = json.loads(sub.payloads("/stats")[-1])["drops"]["outbox_dropped"]
            assert missed == list(range(1, 9)) and dropped == len(missed) == 8  # the oldest went first, all counted
        finally:
            sub.close()
