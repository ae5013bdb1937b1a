"""The broker session: its own threads heal (the outbox drain survives outbox errors, paho's network thread is
restarted); commands are obeyed only when they should be, and the retained state topics stay ours."""

from __future__ import annotations

import json
import logging
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from edge_daemon import wiring
from edge_daemon.config import load_config
from edge_daemon.control import Controls
from edge_daemon.devbroker import LocalBroker
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


BASE = "emotion-edge/sess"


def commanded_session(tmp_path: Path, port: int, sub: Subscriber) -> tuple[MqttSession, Outbox, Controls]:
    """A connected session that obeys commands. `sub` has seen its switch states, which it publishes after it
    subscribed to the command topics: from then on the broker delivers every command to it."""
    session, box = session_for(tmp_path, port)
    controls = Controls(None)
    session.attach_commands(controls)
    session.start()
    assert session.connected.wait(10)
    assert sub.wait_for(lambda: bool(sub.payloads("/analysis/state")), timeout=10)
    return session, box, controls


def wait_until(predicate: Any, timeout: float = 10) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate() and time.monotonic() < deadline:
        time.sleep(0.05)
    return predicate()


def test_a_retained_command_published_while_connected_is_not_obeyed(
    tmp_path: Path, broker: Any, subscribe: Any
) -> None:
    sub: Subscriber = subscribe(f"{BASE}/#")
    session, box, controls = commanded_session(tmp_path, broker.port, sub)
    try:
        sub.client.publish(f"{BASE}/camera/set", "OFF", qos=1, retain=True).wait_for_publish(5)
        sub.client.publish(f"{BASE}/microphone/set", "OFF", qos=1).wait_for_publish(5)  # read after the retained one
        assert wait_until(lambda: controls.get()["microphone"] is False), "the plain command was not obeyed"
        time.sleep(0.2)
        assert controls.get()["camera"] is True, "a retained command was obeyed"
    finally:
        sub.client.publish(f"{BASE}/camera/set", b"", qos=1, retain=True).wait_for_publish(5)
        session.stop()
        box.close()


@pytest.mark.parametrize("payload, on", [("off", False), (" OFF \n", False), ("On", True)])
def test_commands_accept_any_case_and_surrounding_whitespace(
    tmp_path: Path, broker: Any, subscribe: Any, payload: str, on: bool
) -> None:
    sub: Subscriber = subscribe(f"{BASE}/#")
    session, box, controls = commanded_session(tmp_path, broker.port, sub)
    try:
        if on:
            controls.set("analysis", False, source="test")
        sub.client.publish(f"{BASE}/analysis/set", payload, qos=1).wait_for_publish(5)
        assert wait_until(lambda: controls.get()["analysis"] is on), f"{payload!r} was not taken as {on}"
        assert sub.wait_for(lambda: sub.payloads("/analysis/state")[-1:] == ["ON" if on else "OFF"], timeout=5)
    finally:
        session.stop()
        box.close()


def test_a_flood_of_switch_commands_logs_a_few_lines_not_one_each(
    tmp_path: Path, broker: Any, subscribe: Any, caplog: Any
) -> None:
    sub: Subscriber = subscribe(f"{BASE}/#")
    session, box, controls = commanded_session(tmp_path, broker.port, sub)
    caplog.set_level(logging.INFO, logger="edge_daemon")
    try:
        for i in range(200):
            sub.client.publish(f"{BASE}/analysis/set", "OFF" if i % 2 == 0 else "ON", qos=1)
        sub.client.publish(f"{BASE}/analysis/set", "OFF", qos=1).wait_for_publish(5)
        assert sub.wait_for(lambda: sub.payloads("/analysis/state")[-1:] == ["OFF"], timeout=10)
        assert wait_until(lambda: controls.get()["analysis"] is False)
    finally:
        session.stop()
        box.close()
    lines = [r.getMessage() for r in caplog.records if "switched" in r.getMessage()]
    assert 1 <= len(lines) <= 3, lines  # the first change at once, then at most one line per 5 s


