"""The MQTT session's parts on their own, without a broker: the delivery policy over a real outbox on a real SQLite
file, incoming commands and buttons, presence's answers to other clients, the connection's reading of a take-over.

Only the network is stood in for (`Wire`): it records what paho would have sent and returns a message id; the
broker's answers are paho's own ReasonCode objects, handed to the same callback paho calls. test_reliability.py and
test_mqtt_session.py prove the same against a real Mosquitto.
"""

from __future__ import annotations

import ast
import json
import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.reasoncodes import ReasonCode

from edge_daemon import homeassistant
from edge_daemon.commands import CommandDispatcher
from edge_daemon.config import Config, load_config
from edge_daemon.control import Controls
from edge_daemon.devbroker import free_port
from edge_daemon.mqtt.client import is_v5, make_client
from edge_daemon.mqtt.connection import Connection
from edge_daemon.mqtt.delivery import INFLIGHT, RETRY_DROPPED_S, Delivery
from edge_daemon.mqtt.incoming import Incoming
from edge_daemon.mqtt.presence import FOREIGN_ANSWER_S, Presence
from edge_daemon.mqtt.signals import Signals
from edge_daemon.mqtt.topics import ONLINE, Topics
from edge_daemon.outbox import Outbox

from .conftest import write_config

ACCEPTED = ReasonCode(PacketTypes.PUBACK, "Success")
NOT_AUTHORISED = ReasonCode(PacketTypes.PUBACK, "Not authorized")  # what an ACL refusal looks like in MQTT 5


@dataclass
class Sent:
    mid: int
    topic: str
    payload: Any
    retain: bool


class Wire:
    """Stands in for paho's client on the network: what was handed over, each with the message id paho would give."""

    def __init__(self) -> None:
        self.sent: list[Sent] = []
        self.up = True

    def publish(self, topic: str, payload: Any = None, qos: int = 0, retain: bool = False) -> Any:
        self.sent.append(Sent(len(self.sent) + 1, topic, payload, retain))
        return SimpleNamespace(mid=len(self.sent))  # paho's MQTTMessageInfo, as far as the session reads it

    def is_connected(self) -> bool:
        return self.up

    def on(self, topic: str) -> list[Any]:
        return [s.payload for s in self.sent if s.topic == topic]


def config_for(tmp_path: Path, **mqtt: Any) -> Config:
    return load_config(write_config(tmp_path / "config.yaml", device_id="u", mqtt={"host": "127.0.0.1", **mqtt}))


# ---------------------------------------------------------------------------- delivery


@dataclass
class Drain:
    delivery: Delivery
    box: Outbox
    wire: Wire
    signals: Signals
    t0: float

    def step(self, after_s: float) -> list[int]:
        """One pass of the drain thread `after_s` after the start; the seqs it handed over."""
        before = len(self.wire.sent)
        self.delivery.step(self.t0 + after_s)
        return [json.loads(s.payload)["seq"] for s in self.wire.sent[before:]]

    def answer(self, seq: int, reason: ReasonCode = ACCEPTED) -> None:
        """The broker's PUBACK for the latest hand-over of `seq`, through paho's callback."""
        mid = max(s.mid for s in self.wire.sent if json.loads(s.payload)["seq"] == seq)
        self.delivery.on_publish(None, None, mid, reason, None)

    def kept(self) -> list[int]:
        return [p.seq for p in self.box.pending(0, 1000)]


@pytest.fixture
def drain(tmp_path: Path) -> Iterator[Drain]:
    yield from _drain(tmp_path, 50.0)


@pytest.fixture
def slow_drain(tmp_path: Path) -> Iterator[Drain]:
    yield from _drain(tmp_path, 5.0)


def _drain(tmp_path: Path, rate: float) -> Iterator[Drain]:
    box = Outbox(tmp_path / "state")
    wire, signals = Wire(), Signals()
    signals.connected.set()
    delivery = Delivery(box, wire, "emotion-edge/u/events", signals, rate, broker="127.0.0.1:1883", client_id="c")
    yield Drain(delivery, box, wire, signals, time.monotonic())
    box.close()


def test_events_go_out_in_seq_order_and_leave_the_outbox_once_acknowledged(drain: Drain) -> None:
    for n in range(3):
        drain.box.append({"n": n})
    assert drain.step(1) == [1, 2, 3]
    assert all(s.topic == "emotion-edge/u/events" and not s.retain for s in drain.wire.sent)
    drain.answer(1)
    drain.answer(3)
    assert drain.step(2) == []
    assert drain.kept() == [2] and drain.delivery.published == 2


