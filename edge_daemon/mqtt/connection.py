"""The broker connection that paho keeps up in its loop thread, and what it takes to keep it honest.

MQTT 5 with a fallback to 3.1.1 (mqtt.protocol auto), a back-off with jitter so that a fleet does not come back in
step, a growing delay while a broker keeps closing connections at once (two devices with one client id), and one
log line per outage with its cause (a probe of our own, diagnosis.py, since paho does not say why).

With several nodes of one clustered broker (mqtt.hosts), a node that cannot be reached, refuses the device or drops
it is left for the next one in the list, round-robin, after the same back-off. A node change is a reconnect like any
other: what the outbox had in flight is offered again on the new connection (at least once, as ever).
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

import paho.mqtt.client as mqtt

from ..config import Config, node_name
from ..throttle import Throttle
from .client import UNSUPPORTED_PROTOCOL, forget_queued, is_v5, try_other_protocol
from .diagnosis import closed_without_answer, diagnose
from .signals import Signals
from .topics import OFFLINE

logger = logging.getLogger(__name__)

SESSION_TAKEN_OVER = 0x8E  # MQTT 5 DISCONNECT reason: another connection with the same client id
SHORT_LIVED_S = 5.0  # a connection the broker closes sooner than this, three times in a row, is a pattern


class Connection:
    """One paho client's connection: it calls `on_up(client, v5)` on every connect, before `connected` is set, for
    the session's subscriptions and announcements. `nodes`: where to connect, (host, port) in the order tried."""

    def __init__(
        self,
        config: Config,
        client: mqtt.Client,
        nodes: list[tuple[str, int]],
        signals: Signals,
        will_topic: str,
        on_up: Callable[[mqtt.Client, bool], None],
    ) -> None:
        c = config.mqtt
        self.config = config
        self.client = client
        if not nodes:
            raise ValueError("no broker node to connect to")
        self.nodes = list(nodes)
        self.node = 0  # index into nodes: where the client is connected, or tries to connect, now
        self.signals = signals
        self.on_up = on_up
        self._last_refusal = ""
        self.connected_since: float | None = None  # wall clock
        self.last_error = ""  # the last connection failure or loss, with its cause
        self.disconnects = 0
        self._refused_attempt = False
        self._takeover_log = Throttle()
        self._connected_at = 0.0  # monotonic
        self._ever_connected = False
        self._short_lived = 0  # connections in a row that the broker closed within SHORT_LIVED_S
        self._flap_delay = 0.0
        # A failed connection attempt is explained by a probe connection of our own. Probing every retry would
        # double what a struggling broker sees (and its log): once per outage, then once a minute for a new reason.
        self._diagnosis = Throttle()
        if logger.isEnabledFor(logging.DEBUG):
            # paho logs an ERROR on every failed reconnect; we log each outage once ourselves.
            client.enable_logger(logging.getLogger("paho"))
        client.reconnect_delay_set(min_delay=round(c.reconnect_min_s), max_delay=round(c.reconnect_max_s))
        self._jitter = random.Random()
        client.max_queued_messages_set(0)
        client.will_set(will_topic, OFFLINE, qos=1, retain=True)
        client.on_connect = self.on_connect
        client.on_disconnect = self.on_disconnect
        client.on_connect_fail = self.on_connect_fail

    @property
    def host(self) -> str:
        return self.nodes[self.node][0]

    @property
    def port(self) -> int:
        return self.nodes[self.node][1]

    def where(self) -> str:
        """The node in use (or being tried) as host:port."""
        return node_name(self.host, self.port)

    def next_node(self, why: str) -> None:
        """Leave this node: paho's next attempt, after its back-off, goes to the next one in mqtt.hosts."""
        if len(self.nodes) < 2 or self.signals.stopping.is_set():
            return
        left = self.where()
        self.node = (self.node + 1) % len(self.nodes)
        # paho's host/port setters refuse while the old connection's state lingers; its reconnect reads these.
        self.client._host, self.client._port = self.host, self.port  # pinned paho<3
        # A lost connection is news; while every node is down, each further move would be one more line per retry.
        log = logger.warning if why == "dropped the connection" else logger.debug
        log("MQTT broker node %s %s; trying %s next", left, why, self.where())

    def _named(self, reason: str) -> str:
        """last_error with the node it happened on, when there are several."""
        return f"{self.where()}: {reason}" if len(self.nodes) > 1 else reason

    def start(self) -> None:
        logger.info("connecting to MQTT broker %s:%d", self.host, self.port)
        # clean_start: the broker keeps no session for us; the outbox, not the broker, holds what is undelivered.
        # (3.1.1 says the same with clean_session, set when the client is made; paho refuses clean_start there.)
        start = {"clean_start": True} if is_v5(self.client) else {}
        self.client.connect_async(self.host, self.port, keepalive=self.config.mqtt.keepalive_s, **start)
        self.client.loop_start()

    def close(self) -> None:
        self.client.disconnect()
        # paho's loop_stop waits for its thread without a limit, and that thread may sit in a connect attempt
        # or its diagnosis for seconds during an outage: SIGTERM must still end the process within 5 s.
        stopper = threading.Thread(target=self.client.loop_stop, name="mqtt-stop", daemon=True)
        stopper.start()
        stopper.join(timeout=1.0)

    def ensure_network_loop(self) -> None:
        """Start paho's network thread again if an unexpected error ended it (its traceback is logged).

        paho's loop_start is the probe: it refuses while the thread runs and starts one once it has ended.
        """
        if not self.signals.stopping.is_set() and self.client.loop_start() == mqtt.MQTT_ERR_SUCCESS:
            logger.error("the MQTT network thread had stopped; started it again")

    def stats(self) -> dict[str, Any]:
        """Connection state and history, for `stats.mqtt`."""
        since = self.connected_since
        return {
            "connected": self.signals.connected.is_set(),
            "broker": self.where(),  # the node in use, or the one being tried
            "connected_since": _iso(since) if since else None,
            "disconnects": self.disconnects,
            "last_error": self.last_error or None,
        }

    # ------------------------------------------------------------------ paho callbacks (network thread)

    def on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        if reason_code.is_failure:
            fallback = not self._ever_connected and getattr(reason_code, "value", None) in UNSUPPORTED_PROTOCOL
            if fallback and self.config.mqtt.protocol == "auto" and is_v5(client):
                logger.info("MQTT broker %s:%d refuses MQTT 5; trying 3.1.1", self.host, self.port)
                self._last_refusal = str(reason_code)
            elif str(reason_code) != self._last_refusal:  # one line per new reason, not one per retry
                logger.error(
                    "MQTT broker %s:%d refused the connection: %s; retrying with back-off",
                    self.host,
                    self.port,
                    reason_code,
                )
                self._last_refusal = str(reason_code)
            self.last_error = self._named(f"refused the connection: {reason_code}")
            self._refused_attempt = True  # paho reports the same attempt's end to on_disconnect too
            if fallback:
                try_other_protocol(self.config, client)  # the same node again, with MQTT 3.1.1
            else:
                # A node still starting (NATS: JetStream not ready, "server unavailable") or misconfigured: another
                # node of the cluster may take the device.
                self.next_node("refused the connection")
            self.jittered_backoff()
            return
        self._last_refusal = ""
        forget_queued(client)  # before paho re-sends the previous connection's queue, right after this call
        self._diagnosis.reset()  # the next outage is explained at once
        self.connected_since = time.time()
        self._connected_at = time.monotonic()
        if not self._ever_connected and not is_v5(client):
            logger.warning(
                "MQTT broker %s:%d is used with MQTT 3.1.1 (mqtt.protocol %s): it cannot say when it refuses an event "
                "(an ACL, a size limit), so such an event would count as delivered; use MQTT 5 where the broker has it",
                self.host, self.port, self.config.mqtt.protocol,
            )  # fmt: skip
        self._ever_connected = True
        logger.info("MQTT connected to %s:%d", self.host, self.port)
        self.on_up(client, is_v5(client))
        self.signals.connected.set()
        self.signals.wake.set()

    def on_connect_fail(self, client: mqtt.Client, userdata: Any) -> None:
        if self._diagnosis.ready():
            reason = diagnose(self.config, self.host, self.port)  # paho does not say why; a probe of our own does
            self._failed_attempt(reason)
        self.next_node("cannot be reached")

    def _failed_attempt(self, reason: str) -> None:
        """A connection attempt that did not get us in: one line per outage and cause, and in stats."""
        self.last_error = self._named(reason)
        self.jittered_backoff()
        if reason != self._last_refusal:  # not per node: every node of a cluster down is one outage, one line
            logger.error("MQTT broker %s %s; retrying with back-off", self.where(), reason)
            self._last_refusal = reason

    def jittered_backoff(self) -> None:
        """paho doubles its delay up to the maximum; a fleet that lost the same broker must not come back in step,
        so the next delay is drawn between half and all of what paho would wait."""
        c = self.config.mqtt
        client = self.client
        with client._reconnect_delay_mutex:  # paho has no public way to jitter its back-off (pinned paho<3)
            current = client._reconnect_delay or c.reconnect_min_s
            nxt = min(current * 2, c.reconnect_max_s)
            client._reconnect_delay = max(c.reconnect_min_s, self._jitter.uniform(nxt / 2, nxt)) / 2

    def on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        was_connected = self.signals.connected.is_set()
        self.signals.connected.clear()
        self.signals.lost_reason = str(reason_code)
        self.signals.lost.set()
        self.signals.wake.set()
        if self.signals.stopping.is_set():
            return
        if was_connected:
            self.disconnects += 1
            self.connected_since = None
            lasted = time.monotonic() - self._connected_at
            # A broker that shuts down says so (a DISCONNECT packet, "Server shutting down"): that is no take-over.
            told = getattr(flags, "is_disconnect_packet_from_server", False)
            taken = getattr(reason_code, "value", None) == SESSION_TAKEN_OVER
            if lasted < SHORT_LIVED_S and reason_code != 0 and (taken or not told):
                self._short_lived += 1
                # paho starts its back-off afresh after every CONNACK: two clients with one id would knock each
                # other off every second. Grow (with jitter) while connections keep ending at once.
                c = self.config.mqtt
                self._flap_delay = min(max(c.reconnect_min_s, self._flap_delay * 2), c.reconnect_max_s)
                with client._reconnect_delay_mutex:  # see jittered_backoff
                    client._reconnect_delay = self._jitter.uniform(self._flap_delay / 2, self._flap_delay) / 2
            elif lasted >= 6 * SHORT_LIVED_S:
                self._short_lived, self._flap_delay = 0, 0.0
            # Mosquitto 2.0 closes the older connection of a client id without a DISCONNECT reason; MQTT 5 brokers
            # that send one say 0x8E. Both mean the same thing here.
            if taken or (self._short_lived >= 3 and not told):
                cid = client._client_id.decode()  # pinned paho<3: the id in use (a replay's is its own)
                self.last_error = self._named(
                    f"session taken over by another client with client id {cid!r}"
                    if taken
                    else f"the broker closed {self._short_lived} connections in a row within seconds ({reason_code}): "
                    f"another client with client id {cid!r}?"
                )
                if self._takeover_log.ready():
                    logger.error(
                        "MQTT broker %s:%d keeps dropping this connection (%s): most likely another client connects "
                        "with the same client id %r. Is device_id %r used by two devices (or mqtt.client_id copied)? "
                        "Give each device its own; the broker's log names both addresses.",
                        self.host, self.port, reason_code, cid, self.config.device_id,
                    )  # fmt: skip
                return  # the same client id is refused on every node of a cluster: no node to move to
            self.last_error = self._named(f"connection lost: {reason_code}")
            logger.warning(
                "MQTT connection lost (%s); reconnecting with back-off, events wait in the outbox", reason_code
            )
            self.next_node("dropped the connection")
            return
        if self._refused_attempt:
            self._refused_attempt = False
            return
        # Not in yet: the port took the TCP connection but the MQTT handshake ended (no CONNACK).
        if getattr(reason_code, "value", None) == 0x8D or "keep alive" in str(reason_code).lower():
            reason = (
                f"accepted the connection but sent no MQTT answer within {self.config.mqtt.keepalive_s:.0f} s "
                "(mqtt.keepalive_s); is this port an MQTT broker?"
            )
        elif self._ever_connected:  # it spoke MQTT to us before: not a TLS port, most likely restarting or overloaded
            reason = (
                "closed the connection during the MQTT handshake (it answered MQTT before: most likely restarting or "
                "overloaded; the broker's log says why)"
            )
        else:
            reason = closed_without_answer(self.config)
        self._failed_attempt(reason)
        if not self._ever_connected and self.config.mqtt.protocol == "auto":
            # A broker that speaks only MQTT 3.1.1 may close or ignore an MQTT 5 CONNECT: alternate until one works,
            # both versions on one node before the next node (else two nodes would each only ever see one version).
            try_other_protocol(self.config, client)
            if is_v5(client):
                self.next_node("closed the connection during the handshake")
        else:
            self.next_node("closed the connection during the handshake")


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")
