"""The collector's MQTT session: QoS 1, a persistent session, acknowledged only after commit, failing over between
the nodes of a clustered broker.

* the broker keeps a persistent session for the collector's client id (MQTT 5 session expiry, or 3.1.1
  clean_session false) and subscribes QoS 1, so what arrives while the collector is away waits for it;
* paho is told not to acknowledge by itself (`manual_ack`): a QoS 1 message is acknowledged only after the
  transaction that stored it has committed. A collector killed at any moment leaves unacknowledged messages with
  the broker, which delivers them again to the next connection of this client id;
* with several nodes (`mqtt.hosts`), a node that cannot be reached, refuses the collector or drops it is left for
  the next one in the list, after paho's back-off (1 s, doubling to 10 s, reset by a successful connection). The
  nodes of one cluster share the session, so the next node delivers again what the lost one had not seen
  acknowledged.

A PUBACK belongs to the connection that received the message: one received on an earlier connection is not
acknowledged on the new one (the broker re-sends it there, and that copy is acknowledged).
"""

from __future__ import annotations

import logging
import queue
import ssl
import threading
import time
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from ..config import node_name
from ..errors import UserError
from ..mqtt.client import UNSUPPORTED_PROTOCOL  # CONNACK: unacceptable protocol version (3.1.1, 5)
from . import store
from .settings import CollectorConfig, secret

logger = logging.getLogger(__name__)