def test_nothing_is_handed_over_while_the_broker_is_away(drain: Drain) -> None:
    drain.signals.connected.clear()
    drain.box.append({"n": 1})
    assert drain.step(1) == []
    drain.signals.connected.set()
    assert drain.step(2) == [1]


def test_at_most_INFLIGHT_events_wait_for_their_acknowledgement(tmp_path: Path) -> None:
    for d in _drain(tmp_path, 1000.0):
        for n in range(INFLIGHT + 10):
            d.box.append({"n": n})
        assert len(d.step(1)) == INFLIGHT
        assert d.step(2) == []
        for seq in range(1, 6):
            d.answer(seq)
        assert d.step(3) == [INFLIGHT + 1 + i for i in range(5)]


def test_a_backlog_drains_at_the_configured_rate(slow_drain: Drain) -> None:
    for n in range(20):
        slow_drain.box.append({"n": n})
    assert slow_drain.step(1) == [1, 2, 3, 4, 5]  # a burst of one second's worth
    assert slow_drain.step(1) == []
    assert slow_drain.step(1.5) == [6, 7]  # half a second at 5 per second


def test_a_refused_event_is_written_down_kept_and_offered_again_after_the_retry_interval(drain: Drain) -> None:
    seq = drain.box.append({"n": 1}, hold=True)  # connected: held in memory, not yet on disk
    assert drain.step(1) == [seq] and drain.box.held == 1
    drain.answer(seq, NOT_AUTHORISED)
    assert drain.step(2) == []
    d = drain.delivery
    assert drain.box.held == 0 and drain.kept() == [seq], "a refused event must be on disk, waiting"
    assert (d.refused, d.refused_waiting, d.refusal) == (1, 1, "PUBACK reason: Not authorized")
    assert d.stats()["last_refusal"] == "PUBACK reason: Not authorized"
    assert drain.step(2 + d.retry_refused_s - 1) == [], "offered again before the retry interval"
    assert drain.step(2 + d.retry_refused_s + 1) == [seq]
    drain.answer(seq)
    drain.step(3 + d.retry_refused_s)
    assert (d.refusal, d.refused_waiting, drain.kept()) == ("", 0, [])


def test_while_refusals_go_on_each_pass_probes_the_broker_with_one_refused_event(drain: Drain) -> None:
    seqs = [drain.box.append({"n": n}) for n in range(4)]
    drain.step(1)
    for seq in seqs:
        drain.answer(seq, NOT_AUTHORISED)
    drain.step(2)
    later = 3 + drain.delivery.retry_refused_s
    assert drain.step(later) == [seqs[0]]
    assert drain.step(later + 0.2) == [seqs[1]]
    drain.answer(seqs[0])  # the ACL was fixed: the rest are offered at once
    assert drain.step(later + 0.4) == seqs[2:]
    assert drain.delivery.refusal == ""


def test_after_a_lost_connection_what_was_in_flight_goes_again_one_at_a_time_until_acknowledged(drain: Drain) -> None:
    for n in range(3):
        drain.box.append({"n": n})
    assert drain.step(1) == [1, 2, 3]
    drain.signals.lost_reason = "Unspecified error"
    drain.signals.lost.set()  # and connected again at once
    assert drain.step(2) == [1], "after a loss: one at a time, to find an event the broker closes the connection for"
    assert drain.step(3) == []
    drain.answer(1)
    assert drain.step(4) == [2, 3]


def test_an_event_the_broker_closes_the_connection_for_is_set_aside_and_the_rest_go_on(drain: Drain) -> None:
    drain.box.append({"n": 1, "big": "x" * 1000})
    drain.box.append({"n": 2})
    drain.step(1)
    for attempt in range(2):  # in flight at a loss, then alone in flight at the next: the pattern
        drain.signals.lost_reason = "Unspecified error"
        drain.signals.lost.set()
        handed = drain.step(2 + attempt)
    d = drain.delivery
    assert handed == [2], "the next event must not wait behind the one the broker drops"
    assert "size limit" in d.refusal and "Unspecified error" in d.refusal and d.refused == 1
    drain.answer(2)
    drain.step(5)
    assert drain.kept() == [1] and "size limit" in d.refusal, "still set aside, and still said"
    assert drain.step(5 + RETRY_DROPPED_S - 10) == []
    assert drain.step(5 + RETRY_DROPPED_S + 1) == [1]


