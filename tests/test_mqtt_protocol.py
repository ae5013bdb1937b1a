"""mqtt.protocol: the daemon delivers every event with MQTT 5 and with 3.1.1, and falls back to 3.1.1 by itself
(`auto`) on a broker that refuses 5 — NATS' MQTT gateway, which speaks only 3.1.1."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from edge_daemon.config import load_config
from edge_daemon.devbroker import LocalBroker
from edge_daemon.mqtt import MqttSession
from edge_daemon.outbox import Outbox

from .conftest import Subscriber, skip_or_fail, write_config


def session_for(tmp_path: Path, port: int, protocol: str) -> tuple[MqttSession, Outbox]:
    cfg = write_config(
        tmp_path / "config.yaml",
        device_id="proto",
        mqtt={"host": "127.0.0.1", "port": port, "protocol": protocol, "homeassistant": {"discovery": False}},
    )
    return MqttSession(load_config(cfg), Outbox(tmp_path / "state"), "127.0.0.1", port), Outbox


def deliver(tmp_path: Path, port: int, protocol: str, sub: Subscriber, n: int = 20) -> MqttSession:
    session, _ = session_for(tmp_path, port, protocol)
    box = session.outbox
    session.start()
    try:
        assert session.connected.wait(15), session.last_error
        sent = {box.append({"n": i}) for i in range(n)}
        session.notify_event()
        got = lambda: {json.loads(p)["seq"] for p in sub.payloads("/events")}  # noqa: E731
        assert sub.wait_for(lambda: sent <= got(), timeout=15), (sent, got())
        deadline = time.monotonic() + 5
        while box.depth() and time.monotonic() < deadline:  # every PUBACK came back: nothing left to send
            time.sleep(0.05)
        assert box.depth() == 0
    finally:
        session.stop()
        box.close()
    return session


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
def test_every_event_is_delivered_with_either_protocol(
    tmp_path: Path, broker: LocalBroker, subscribe: Any, protocol: str
) -> None:
    session = deliver(tmp_path, broker.port, protocol, subscribe("emotion-edge/proto/#"))
    assert session._client._protocol == (mqtt.MQTTv5 if protocol == "5" else mqtt.MQTTv311)
    log = (Path(broker._dir.name) / "broker.log").read_text()
    # Mosquitto's log names the protocol: p5 for MQTT 5, p2 for 3.1.1.
    assert f"as emotion-edge-proto (p{5 if protocol == '5' else 2}," in log, log[-2000:]


def nats_or_skip() -> Any:
    try:
        from edge_daemon.fleet.natscluster import NatsCluster, nats_server

        nats_server()
    except Exception as exc:  # the fleet extra is optional on a device
        skip_or_fail(f"nats-server is not installed ({exc}): run scripts/fleet-setup.sh")
    return NatsCluster(1)


def nats_subscriber(port: int) -> Subscriber:
    """conftest's Subscriber speaks MQTT 3.1.1 already (paho's default)."""
    return Subscriber(port, "emotion-edge/proto/#")


def test_auto_falls_back_to_3_1_1_on_a_broker_that_refuses_5(tmp_path: Path) -> None:
    with nats_or_skip() as nats:
        port = nats.mqtt_ports[0]
        sub = nats_subscriber(port)
        try:
            session = deliver(tmp_path, port, "auto", sub)
        finally:
            sub.close()
        assert session._client._protocol == mqtt.MQTTv311


def test_protocol_5_on_a_broker_that_refuses_it_says_so(tmp_path: Path) -> None:
    with nats_or_skip() as nats:
        session, _ = session_for(tmp_path, nats.mqtt_ports[0], "5")
        session.start()
        try:
            assert not session.connected.wait(4)
            assert "Unsupported protocol version" in session.last_error, session.last_error
            assert session._client._protocol == mqtt.MQTTv5  # forced: no fallback
        finally:
            session.stop()
            session.outbox.close()


def test_a_3_1_1_client_is_what_nats_accepts() -> None:
    """The reference the fallback relies on: NATS refuses an MQTT 5 CONNECT with a CONNACK, not silence."""
    with nats_or_skip() as nats:
        answers: list[Any] = []
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="probe", protocol=mqtt.MQTTv5)
        client.on_connect = lambda c, u, f, rc, p: answers.append(rc)
        client.connect("127.0.0.1", nats.mqtt_ports[0])
        client.loop_start()
        deadline = time.monotonic() + 5
        while not answers and time.monotonic() < deadline:
            time.sleep(0.05)
        client.loop_stop()
        assert answers and answers[0].is_failure and answers[0].value == 0x84


def test_check_probes_a_3_1_1_broker_as_the_daemon_will_connect(tmp_path: Path) -> None:
    from edge_daemon.mqtt import probe_broker

    with nats_or_skip() as nats:
        port = nats.mqtt_ports[0]
        for protocol, expected in (("auto", None), ("3.1.1", None), ("5", "Unsupported protocol version")):
            cfg = load_config(write_config(tmp_path / f"{protocol}.yaml", mqtt={"protocol": protocol}))
            problem = probe_broker(cfg, "127.0.0.1", port)
            assert problem == expected if expected is None else expected in (problem or ""), (protocol, problem)