class MqttSource:
    """Feeds `inbox` with what the broker delivers; `ack(batch)` once the batch is committed."""

    def __init__(self, config: CollectorConfig, inbox: queue.SimpleQueue[store.Message]) -> None:
        self.config = config
        self.prefix = config.mqtt.topic_prefix.rstrip("/")
        self._depth = self.prefix.count("/") + 1  # topic levels before the device id
        self._inbox = inbox
        self.nodes = config.mqtt.nodes()
        self.node = 0  # index into nodes: where the client connects (or tries to) now
        self._generation = 0  # one per connection: acknowledgements go to the connection that received the message
        self._lock = threading.Lock()
        self._ever_connected = False
        self._refused = False
        self._failover_after_refusal = False
        self._closed_tries = 0  # closes before any answer on the current node (never connected yet)
        self._stopping = False
        self.connected = threading.Event()
        self._client = self._make_client()

    def where(self) -> str:
        return node_name(*self.nodes[self.node])

    def _make_client(self) -> mqtt.Client:
        c = self.config.mqtt
        v311 = str(c.protocol) == "3.1.1"
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=c.client_id,
            protocol=mqtt.MQTTv311 if v311 else mqtt.MQTTv5,
            clean_session=False if v311 else None,
            manual_ack=True,
        )
        if c.username:
            client.username_pw_set(c.username, secret(c.password_env, "collector_mqtt_password"))
        if c.tls.enabled:
            try:
                client.tls_set_context(tls_context(self.config))
            except (ssl.SSLError, OSError, ValueError) as exc:
                raise UserError(f"mqtt.tls: cannot use the certificate files ({exc})") from None
        client.reconnect_delay_set(1, 10)
        # paho's own limit of messages in flight counts only what we publish; the broker's is receive_maximum.
        client.on_connect = self._on_connect
        client.on_connect_fail = self._on_connect_fail
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        return client

    def topic_filters(self) -> list[tuple[str, bool]]:
        """(filter, shared): events and stats may be shared among collectors; retained topics are not (a shared
        subscription gets no retained messages), every collector keeps the status tables current."""
        group = self.config.mqtt.shared_group
        out = []
        for kind in store.KINDS:
            f = f"{self.prefix}/+/{kind}"
            shared = group is not None and kind in ("events", "stats")
            out.append((f"$share/{group}/{f}" if shared else f, shared))
        return out

    # ------------------------------------------------------------------ paho's callbacks (its network thread)

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason_code: Any, props: Any) -> None:
        if reason_code.is_failure:
            self._refused = True  # paho reports the end of this attempt to on_disconnect as well
            if not self._ever_connected and getattr(reason_code, "value", None) in UNSUPPORTED_PROTOCOL:
                if str(self.config.mqtt.protocol) == "auto" and client._protocol == mqtt.MQTTv5:
                    logger.info("broker %s refuses MQTT 5; trying 3.1.1", self.where())
                    self._other_protocol()
                    return
            # A node that is still starting (NATS: JetStream not ready, "server unavailable") or is misconfigured:
            # another node of the cluster may take the collector.
            logger.error("broker %s refused the collector: %s", self.where(), reason_code)
            self._failover_after_refusal = True
            return
        with self._lock:
            self._generation += 1
        self._ever_connected = True
        v5 = client._protocol == mqtt.MQTTv5  # pinned paho<3
        logger.info(
            "collector connected to %s (MQTT %s, session %s)", self.where(), "5" if v5 else "3.1.1",
            "resumed" if flags.session_present else "new",
        )  # fmt: skip
        for f, _shared in self.topic_filters():
            client.subscribe(f, options=SubscribeOptions(qos=1) if v5 else None, qos=0 if v5 else 1)
        self.connected.set()

    def _on_connect_fail(self, client: mqtt.Client, userdata: Any) -> None:
        """No TCP (or TLS) connection to this node: the next one, after paho's back-off."""
        if not self._stopping:
            logger.warning("broker %s unreachable", self.where())
            self._next_node()

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason_code: Any, props: Any) -> None:
        self.connected.clear()
        if self._refused:
            self._refused = False
            if self._failover_after_refusal:
                self._failover_after_refusal = False
                self._next_node()
        elif not self._ever_connected and not self._stopping:
            # Closed before any answer: a 3.1.1-only broker may simply close an MQTT 5 CONNECT, or the node is still
            # starting. Once each protocol has had its try here (one try when mqtt.protocol is fixed): the next node.
            self._closed_tries += 1
            self._other_protocol()
            if self._closed_tries >= (2 if str(self.config.mqtt.protocol) == "auto" else 1):
                self._closed_tries = 0
                logger.warning("broker %s closed the connection without answering MQTT", self.where())
                self._next_node()
        elif not self._stopping:
            logger.warning("collector lost the broker %s (%s); reconnecting, the cluster keeps the session",
                           self.where(), reason_code)  # fmt: skip
            self._next_node()

    def _next_node(self) -> None:
        if len(self.nodes) < 2:
            return
        self.node = (self.node + 1) % len(self.nodes)
        # paho's host/port setters refuse while the old connection's state lingers; its reconnect reads these.
        self._client._host, self._client._port = self.nodes[self.node]  # pinned paho<3
        logger.info("collector: trying broker node %s next", self.where())

    def _other_protocol(self) -> None:
        if str(self.config.mqtt.protocol) != "auto":
            return
        client = self._client
        client._protocol = mqtt.MQTTv311 if client._protocol == mqtt.MQTTv5 else mqtt.MQTTv5  # pinned paho<3
        client._clean_session = False  # what 3.1.1 reads: keep the session
        logger.info("collector: trying MQTT %s next", "3.1.1" if client._protocol == mqtt.MQTTv311 else "5")

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        parts = msg.topic.split("/")
        if len(parts) != self._depth + 2 or parts[-1] not in store.KINDS:
            if msg.qos:
                client.ack(msg.mid, msg.qos)  # not ours (a command echo under the prefix): nothing to store
            return
        with self._lock:
            generation = self._generation
        self._inbox.put(
            store.Message(parts[-1], parts[self._depth], msg.topic, msg.payload, time.time(), msg.mid, msg.qos,
                          generation)
        )  # fmt: skip

    # ------------------------------------------------------------------ the collector's side

    def start(self) -> None:
        c = self.config.mqtt
        props = None
        if str(c.protocol) != "3.1.1":
            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = c.session_expiry_s
            props.ReceiveMaximum = c.receive_maximum
        start = {"clean_start": False} if self._client._protocol == mqtt.MQTTv5 else {}
        host, port = self.nodes[self.node]
        self._client.connect_async(host, port, keepalive=c.keepalive_s, properties=props, **start)
        self._client.loop_start()

    def ack(self, batch: list[store.Message]) -> None:
        """After COMMIT. Never twice (the broker reuses a mid once it is acknowledged): the caller empties its batch.
        Under the lock that a new connection takes to count itself: a mid of the old connection must never be
        acknowledged on the new one, where it may name a message that was never stored."""
        with self._lock:
            for m in batch:
                if m.qos and m.generation == self._generation:
                    self._client.ack(m.mid, m.qos)

    def stop(self) -> None:
        self._stopping = True
        self._client.disconnect()  # unacknowledged messages stay with the broker's session
        self._client.loop_stop()


def tls_context(config: CollectorConfig) -> ssl.SSLContext:
    """The client side of mqtt.tls: verify the broker against ca_file (or the system's store), optionally present
    a client certificate. Shared by the MQTT session and the JetStream reader."""
    t = config.mqtt.tls
    ctx = ssl.create_default_context(cafile=str(config.path(t.ca_file)) if t.ca_file else None)
    if t.cert_file:
        ctx.load_cert_chain(str(config.path(t.cert_file)), str(config.path(t.key_file)) if t.key_file else None)
    return ctx