def test_an_acknowledgement_for_a_connection_that_ended_is_ignored(drain: Drain) -> None:
    drain.box.append({"n": 1})
    drain.step(1)
    drain.signals.lost.set()
    drain.step(2)  # offered again: a new message id
    drain.delivery.on_publish(None, None, 1, ACCEPTED, None)  # the first hand-over's, late
    drain.step(3)
    assert drain.kept() == [1] and drain.delivery.published == 0


# ---------------------------------------------------------------------------- incoming and presence


@dataclass
class Device:
    config: Config
    wire: Wire
    signals: Signals
    topics: Topics
    presence: Presence
    incoming: Incoming
    controls: Controls

    def receive(self, topic: str, payload: bytes, retain: bool = False) -> None:
        msg = mqtt.MQTTMessage(topic=topic.encode())
        msg.payload, msg.retain = payload, retain
        self.incoming.on_message(self.wire, None, msg)  # type: ignore[arg-type]


@pytest.fixture
def device(tmp_path: Path) -> Device:
    cfg = config_for(tmp_path)
    wire, signals = Wire(), Signals()
    signals.connected.set()
    topics = Topics(homeassistant.base_topic(cfg))
    presence = Presence(cfg, wire, topics, signals)  # type: ignore[arg-type]
    incoming = Incoming(cfg, topics, presence, signals)
    controls = Controls(tmp_path / "state")
    # As MqttSession.attach_commands wires it.
    incoming.commands = CommandDispatcher(controls, topics.base, presence.publish_retained_topic)
    incoming.commands.publish_states()
    return Device(cfg, wire, signals, topics, presence, incoming, controls)


def lines(caplog: pytest.LogCaptureFixture, text: str) -> int:
    return sum(text in r.getMessage() for r in caplog.records)


