"""The broker session's own threads heal: the outbox drain survives outbox errors, paho's network thread is restarted."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from edge_daemon.config import load_config
from edge_daemon.mqtt import MqttSession
from edge_daemon.outbox import Outbox

from .conftest import Subscriber, write_config


def session_for(tmp_path: Path, port: int) -> tuple[MqttSession, Outbox]:
    cfg = load_config(
        write_config(tmp_path / "config.yaml", device_id="sess", mqtt={"host": "127.0.0.1", "port": port})
    )
    box = Outbox(tmp_path / "state")
    return MqttSession(cfg, box, "127.0.0.1", port), box


def seqs(sub: Subscriber) -> set[int]:
    return {json.loads(m.payload)["seq"] for m in sub.messages if m.topic.endswith("/events")}


def test_the_drain_survives_an_outbox_that_refuses_writes_and_acknowledges_once_it_can(
    tmp_path: Path, broker: Any, subscribe: Any
) -> None:
    sub: Subscriber = subscribe("emotion-edge/sess/#")
    session, box = session_for(tmp_path, broker.port)
    session.start()
    try:
        assert session.connected.wait(10)
        first = box.append({"n": 1})
        with box._lock:  # acknowledgements (deletes) now fail, as on a card remounted read-only
            box._db.execute("PRAGMA query_only = ON")
        session.notify_event()
        assert sub.wait_for(lambda: first in seqs(sub), timeout=10), "not published"
        time.sleep(0.5)  # the acknowledgement has come back and failed to be recorded
        assert session._drainer.is_alive(), "an outbox error ended the drain thread"
        with box._lock:
            box._db.execute("PRAGMA query_only = OFF")
        second = box.append({"n": 2})
        session.notify_event()
        assert sub.wait_for(lambda: second in seqs(sub), timeout=10), "nothing published after the outbox recovered"
        deadline = time.monotonic() + 5
        while [p.seq for p in box.pending(0, 10)] != [first] and time.monotonic() < deadline:
            time.sleep(0.05)
        # The one whose ack failed stays queued and goes out again on the next start (at least once); the rest is acked.
        assert [p.seq for p in box.pending(0, 10)] == [first]
    finally:
        session.stop()
        box.close()


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")  # the injected fault
def test_a_network_thread_that_died_is_started_again(tmp_path: Path, broker: Any, subscribe: Any) -> None:
    sub: Subscriber = subscribe("emotion-edge/sess/#")
    session, box = session_for(tmp_path, broker.port)
    real_loop = session._client.loop_forever
    calls: list[int] = []

    def loop_that_dies_once(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("fault injection: an error paho's loop does not handle")
        return real_loop(*args, **kwargs)

    session._client.loop_forever = loop_that_dies_once  # what paho's network thread runs
    session.start()
    try:
        time.sleep(0.5)
        assert not session.connected.is_set() and len(calls) == 1  # the thread is gone, nothing would ever connect
        session.ensure_network_loop()  # what the daemon's main loop calls every few seconds
        assert session.connected.wait(10), "the network thread was not started again"
        seq = box.append({"n": 1})
        session.notify_event()
        assert sub.wait_for(lambda: seq in seqs(sub), timeout=10)
        session.ensure_network_loop()  # while the thread runs: nothing happens
        assert len(calls) == 2
    finally:
        session.stop()
        box.close()
