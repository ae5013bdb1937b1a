"""The broker session: topics, availability, retained state, stats, Home Assistant discovery, and draining the outbox.

Topics live under `<topic_prefix>/<device_id>/`:

* `availability`: `online` on every connect, `offline` as the will, `stopped` on clean shutdown (QoS 1, retained)
* `events`: one JSON object per window (QoS 1, never retained), drained from the outbox in `seq` order
* `state`: the current emotion (QoS 1, retained; re-published after every reconnect)
* `stats`: counters on an interval (QoS 0)

paho re-sends unacknowledged QoS 1 messages itself after a reconnect, in
order; the outbox covers what paho's memory cannot: a restart.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import socket
import ssl
import threading
import time
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from . import homeassistant
from .commands import CommandDispatcher
from .config import Config, mqtt_password
from .errors import UserError
from .outbox import Outbox
from .throttle import Throttle

logger = logging.getLogger(__name__)

ONLINE, OFFLINE, STOPPED = "online", "offline", "stopped"
INFLIGHT = 50  # events handed to paho and not yet acknowledged, at most


@dataclass(frozen=True)
class Topics:
    base: str

    @classmethod
    def for_device(cls, prefix: str, device_id: str) -> Topics:
        return cls(f"{prefix.rstrip('/')}/{device_id}")

    @property
    def availability(self) -> str:
        return f"{self.base}/availability"

    @property
    def events(self) -> str:
        return f"{self.base}/events"

    @property
    def state(self) -> str:
        return f"{self.base}/state"

    @property
    def stats(self) -> str:
        return f"{self.base}/stats"

    @property
    def status(self) -> str:
        return f"{self.base}/status"


class MqttSession:
    """One broker connection that reconnects by itself (paho's loop thread) plus a thread that drains the outbox."""

    def __init__(
        self,
        config: Config,
        outbox: Outbox,
        host: str,
        port: int,
        drain_rate_per_s: float = 50.0,
        client_id: str | None = None,
        owns_availability: bool = True,
    ) -> None:
        c = config.mqtt
        self.config = config
        self.topics = Topics.for_device(c.topic_prefix, config.device_id)
        self.outbox = outbox
        self.host, self.port = host, port
        self.drain_rate_per_s = drain_rate_per_s
        # The service owns its device's availability: when anything else leaves another value there (a replay's
        # `stopped`, the will of an older process of this device), it says `online` again with its retained topics.
        self.owns_availability = owns_availability
        self.connected = threading.Event()
        self.published = 0
        self._retained: dict[str, str] = {}  # topic -> payload, published again after every reconnect
        self._acks: queue.SimpleQueue[int] = queue.SimpleQueue()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._last_refusal = ""
        # A failed connection attempt is explained by a probe connection of our own. Probing every retry would
        # double what a struggling broker sees (and its log): once per outage, then once a minute for a new reason.
        self._diagnosis = Throttle()
        self._client = make_client(config, client_id or client_id_of(config))
        if logger.isEnabledFor(logging.DEBUG):
            # paho logs an ERROR on every failed reconnect; we log each outage once ourselves.
            self._client.enable_logger(logging.getLogger("paho"))
        self._client.reconnect_delay_set(min_delay=round(c.reconnect_min_s), max_delay=round(c.reconnect_max_s))
        self._client.max_queued_messages_set(0)
        self._client.will_set(self.topics.availability, OFFLINE, qos=1, retain=True)
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_connect_fail = self._on_connect_fail
        self._client.on_publish = self._on_publish
        self._client.on_message = self._on_message
        self._drainer = threading.Thread(target=self._drain_loop, name="mqtt-drain", daemon=True)
        self.commands: CommandDispatcher | None = None  # the service's remote control (attach_commands)
        self.configuration_url: str | None = None  # the device page, for Home Assistant's "visit device"

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        logger.info("connecting to MQTT broker %s:%d", self.host, self.port)
        self._client.connect_async(self.host, self.port, keepalive=self.config.mqtt.keepalive_s)
        self._client.loop_start()
        self._drainer.start()

    def flush(self, timeout_s: float) -> None:
        """While connected, give the outbox up to `timeout_s` to be handed over and acknowledged."""
        deadline = time.monotonic() + timeout_s
        while self.connected.is_set() and self.outbox.depth() and time.monotonic() < deadline:
            time.sleep(0.05)

    def stop(self, flush_timeout_s: float = 2.0) -> None:
        """Hand over what is pending (briefly), announce `stopped`, disconnect."""
        deadline = time.monotonic() + flush_timeout_s
        self.flush(flush_timeout_s)  # at most that long: `stopped` below still gets at least 0.2 s
        self._stop.set()
        self._wake.set()
        self._drainer.join(timeout=2)
        if self.connected.is_set():
            info = self._client.publish(self.topics.availability, STOPPED, qos=1, retain=True)
            try:
                info.wait_for_publish(timeout=max(0.2, deadline - time.monotonic()))
            except (RuntimeError, ValueError):
                pass
        self._client.disconnect()
        # paho's loop_stop waits for its thread without a limit, and that thread may sit in a connect attempt
        # or its diagnosis for seconds during an outage: SIGTERM must still end the process within 5 s.
        stopper = threading.Thread(target=self._client.loop_stop, name="mqtt-stop", daemon=True)
        stopper.start()
        stopper.join(timeout=1.0)

    def ensure_network_loop(self) -> None:
        """Start paho's network thread again if an unexpected error ended it (its traceback is logged).

        paho's loop_start is the probe: it refuses while the thread runs and starts one once it has ended.
        """
        if not self._stop.is_set() and self._client.loop_start() == mqtt.MQTT_ERR_SUCCESS:
            logger.error("the MQTT network thread had stopped; started it again")

    # ------------------------------------------------------------------ what the daemon publishes

    def notify_event(self) -> None:
        """An event was appended to the outbox: drain now rather than at the next poll."""
        self._wake.set()

    def publish_retained(self, name: str, value: dict[str, Any]) -> None:
        """`state` or `status`: kept, and published again after every reconnect (a broker may have lost it)."""
        topic = getattr(self.topics, name)
        self.publish_retained_topic(topic, json.dumps(value, separators=(",", ":")))

    def attach_commands(self, controls: Any) -> CommandDispatcher:
        """Obey `…/<name>/set` (unless mqtt.commands is false) and keep `…/<name>/state` retained; before start()."""
        self.commands = CommandDispatcher(
            controls, self.topics.base, self.publish_retained_topic, accept_commands=self.config.mqtt.commands
        )
        self.commands.publish_states()
        return self.commands

    def publish_retained_topic(self, topic: str, payload: str) -> None:
        """Any retained topic of this device, kept and published again after every reconnect."""
        self._retained[topic] = payload
        # paho's own flag, not `connected`: that is set at the end of _on_connect, after it has re-published what
        # _retained held, and a value stored in between would wait for the next reconnect. Twice is harmless.
        if self._client.is_connected():
            self._client.publish(topic, payload, qos=1, retain=True)

    def publish_stats(self, stats: dict[str, Any]) -> None:
        if self.connected.is_set():
            self._client.publish(self.topics.stats, json.dumps(stats, separators=(",", ":")), qos=0)

    # ------------------------------------------------------------------ paho callbacks (network thread)

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        if reason_code.is_failure:
            if str(reason_code) != self._last_refusal:  # one line per new reason, not one per retry
                logger.error(
                    "MQTT broker %s:%d refused the connection: %s; retrying with back-off",
                    self.host,
                    self.port,
                    reason_code,
                )
                self._last_refusal = str(reason_code)
            return
        self._last_refusal = ""
        self._diagnosis.reset()  # the next outage is explained at once
        logger.info("MQTT connected to %s:%d", self.host, self.port)
        if self.commands is not None and self.commands.accept_commands:
            # Before `online` and the switch states: whoever sees them can send a command and be heard.
            client.subscribe(self.commands.command_filter, qos=1)
        client.publish(self.topics.availability, ONLINE, qos=1, retain=True)
        for topic, payload in list(self._retained.items()):
            client.publish(topic, payload, qos=1, retain=True)
        ha = self.config.mqtt.homeassistant
        if ha.discovery:
            client.subscribe(f"{ha.prefix}/status", qos=1)
        self._announce_to_home_assistant()  # with discovery off: clears an earlier announcement
        # 0.1 announced one topic per entity; if the broker still keeps them, they are cleared (see _on_message).
        client.subscribe(homeassistant.legacy_filter(self.config), qos=1)
        if self.owns_availability:
            client.subscribe(self.topics.availability, qos=1)  # after our `online`: its retained copy is ours
        self.connected.set()
        self._wake.set()

    def _on_connect_fail(self, client: mqtt.Client, userdata: Any) -> None:
        if not self._diagnosis.ready():
            return
        reason = diagnose(self.config, self.host, self.port)  # paho does not say why; a probe of our own does
        if reason != self._last_refusal:
            logger.error("MQTT broker %s:%d %s; retrying with back-off", self.host, self.port, reason)
            self._last_refusal = reason

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        if self.connected.is_set() and not self._stop.is_set():
            logger.warning(
                "MQTT connection lost (%s); reconnecting with back-off, events wait in the outbox", reason_code
            )
        self.connected.clear()

    def _on_publish(self, client: mqtt.Client, userdata: Any, mid: int, reason_code: Any, properties: Any) -> None:
        # paho holds its message lock here: hand the ack to the drain thread instead of touching our state.
        self._acks.put(mid)
        self._wake.set()

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        if self.commands is not None and msg.topic.endswith("/set") and msg.topic.startswith(self.topics.base + "/"):
            if msg.retain:  # a retained command would undo every later change at each reconnect
                logger.warning("ignored a retained command on %s: publish commands without the retain flag", msg.topic)
            else:
                self.commands.handle(msg.topic, msg.payload)
        elif msg.topic in homeassistant.legacy_topics(self.config) and msg.payload:
            # Cleared only when seen: an empty message on them at every start makes Home Assistant warn about a
            # conflicting discovery message. Then announced again, for the entities that clearing removed.
            logger.info("clearing the per-entity Home Assistant discovery of an earlier version: %s", msg.topic)
            client.publish(msg.topic, b"", qos=1, retain=True)
            self._announce_to_home_assistant()
        elif msg.topic == f"{self.config.mqtt.homeassistant.prefix}/status" and msg.payload == b"online":
            self._announce_to_home_assistant()  # Home Assistant restarted: it forgets discovered entities
        elif msg.topic == self.topics.availability and msg.payload != ONLINE.encode() and not self._stop.is_set():
            logger.warning(
                "%s was set to %r by another client while this daemon runs; announcing online again",
                msg.topic,
                msg.payload.decode("utf-8", "replace")[:40],
            )
            client.publish(self.topics.availability, ONLINE, qos=1, retain=True)
            for topic, payload in list(self._retained.items()):
                client.publish(topic, payload, qos=1, retain=True)

    # ------------------------------------------------------------------ outbox drain (own thread)

    def _drain_loop(self) -> None:
        inflight: dict[int, int] = {}  # paho mid -> event seq
        handed = 0  # highest seq handed to paho
        budget, last = 0.0, time.monotonic()
        failures = Throttle()
        while not self._stop.is_set():
            self._wake.wait(0.2)
            self._wake.clear()
            try:
                while True:
                    try:
                        mid = self._acks.get_nowait()
                    except queue.Empty:
                        break
                    seq = inflight.pop(mid, None)
                    if seq is not None:
                        self.outbox.ack(seq)
                        self.published += 1
                now = time.monotonic()
                # Token bucket: a long backlog drains at drain_rate_per_s, with a burst of one second's worth.
                budget = min(self.drain_rate_per_s, budget + (now - last) * self.drain_rate_per_s)
                last = now
                room = min(INFLIGHT - len(inflight), int(budget))
                if not self.connected.is_set() or room <= 0:
                    continue
                for item in self.outbox.pending(handed, room):
                    info = self._client.publish(self.topics.events, item.payload, qos=1, retain=False)
                    inflight[info.mid] = item.seq
                    handed = item.seq
                    budget -= 1
            except Exception as exc:  # e.g. the outbox locked by another process: retry, never stop publishing
                if failures.ready():
                    logger.error("publishing from the outbox failed (%s); retrying", exc)
                self._stop.wait(1.0)

    # ------------------------------------------------------------------ helpers

    def _announce_to_home_assistant(self) -> None:
        """The device's discovery message (edge_daemon/homeassistant.py), or its removal when discovery is off."""
        topic = homeassistant.device_topic(self.config)
        if self.config.mqtt.homeassistant.discovery:
            payload = homeassistant.discovery_payload(self.config, self.configuration_url)
            self._client.publish(topic, json.dumps(payload, separators=(",", ":")), qos=1, retain=True)
        else:
            self._client.publish(topic, b"", qos=1, retain=True)


def client_id_of(config: Config) -> str:
    return config.mqtt.client_id or f"emotion-edge-{config.device_id}"


def make_client(config: Config, client_id: str) -> mqtt.Client:
    """A paho client with the configured credentials and TLS (UserError if the certificate files are unusable)."""
    c = config.mqtt
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=True)
    if c.username:
        client.username_pw_set(c.username, mqtt_password(config))
    if c.tls.enabled:
        tls = c.tls
        for name in ("ca_file", "cert_file", "key_file"):
            value = getattr(tls, name)
            if value and not config.path(value).is_file():
                raise UserError(f"mqtt.tls.{name}: {config.path(value)} not found")
        try:
            client.tls_set(
                ca_certs=str(config.path(tls.ca_file)) if tls.ca_file else None,
                certfile=str(config.path(tls.cert_file)) if tls.cert_file else None,
                keyfile=str(config.path(tls.key_file)) if tls.key_file else None,
                cert_reqs=ssl.CERT_REQUIRED,
            )
        except (ssl.SSLError, OSError, ValueError) as exc:
            raise UserError(f"mqtt.tls: cannot use the certificate files ({exc})") from None
    return client