def test_a_retained_command_is_never_obeyed_and_a_flood_of_them_logs_one_line(
    device: Device, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    for _ in range(100):
        device.receive(f"{device.topics.base}/analysis/set", b"OFF", retain=True)
    assert device.controls.get()["analysis"] is True
    assert lines(caplog, "ignored a retained command") == 1


def test_a_command_is_obeyed_in_lowercase_with_stray_whitespace_and_its_state_is_retained(device: Device) -> None:
    device.receive(f"{device.topics.base}/analysis/set", b" off\n")
    assert device.controls.get()["analysis"] is False
    state = f"{device.topics.base}/analysis/state"
    assert device.wire.on(state)[-1] == "OFF" and device.wire.sent[-1].retain


def test_a_flood_of_switch_commands_is_summed_up_in_the_log(device: Device, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    for n in range(200):
        device.receive(f"{device.topics.base}/camera/set", b"OFF" if n % 2 == 0 else b"ON")
    assert device.controls.get()["camera"] is True
    assert lines(caplog, "switched") == 1


def test_a_button_press_runs_its_action_unless_retained_or_garbled(
    device: Device, caplog: pytest.LogCaptureFixture
) -> None:
    pressed = threading.Event()
    device.incoming.actions = {"reload_models": pressed.set}
    topic = f"{device.topics.base}/reload_models/set"
    device.receive(topic, b"PRESS", retain=True)
    device.receive(topic, b"PUSH")
    assert not pressed.is_set()
    assert lines(caplog, "expected PRESS") == 1
    device.receive(topic, b" press\n")
    assert pressed.is_set()


def test_another_clients_value_on_a_retained_state_topic_is_put_back_at_once(device: Device) -> None:
    device.presence.publish_retained("state", {"emotion": "happy"})
    ours = device.wire.on(device.topics.state)[-1]
    device.receive(device.topics.state, ours.encode())  # our own value, echoed: nothing to do
    assert device.wire.on(device.topics.state) == [ours]
    device.receive(device.topics.state, b'{"emotion":"angry"}', retain=True)
    assert device.wire.on(device.topics.state) == [ours, ours] and device.wire.sent[-1].retain


def test_a_flood_on_one_of_our_topics_is_answered_at_most_every_few_seconds_and_after_its_last_message(
    device: Device,
) -> None:
    device.presence.publish_retained("state", {"emotion": "happy"})
    for n in range(50):
        device.receive(device.topics.state, f'{{"emotion":"{n}"}}'.encode())
    assert len(device.wire.on(device.topics.state)) == 2, "the first answered at once, the rest folded"
    device.presence.tick(time.monotonic())
    assert len(device.wire.on(device.topics.state)) == 2
    device.presence.tick(time.monotonic() + FOREIGN_ANSWER_S + 0.1)
    assert len(device.wire.on(device.topics.state)) == 3, "the last word is ours"


def test_availability_overwritten_by_another_client_is_answered_with_the_state_first_then_online(
    device: Device,
) -> None:
    device.presence.publish_retained("state", {"emotion": "starting"})
    device.wire.sent.clear()
    device.receive(device.topics.availability, b"stopped")
    topics = [s.topic for s in device.wire.sent]
    assert topics[-1] == device.topics.availability and device.wire.sent[-1].payload == ONLINE
    assert topics.index(device.topics.state) < topics.index(device.topics.availability)


def test_nothing_is_answered_once_the_session_is_stopping(device: Device) -> None:
    device.presence.publish_retained("state", {"emotion": "happy"})
    device.signals.stopping.set()
    device.wire.sent.clear()
    device.receive(device.topics.availability, b"stopped")
    device.receive(device.topics.state, b'{"emotion":"angry"}')
    assert device.wire.sent == []


def test_state_changed_is_said_once_per_new_state(device: Device) -> None:
    for emotion in ("happy", "happy", "sad"):
        device.presence.publish_retained("state", {"emotion": emotion})
    changes = [json.loads(p) for p in device.wire.on(device.topics.state_changed)]
    assert [(c["previous"], c["emotion"]) for c in changes] == [(None, "happy"), ("happy", "sad")]


# ---------------------------------------------------------------------------- connection


def test_connections_the_broker_closes_at_once_three_times_read_as_a_second_client_with_our_id(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cfg = config_for(tmp_path)
    client = make_client(cfg, "emotion-edge-u")  # a real paho client, never connected
    signals, ups = Signals(), []
    conn = Connection(
        cfg, client, [("127.0.0.1", 1883)], signals, "emotion-edge/u/availability", lambda c, v5: ups.append(v5)
    )
    closed = ReasonCode(PacketTypes.DISCONNECT, "Unspecified error")
    for _ in range(3):
        conn.on_connect(client, None, None, ReasonCode(PacketTypes.CONNACK, "Success"), None)
        assert signals.connected.is_set()
        conn.on_disconnect(client, None, mqtt.DisconnectFlags(False), closed, None)
        assert not signals.connected.is_set() and signals.lost.is_set()
    assert ups == [True, True, True] and conn.disconnects == 3
    assert "another client with client id 'emotion-edge-u'" in conn.last_error
    assert lines(caplog, "keeps dropping this connection") == 1
    assert conn.stats()["connected"] is False


def test_a_broker_that_answered_before_and_now_closes_the_handshake_is_not_called_a_tls_port(tmp_path: Path) -> None:
    """A NATS node restarting takes TCP before its MQTT gateway is ready: the log must not send the operator to
    mqtt.tls. A broker that never answered MQTT still gets the TLS hint."""
    cfg = config_for(tmp_path)
    client = make_client(cfg, "emotion-edge-u")
    conn = Connection(cfg, client, [("127.0.0.1", 1883)], Signals(), "emotion-edge/u/availability", lambda c, v5: None)
    closed = ReasonCode(PacketTypes.DISCONNECT, "Unspecified error")
    conn.on_disconnect(client, None, mqtt.DisconnectFlags(False), closed, None)  # never in: the first attempt
    assert "is it a TLS port" in conn.last_error
    conn.on_connect(client, None, None, ReasonCode(PacketTypes.CONNACK, "Success"), None)
    conn.on_disconnect(client, None, mqtt.DisconnectFlags(False), closed, None)  # the node goes down
    conn.on_disconnect(client, None, mqtt.DisconnectFlags(False), closed, None)  # and refuses the handshake
    assert "TLS" not in conn.last_error and "restarting" in conn.last_error


CONNACK_OK = ReasonCode(PacketTypes.CONNACK, "Success")
CLOSED = ReasonCode(PacketTypes.DISCONNECT, "Unspecified error")


def cluster_connection(tmp_path: Path, ports: list[int]) -> tuple[Connection, mqtt.Client]:
    """A connection to the nodes 127.0.0.1:<port> of one clustered broker (mqtt.hosts), its paho client never
    connected: the callbacks are paho's, called as paho would."""
    cfg = config_for(tmp_path, hosts=[f"127.0.0.1:{p}" for p in ports])
    client = make_client(cfg, "emotion-edge-u")
    conn = Connection(cfg, client, cfg.mqtt.nodes(), Signals(), "emotion-edge/u/availability", lambda c, v5: None)
    return conn, client


def next_target(client: mqtt.Client) -> tuple[str, int]:
    return client._host, client._port  # where paho's next reconnect goes


def test_a_node_that_cannot_be_reached_is_left_for_the_next_one_round_robin(tmp_path: Path) -> None:
    ports = [free_port(), free_port(), free_port()]  # nothing listens: the probe is refused at once
    conn, client = cluster_connection(tmp_path, ports)
    assert conn.stats()["broker"] == f"127.0.0.1:{ports[0]}"
    for expected in (ports[1], ports[2], ports[0]):
        conn.on_connect_fail(client, None)
        assert next_target(client) == ("127.0.0.1", expected)
        assert conn.stats()["broker"] == f"127.0.0.1:{expected}"
    # The outage is explained once, naming the node it happened on.
    assert conn.last_error.startswith(f"127.0.0.1:{ports[0]}: is unreachable")


def test_a_node_that_refuses_the_device_is_left_but_a_refused_mqtt_5_is_tried_again_as_3_1_1_first(
    tmp_path: Path,
) -> None:
    conn, client = cluster_connection(tmp_path, [1883, 1884])
    conn.on_connect(client, None, None, ReasonCode(PacketTypes.CONNACK, "Unsupported protocol version"), None)
    assert next_target(client) != ("127.0.0.1", 1884) and not is_v5(client), "3.1.1 on the same node first"
    conn.on_connect(client, None, None, ReasonCode(PacketTypes.CONNACK, "Server unavailable"), None)
    assert next_target(client) == ("127.0.0.1", 1884)
    assert conn.last_error == "127.0.0.1:1883: refused the connection: Server unavailable"


def test_a_node_that_drops_the_connection_is_left_and_the_next_connection_is_named_in_stats(tmp_path: Path) -> None:
    conn, client = cluster_connection(tmp_path, [1883, 1884])
    conn.on_connect(client, None, None, CONNACK_OK, None)
    assert conn.stats()["broker"] == "127.0.0.1:1883" and conn.signals.connected.is_set()
    conn.on_disconnect(client, None, mqtt.DisconnectFlags(False), CLOSED, None)  # the node dies
    assert next_target(client) == ("127.0.0.1", 1884) and conn.signals.lost.is_set()
    assert conn.last_error == "127.0.0.1:1883: connection lost: Unspecified error"
    conn.on_connect(client, None, None, CONNACK_OK, None)
    assert conn.stats()["broker"] == "127.0.0.1:1884" and conn.stats()["connected"] is True


def test_a_node_that_closes_the_handshake_is_tried_with_both_protocols_before_the_next_node(tmp_path: Path) -> None:
    """Switching version and node in step would never try 3.1.1 on the first node of two."""
    conn, client = cluster_connection(tmp_path, [1883, 1884])
    tried, failed_on = [], []
    for _ in range(4):
        tried.append((next_target(client)[1] or 1883, "5" if is_v5(client) else "3.1.1"))
        conn.on_disconnect(client, None, mqtt.DisconnectFlags(False), CLOSED, None)  # never in
        failed_on.append(conn.last_error.split(": ")[0])
    assert tried == [(1883, "5"), (1883, "3.1.1"), (1884, "5"), (1884, "3.1.1")]
    assert failed_on == ["127.0.0.1:1883", "127.0.0.1:1883", "127.0.0.1:1884", "127.0.0.1:1884"]


def test_with_one_broker_nothing_moves(tmp_path: Path) -> None:
    cfg = config_for(tmp_path, port=1999)
    client = make_client(cfg, "emotion-edge-u")
    conn = Connection(cfg, client, cfg.mqtt.nodes(), Signals(), "emotion-edge/u/availability", lambda c, v5: None)
    conn.on_connect(client, None, None, CONNACK_OK, None)
    conn.on_disconnect(client, None, mqtt.DisconnectFlags(False), CLOSED, None)
    conn.on_connect(client, None, None, ReasonCode(PacketTypes.CONNACK, "Server unavailable"), None)
    assert conn.where() == "127.0.0.1:1999" and next_target(client) == ("", 1883)  # paho's own, untouched
    assert conn.last_error == "refused the connection: Server unavailable"  # no node named: there is one


# ---------------------------------------------------------------------------- the package's shape


def test_the_sessions_parts_never_import_the_session_and_stay_small() -> None:
    """Imports point one way (session -> parts), and no class outgrows a room a newcomer can hold."""
    package = Path(__file__).resolve().parents[1] / "edge_daemon" / "mqtt"
    for path in package.glob("*.py"):
        tree = ast.parse(path.read_text())
        if path.name not in ("session.py", "__init__.py"):
            imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
            assert "session" not in imported, f"{path.name} imports the session"
        for node in tree.body:
            if isinstance(node, ast.ClassDef):
                assert node.end_lineno is not None and node.end_lineno - node.lineno < 300, (path.name, node.name)