@pytest.mark.parametrize("topic", ["state", "analysis/state"])
def test_another_clients_retained_state_is_corrected_at_once(
    tmp_path: Path, broker: Any, subscribe: Any, topic: str
) -> None:
    sub: Subscriber = subscribe(f"{BASE}/#")
    session, box, _controls = commanded_session(tmp_path, broker.port, sub)
    ours = {"emotion": "starting", "confidence": None, "since": "2026-12-06T00:00:00Z", "seq": None, "people": 0}
    session.publish_retained("state", ours)
    expected = json.dumps(ours, separators=(",", ":")) if topic == "state" else "ON"
    try:
        assert sub.wait_for(lambda: sub.payloads(f"sess/{topic}")[-1:] == [expected], timeout=5)
        sub.client.publish(f"{BASE}/{topic}", '{"emotion":"happy"}', qos=1, retain=True).wait_for_publish(5)
        t0 = time.monotonic()
        assert sub.wait_for(lambda: sub.payloads(f"sess/{topic}")[-1:] == [expected], timeout=5)
        assert time.monotonic() - t0 < 2, "not corrected at once"
        late: Subscriber = subscribe(f"{BASE}/{topic}")  # what Home Assistant reads when it starts
        assert late.wait_for(lambda: late.payloads(topic) == [expected], timeout=5)
    finally:
        session.stop()
        box.close()


def test_when_the_node_in_use_dies_events_go_on_to_the_next_node_of_mqtt_hosts_with_no_seq_lost(
    tmp_path: Path,
) -> None:
    """Two Mosquittos stand in for two nodes of a clustered broker (no bridge: a subscriber on each, and the union by
    seq is what a cluster would hold). The device's session comes from the config, as the daemon's does."""
    with LocalBroker() as first, LocalBroker() as second:
        cfg = load_config(
            write_config(
                tmp_path / "config.yaml", device_id="fo",
                mqtt={"hosts": [f"127.0.0.1:{first.port}", f"127.0.0.1:{second.port}"], "reconnect_max_s": 2},
            )
        )  # fmt: skip
        on_first, on_second = (Subscriber(b.port, "emotion-edge/fo/events") for b in (first, second))
        box = Outbox(tmp_path / "state")
        session = wiring.mqtt_session(cfg, box, None, replay=False)
        appended: list[int] = []
        stop = threading.Event()

        def device() -> None:  # windows close every 50 ms, before, during and after the node's death
            while not stop.wait(0.05):
                appended.append(box.append({"n": len(appended)}))
                session.notify_event()

        feeder = threading.Thread(target=device, daemon=True)
        session.start()
        try:
            assert session.connected.wait(10)
            assert session.stats()["broker"] == f"127.0.0.1:{first.port}"
            feeder.start()
            assert on_first.wait_for(lambda: len(seqs(on_first)) >= 10, timeout=10)
            assert first.proc is not None
            first.proc.kill()  # the node dies without a word
            first.proc.wait()
            assert on_second.wait_for(lambda: len(seqs(on_second)) >= 20, timeout=20), "nothing reached the next node"
            stop.set()
            feeder.join()
            assert on_second.wait_for(lambda: set(appended) <= seqs(on_first) | seqs(on_second), timeout=20), sorted(
                set(appended) - seqs(on_first) - seqs(on_second)
            )
            assert session.stats()["broker"] == f"127.0.0.1:{second.port}" and session.connected.is_set()
            assert f"127.0.0.1:{first.port}: connection lost" in session.stats()["last_error"]
            deadline = time.monotonic() + 10
            while box.depth() and time.monotonic() < deadline:
                time.sleep(0.05)
            assert box.depth() == 0, "acknowledged events stay in the outbox"
        finally:
            stop.set()
            session.stop()
            on_first.close()
            on_second.close()