def diagnose(config: Config, host: str, port: int) -> str:
    """Why a connection attempt failed, in words an operator can act on."""
    try:
        with socket.create_connection((host, port), timeout=3) as sock:
            if not config.mqtt.tls.enabled:
                return "accepted the connection but did not complete the MQTT handshake"
            tls = config.mqtt.tls
            ctx = ssl.create_default_context(cafile=str(config.path(tls.ca_file)) if tls.ca_file else None)
            if tls.cert_file:
                ctx.load_cert_chain(config.path(tls.cert_file), config.path(tls.key_file) if tls.key_file else None)
            with ctx.wrap_socket(sock, server_hostname=host):
                return "completed TLS on a probe but refused MQTT"
    except ssl.SSLCertVerificationError as exc:
        return (
            f"presented a TLS certificate we do not trust ({exc.verify_message}); check mqtt.tls.ca_file and mqtt.host"
        )
    except ssl.SSLError as exc:
        return f"failed the TLS handshake ({exc.reason or exc}); check mqtt.tls and that the port speaks TLS"
    except OSError as exc:
        return f"is unreachable ({exc.strerror or exc}); is the broker running and mqtt.host/mqtt.port right?"


def probe_broker(config: Config, host: str, port: int, timeout_s: float = 5.0) -> str | None:
    """What keeps the daemon from using the broker, or None: a real MQTT connect with its TLS and credentials."""
    # Never the daemon's own client id: the broker would disconnect a running daemon in favour of the probe.
    client = make_client(config, f"{client_id_of(config)}-check-{os.getpid()}")
    answers: queue.SimpleQueue[Any] = queue.SimpleQueue()
    client.on_connect = lambda c, userdata, flags, reason_code, properties: answers.put(reason_code)
    try:
        client.connect(host, port, keepalive=10)
    except (OSError, ValueError):  # TLS failures are OSErrors too
        return diagnose(config, host, port)
    client.loop_start()
    try:
        reason = answers.get(timeout=timeout_s)
    except queue.Empty:
        return f"accepted the connection but gave no MQTT answer within {timeout_s:.0f} s"
    finally:
        client.disconnect()
        client.loop_stop()
    return f"refused the connection: {reason}" if reason.is_failure else None


def resolve_broker(config: Config) -> tuple[str, int]:
    return (config.mqtt.host or "localhost", config.mqtt.port)
