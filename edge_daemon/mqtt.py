"""The broker session: topics, availability, retained state, stats, Home Assistant discovery, and draining the outbox.

Topics live under `<topic_prefix>/<device_id>/`:

* `availability`: `online` on every connect, `offline` as the will, `stopped` on clean shutdown (QoS 1, retained)
* `events`: one JSON object per window (QoS 1, never retained), drained from the outbox in `seq` order
* `state`: the current emotion (QoS 1, retained; re-published after every reconnect)
* `state_changed`: the new state once per change (QoS 1, never retained; Home Assistant's device triggers)
* `stats`: counters on an interval (QoS 0)

A replay's session says the same under `<base>/replay/` (homeassistant.base_topic), never on the service's topics.

paho re-sends unacknowledged QoS 1 messages itself after a reconnect, in
order; the outbox covers what paho's memory cannot: a restart.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import queue
import random
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.subscribeoptions import SubscribeOptions

from . import homeassistant
from .commands import CommandDispatcher
from .config import Config, mqtt_password
from .errors import UserError
from .outbox import Outbox
from .throttle import Throttle

logger = logging.getLogger(__name__)

ONLINE, OFFLINE, STOPPED = "online", "offline", "stopped"
INFLIGHT = 50  # events handed to paho and not yet acknowledged, at most
RETRY_REFUSED_S = 60.0  # an event the broker refused (PUBACK reason code) is offered again after this long
RETRY_DROPPED_S = 600.0  # one the broker closed the connection for (over its message size limit?), after this long
SESSION_TAKEN_OVER = 0x8E  # MQTT 5 DISCONNECT reason: another connection with the same client id
FOREIGN_ANSWER_S = 5.0  # another client's message on our availability or Home Assistant's status: answered this often
# CONNACK "unacceptable protocol version": 0x01 from a 3.1.1 broker (paho maps it to 132 for MQTT 5 clients), 0x84.
UNSUPPORTED_PROTOCOL = (0x01, 0x84)
SHORT_LIVED_S = 5.0  # a connection the broker closes sooner than this, three times in a row, is a pattern


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
    def state_changed(self) -> str:
        return f"{self.base}/state_changed"

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
        replay: bool = False,
    ) -> None:
        c = config.mqtt
        self.config = config
        # A replay never speaks as the service: its topics live under <base>/replay/ and it is a device of its own in
        # Home Assistant (homeassistant.py), so that nothing it says reaches the service's entities or automations.
        self.replay = replay
        self.topics = Topics(homeassistant.base_topic(config, replay))
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
        # What operators need to see remotely (stats.mqtt) and in the log: refused publishes, connection history.
        self.refused = 0  # refusals by the broker (a PUBACK reason code, or a connection closed on an event)
        self.refused_waiting = 0  # events refused and waiting in the outbox to be offered again
        self.refusal = ""  # the last refusal's reason, empty once the broker takes events again
        self.retry_refused_s = RETRY_REFUSED_S
        self._size_refusal = ""
        self.connected_since: float | None = None  # wall clock
        self.last_error = ""  # the last connection failure or loss, with its cause
        self.disconnects = 0
        self._lost = threading.Event()  # the connection ended: the drain forgets what was in flight
        self._lost_reason = ""
        self._refused_attempt = False
        self._refusal_log = Throttle()
        self._takeover_log = Throttle()
        # Other clients' messages on our availability and on Home Assistant's status, answered at most every
        # FOREIGN_ANSWER_S per topic (so that a flood on one never delays the other). One that comes sooner is answered
        # when the time is up, by the drain thread: the last word on the topic is always ours.
        self._foreign_lock = threading.Lock()  # paho's thread writes, the drain thread reads
        self._answered_at: dict[str, float] = {}  # topic -> monotonic time of the last answer
        self._answer_due: dict[str, float] = {}  # topic -> when its postponed answer is due (monotonic)
        self._foreign_ignored: dict[str, int] = {}  # topic -> messages folded into a later answer
        self._foreign_log: dict[str, Throttle] = {}  # topic -> once a minute, the count of folded messages
        self._overwritten_log = Throttle()
        self._retained_command_log = Throttle(5.0)  # a client that floods retained commands must not flood the log
        self._connected_at = 0.0  # monotonic
        self._ever_connected = False
        self._short_lived = 0  # connections in a row that the broker closed within SHORT_LIVED_S
        self._flap_delay = 0.0
        # A failed connection attempt is explained by a probe connection of our own. Probing every retry would
        # double what a struggling broker sees (and its log): once per outage, then once a minute for a new reason.
        self._diagnosis = Throttle()
        self._client = make_client(config, client_id or client_id_of(config))
        if logger.isEnabledFor(logging.DEBUG):
            # paho logs an ERROR on every failed reconnect; we log each outage once ourselves.
            self._client.enable_logger(logging.getLogger("paho"))
        self._client.reconnect_delay_set(min_delay=round(c.reconnect_min_s), max_delay=round(c.reconnect_max_s))
        self._jitter = random.Random()
        self._client.max_queued_messages_set(0)
        self._client.will_set(self.topics.availability, OFFLINE, qos=1, retain=True)
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_connect_fail = self._on_connect_fail
        self._client.on_publish = self._on_publish
        self._client.on_message = self._on_message
        self._drainer = threading.Thread(target=self._drain_loop, name="mqtt-drain", daemon=True)
        self.commands: CommandDispatcher | None = None  # the service's remote control (attach_commands)
        self.actions: dict[str, Callable[[], None]] = {}  # `…/<name>/set` PRESS: Home Assistant's buttons
        self.replay_sources: dict[str, str] = {}  # a replay's status keys -> its files, for its device's sensors
        self._last_state: str | None = None  # the last state said on `state_changed`
        self.configuration_url: str | None = None  # the device page, for Home Assistant's "visit device"

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        logger.info("connecting to MQTT broker %s:%d", self.host, self.port)
        # clean_start: the broker keeps no session for us; the outbox, not the broker, holds what is undelivered.
        # (3.1.1 says the same with clean_session, set when the client is made; paho refuses clean_start there.)
        v5 = self._client._protocol == mqtt.MQTTv5  # pinned paho<3
        start = {"clean_start": True} if v5 else {}
        self._client.connect_async(self.host, self.port, keepalive=self.config.mqtt.keepalive_s, **start)
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
        if name == "state" and value.get("emotion") != self._last_state:
            self._state_changed(value)

    def _state_changed(self, value: dict[str, Any]) -> None:
        """The device triggers' topic: once per new state, never retained, never repeated after a reconnect (the
        retained `state` is); a change while the broker is away is not told later, `state` has it."""
        previous, self._last_state = self._last_state, value.get("emotion")
        if self._client.is_connected():
            payload = json.dumps({**value, "previous": previous}, separators=(",", ":"))
            self._client.publish(self.topics.state_changed, payload, qos=1, retain=False)

    def attach_commands(self, controls: Any, tuning: Any = None) -> CommandDispatcher:
        """Obey `…/<name>/set` (unless mqtt.commands is false) and keep `…/<name>/state` retained; before start().
        `tuning`: the fusion settings (tuning.py), which take their `…/<setting>/set` through the same dispatcher."""
        self.commands = CommandDispatcher(
            controls,
            self.topics.base,
            self.publish_retained_topic,
            accept_commands=self.config.mqtt.commands,
            tuning=tuning,
        )
        self.commands.publish_states()
        return self.commands

    def attach_actions(self, actions: dict[str, Callable[[], None]]) -> None:
        """Run `actions[name]()` on `…/<name>/set` PRESS (Home Assistant's buttons), unless mqtt.commands is false.

        Called from paho's network thread: an action must return at once (set an event, start a thread)."""
        if self.config.mqtt.commands:
            self.actions = dict(actions)

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
            fallback = not self._ever_connected and getattr(reason_code, "value", None) in UNSUPPORTED_PROTOCOL
            if fallback and self.config.mqtt.protocol == "auto" and client._protocol == mqtt.MQTTv5:
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
            self.last_error = f"refused the connection: {reason_code}"
            self._refused_attempt = True  # paho reports the same attempt's end to on_disconnect too
            if fallback:
                _try_other_protocol(self.config, client)
            self._jittered_backoff()
            return
        self._last_refusal = ""
        self._forget_queued(client)  # before paho re-sends the previous connection's queue, right after this call
        self._diagnosis.reset()  # the next outage is explained at once
        self.connected_since = time.time()
        self._connected_at = time.monotonic()
        if not self._ever_connected and client._protocol != mqtt.MQTTv5:
            logger.warning(
                "MQTT broker %s:%d is used with MQTT 3.1.1 (mqtt.protocol %s): it cannot say when it refuses an event "
                "(an ACL, a size limit), so such an event would count as delivered; use MQTT 5 where the broker has it",
                self.host, self.port, self.config.mqtt.protocol,
            )  # fmt: skip
        self._ever_connected = True
        logger.info("MQTT connected to %s:%d", self.host, self.port)
        v5 = client._protocol == mqtt.MQTTv5  # pinned paho<3
        if self.commands is not None and self.commands.accept_commands:
            # Before `online` and the switch states: whoever sees them can send a command and be heard.
            # A broker forwards a live message with the retain flag cleared; MQTT 5's retain-as-published keeps it,
            # so a retained command is refused on arrival, not only when a reconnect replays it.
            opts = SubscribeOptions(qos=1, retainAsPublished=True) if v5 else None
            client.subscribe(self.commands.command_filter, **({"options": opts} if opts else {"qos": 1}))
        with self._foreign_lock:
            self._answer_due.clear()  # what follows is the answer to everything postponed
        self._answer(self.topics.availability)  # the retained state, then `online`
        ha = self.config.mqtt.homeassistant
        if ha.discovery:
            client.subscribe(f"{ha.prefix}/status", qos=1)
            self._announce_to_home_assistant()
        else:
            # An earlier announcement is cleared when the broker still keeps it (see _on_message), once: a clear at
            # every connect makes Home Assistant log "No device components to cleanup" each time.
            client.subscribe(homeassistant.device_topic(self.config, self.replay), qos=1)
        if not self.replay:
            # 0.1 announced one topic per entity; if the broker still keeps them, they are cleared (see _on_message).
            client.subscribe(homeassistant.legacy_filter(self.config), qos=1)
        if self.owns_availability:
            client.subscribe(self.topics.availability, qos=1)  # after our `online`: its retained copy is ours
            # Our retained state topics, to put ours back at once when another client overwrites one. No-local:
            # the broker does not echo our own publications, which would read as foreign after a quick change.
            for state_filter in (self.topics.state, self.topics.status, f"{self.topics.base}/+/state"):
                if v5:
                    client.subscribe(state_filter, options=SubscribeOptions(qos=1, noLocal=True))
                else:
                    client.subscribe(state_filter, qos=1)
        self.connected.set()
        self._wake.set()

    def _on_connect_fail(self, client: mqtt.Client, userdata: Any) -> None:
        if not self._diagnosis.ready():
            return
        reason = diagnose(self.config, self.host, self.port)  # paho does not say why; a probe of our own does
        self._failed_attempt(reason)

    def _failed_attempt(self, reason: str) -> None:
        """A connection attempt that did not get us in: one line per outage and cause, and in stats."""
        self.last_error = reason
        self._jittered_backoff()
        if reason != self._last_refusal:
            logger.error("MQTT broker %s:%d %s; retrying with back-off", self.host, self.port, reason)
            self._last_refusal = reason

    def _jittered_backoff(self) -> None:
        """paho doubles its delay up to the maximum; a fleet that lost the same broker must not come back in step,
        so the next delay is drawn between half and all of what paho would wait."""
        c = self.config.mqtt
        client = self._client
        with client._reconnect_delay_mutex:  # paho has no public way to jitter its back-off (pinned paho<3)
            current = client._reconnect_delay or c.reconnect_min_s
            nxt = min(current * 2, c.reconnect_max_s)
            client._reconnect_delay = max(c.reconnect_min_s, self._jitter.uniform(nxt / 2, nxt)) / 2

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        was_connected = self.connected.is_set()
        self.connected.clear()
        self._lost_reason = str(reason_code)
        self._lost.set()
        self._wake.set()
        if self._stop.is_set():
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
                with client._reconnect_delay_mutex:  # see _jittered_backoff
                    client._reconnect_delay = self._jitter.uniform(self._flap_delay / 2, self._flap_delay) / 2
            elif lasted >= 6 * SHORT_LIVED_S:
                self._short_lived, self._flap_delay = 0, 0.0
            # Mosquitto 2.0 closes the older connection of a client id without a DISCONNECT reason; MQTT 5 brokers
            # that send one say 0x8E. Both mean the same thing here.
            if taken or (self._short_lived >= 3 and not told):
                cid = client_id_of(self.config)
                self.last_error = (
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
                return
            self.last_error = f"connection lost: {reason_code}"
            logger.warning(
                "MQTT connection lost (%s); reconnecting with back-off, events wait in the outbox", reason_code
            )
            return
        if self._refused_attempt:
            self._refused_attempt = False
            return
        if not self._ever_connected:
            # A broker that speaks only MQTT 3.1.1 may close or ignore an MQTT 5 CONNECT: alternate until one works.
            _try_other_protocol(self.config, client)
        # Not in yet: the port took the TCP connection but the MQTT handshake ended (no CONNACK).
        if getattr(reason_code, "value", None) == 0x8D or "keep alive" in str(reason_code).lower():
            reason = (
                f"accepted the connection but sent no MQTT answer within {self.config.mqtt.keepalive_s:.0f} s "
                "(mqtt.keepalive_s); is this port an MQTT broker?"
            )
        else:
            reason = closed_without_answer(self.config)
        self._failed_attempt(reason)

    def _on_publish(self, client: mqtt.Client, userdata: Any, mid: int, reason_code: Any, properties: Any) -> None:
        # paho holds its message lock here: hand the ack to the drain thread instead of touching our state.
        # MQTT 5: a PUBACK with a failure reason code (not authorised, quota, payload) means the broker did NOT take it.
        self._acks.put((mid, str(reason_code) if getattr(reason_code, "is_failure", False) else ""))
        self._wake.set()

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        if self._action_of(msg.topic):
            self._press(msg)
        elif msg.topic == homeassistant.device_topic(self.config, self.replay) and msg.payload:
            if not self.config.mqtt.homeassistant.discovery:  # else it is our own announcement, echoed
                logger.info("mqtt.homeassistant.discovery is false: removing the device from Home Assistant")
                client.publish(msg.topic, b"", qos=1, retain=True)
        elif self.commands is not None and msg.topic.endswith("/set") and msg.topic.startswith(self.topics.base + "/"):
            if msg.retain:  # a retained command would undo every later change at each reconnect
                if self._retained_command_log.ready():
                    logger.warning(
                        "ignored a retained command on %s: publish commands without the retain flag", msg.topic
                    )
            else:
                self.commands.handle(msg.topic, msg.payload)
        elif self._is_foreign_state(msg):
            logger.log(
                logging.WARNING if self._overwritten_log.ready() else logging.DEBUG,
                "%s was set to %r by another client; putting this daemon's value back",
                msg.topic, msg.payload.decode("utf-8", "replace")[:40],
            )  # fmt: skip
            self._foreign(msg.topic)
        elif msg.topic in homeassistant.legacy_topics(self.config) and msg.payload:
            # Cleared only when seen: an empty message on them at every start makes Home Assistant warn about a
            # conflicting discovery message. Then announced again, for the entities that clearing removed.
            logger.info("clearing the per-entity Home Assistant discovery of an earlier version: %s", msg.topic)
            client.publish(msg.topic, b"", qos=1, retain=True)
            self._announce_to_home_assistant()
        elif msg.topic == f"{self.config.mqtt.homeassistant.prefix}/status" and msg.payload == b"online":
            self._foreign(msg.topic)  # Home Assistant restarted: it forgets discovered entities
        elif msg.topic == self.topics.availability and msg.payload != ONLINE.encode() and not self._stop.is_set():
            answered = self._foreign(msg.topic)
            if msg.payload == OFFLINE.encode():
                # The will of a connection of ours (the broker publishes it when it notices a lost connection, and
                # on its own shutdown): expected, not another client's doing.
                logger.log(
                    logging.INFO if answered else logging.DEBUG,
                    "%s held the will %r of an earlier connection; %s", msg.topic, OFFLINE,
                    "announced online" if answered else f"announcing online within {FOREIGN_ANSWER_S:.0f} s",
                )  # fmt: skip
            else:
                logger.log(
                    logging.WARNING if self._overwritten_log.ready() else logging.DEBUG,
                    "%s was set to %r by another client while this daemon runs; announcing online again",
                    msg.topic, msg.payload.decode("utf-8", "replace")[:40],
                )  # fmt: skip

    def _action_of(self, topic: str) -> str:
        """The button a topic presses (`…/<name>/set` for a registered action), or ''."""
        prefix = self.topics.base + "/"
        name = topic[len(prefix) : -len("/set")] if topic.startswith(prefix) and topic.endswith("/set") else ""
        return name if name in self.actions else ""

    def _press(self, msg: mqtt.MQTTMessage) -> None:
        name = self._action_of(msg.topic)
        if msg.retain:  # a retained press would run again at every reconnect
            if self._retained_command_log.ready():
                logger.warning("ignored a retained command on %s: publish commands without the retain flag", msg.topic)
        elif msg.payload.strip().upper() != homeassistant.PRESS.encode():
            logger.warning(
                "ignored %r on %s: expected %s", msg.payload.decode("utf-8", "replace")[:40], msg.topic,
                homeassistant.PRESS,
            )  # fmt: skip
        else:
            logger.info("%s pressed (from mqtt)", name.replace("_", " "))
            self.actions[name]()

    def _is_foreign_state(self, msg: mqtt.MQTTMessage) -> bool:
        """Another client's value on one of the retained topics this service owns (`state`, `status`, the switches'
        `…/<name>/state`): the page, MQTT and Home Assistant must show one value, ours."""
        if not self.owns_availability or self._stop.is_set() or msg.topic == self.topics.availability:
            return False
        ours = self._retained.get(msg.topic)
        return ours is not None and msg.payload != ours.encode()

    def _foreign(self, topic: str) -> bool:
        """Answer a message on `topic` now (True), or when FOREIGN_ANSWER_S has passed since the last answer there: a
        client that floods it costs neither the log nor the broker, and is still answered after its last message."""
        now = time.monotonic()
        with self._foreign_lock:
            last = self._answered_at.get(topic)
            if last is not None and now - last < FOREIGN_ANSWER_S:
                self._answer_due[topic] = last + FOREIGN_ANSWER_S
                self._foreign_ignored[topic] = ignored = self._foreign_ignored.get(topic, 0) + 1
                if self._foreign_log.setdefault(topic, Throttle()).ready():
                    logger.info(
                        "other clients keep publishing on %s (%d folded into later answers so far); answering at "
                        "most every %.0f s", topic, ignored, FOREIGN_ANSWER_S,
                    )  # fmt: skip
                return False
            self._answered_at[topic] = now
        self._answer(topic)
        return True

    def _answer_postponed(self, now: float) -> None:
        """Drain thread: give the answers that `_foreign` postponed and that are due."""
        with self._foreign_lock:
            due = [t for t, at in self._answer_due.items() if at <= now]
            for t in due:
                del self._answer_due[t]
                self._answered_at[t] = now
        for t in due:
            self._answer(t)

    def _answer(self, topic: str) -> None:
        if topic == self.topics.availability:
            if self._stop.is_set():
                return  # stopping: `stopped` is the last word
            # The retained topics first: Home Assistant shows an entity's last value the moment it reads `online`,
            # and that must be this run's `state` (`starting` at first), not what a previous run left there.
            for retained, payload in list(self._retained.items()):
                self._client.publish(retained, payload, qos=1, retain=True)
            self._client.publish(topic, ONLINE, qos=1, retain=True)
        elif topic in self._retained:  # another client's value on a retained topic of ours
            if not self._stop.is_set():
                self._client.publish(topic, self._retained[topic], qos=1, retain=True)
        else:
            self._announce_to_home_assistant()

    # ------------------------------------------------------------------ outbox drain (own thread)

    def _drain_loop(self) -> None:
        inflight: dict[int, int] = {}  # paho mid -> event seq
        handed = 0  # highest seq handed to paho since the connection began
        retry: dict[int, float] = {}  # seq refused by the broker -> when to offer it again (monotonic)
        # After a connection that ended with events in flight: hand over one at a time until one is acknowledged,
        # so that an event the broker closes the connection for (over its message size limit) is found.
        careful = False
        dropped_for: set[int] = set()  # refused seqs that the broker closed the connection for
        budget, last = 0.0, time.monotonic()
        failures = Throttle()
        while not self._stop.is_set():
            self._wake.wait(0.2)
            self._wake.clear()
            try:
                now = time.monotonic()
                if self._answer_due and self.connected.is_set():
                    self._answer_postponed(now)
                if self._lost.is_set():
                    self._lost.clear()
                    if inflight:
                        if careful and len(inflight) == 1:
                            seq = next(iter(inflight.values()))
                            size = sum(len(p.payload) for p in self.outbox.get([seq]))
                            self._refuse(
                                [seq], f"the broker closed the connection ({self._lost_reason}) each time it got this "
                                f"{size}-byte event: over its message size limit?", retry, now + RETRY_DROPPED_S
                            )  # fmt: skip
                            dropped_for.add(seq)
                            self._size_refusal = self.refusal
                        careful = True
                    inflight.clear()
                    handed = 0  # everything unacknowledged is offered again from the outbox
                acked: list[int] = []
                refused: dict[str, list[int]] = {}
                while True:
                    try:
                        mid, failure = self._acks.get_nowait()
                    except queue.Empty:
                        break
                    seq = inflight.pop(mid, None)
                    if seq is None:
                        continue
                    if failure:
                        refused.setdefault(failure, []).append(seq)
                    else:
                        acked.append(seq)
                for reason, seqs in refused.items():
                    self._refuse(seqs, f"PUBACK reason: {reason}", retry, now + self.retry_refused_s)
                if acked:
                    careful = False
                    self.outbox.ack_many(acked)
                    self.published += len(acked)
                    if self.refusal and not refused:
                        # The broker takes events again (an ACL fixed): offer the ones it refused by PUBACK now.
                        for s in retry:
                            if s not in dropped_for:
                                retry[s] = 0.0
                        if not dropped_for or "size limit" not in self.refusal:
                            self._delivery_changed(self._size_refusal if dropped_for else "")
                for s in [s for s in dropped_for if s not in retry]:
                    dropped_for.discard(s)
                if not retry and self.refusal:
                    self._delivery_changed("")
                self.refused_waiting = len(retry)
                self.outbox.persist_due()
                # Token bucket: a long backlog drains at drain_rate_per_s, with a burst of one second's worth.
                budget = min(self.drain_rate_per_s, budget + (now - last) * self.drain_rate_per_s)
                last = now
                room = min(1 - len(inflight) if careful else INFLIGHT - len(inflight), int(budget))
                if not self.connected.is_set() or room <= 0:
                    continue
                due = sorted(s for s, t in retry.items() if t <= now)
                if self.refusal:
                    due = due[:1]  # while refusals go on, one probe at a time
                for item in self.outbox.get(due[:room]):
                    del retry[item.seq]
                    self._hand(item.seq, item.payload, inflight)
                    budget -= 1
                    room -= 1
                for s in due:
                    if s in retry and not self.outbox.get([s]):
                        del retry[s]  # dropped by the outbox bounds meanwhile
                if room <= 0:
                    continue
                for item in self.outbox.pending(handed, room + len(retry)):
                    if item.seq in retry or item.seq in inflight.values():
                        handed = item.seq  # offered again from `retry`, not in order
                        continue
                    if room <= 0:
                        break
                    handed = item.seq
                    self._hand(item.seq, item.payload, inflight)
                    budget -= 1
                    room -= 1
            except Exception as exc:  # e.g. the outbox locked by another process: retry, never stop publishing
                if failures.ready():
                    logger.error("publishing from the outbox failed (%s); retrying", exc)
                self._stop.wait(1.0)

    def _hand(self, seq: int, payload: str, inflight: dict[int, int]) -> None:
        info = self._client.publish(self.topics.events, payload, qos=1, retain=False)
        inflight[info.mid] = seq

    @staticmethod
    def _forget_queued(client: mqtt.Client) -> None:
        """On a new connection, take what the previous one left out of paho's resend queue: events are offered
        again from the outbox, and availability, retained topics and discovery are published afresh on every
        connect. A message the broker closes the connection for (over its message size limit) must not be re-sent
        by paho forever. Called from on_connect: paho walks that queue right after it returns, never during."""
        with client._out_message_mutex:  # no public API for this in paho 2 (pinned <3); an RLock
            client._out_messages.clear()
            client._inflight_messages = 0

    def _refuse(self, seqs: list[int], reason: str, retry: dict[int, float], when: float) -> None:
        """The broker did not take these: they stay in the outbox (written down), and are offered again later."""
        self.outbox.persist(seqs)
        for s in seqs:
            retry[s] = when
        self.refused += len(seqs)
        self.refused_waiting = len(retry)
        if self.refusal != reason:
            self._delivery_changed(reason)
        if self._refusal_log.ready():
            logger.error(
                "MQTT broker %s:%d refused %d event(s) on %s (%s): is client %r allowed to publish there (the "
                "broker's ACL, message_size_limit)? They stay in the outbox and are offered again; %d waiting "
                "(stats.mqtt.events_refused)",
                self.host, self.port, len(seqs), self.topics.events, reason, client_id_of(self.config), len(retry),
            )  # fmt: skip

    def _delivery_changed(self, refusal: str) -> None:
        self.refusal = refusal  # the daemon's main loop shows it in `status` (retained) while it lasts

    def stats(self) -> dict[str, Any]:
        """The session's part of `stats`: connection state and history, refused events."""
        since = self.connected_since
        return {
            "connected": self.connected.is_set(),
            "connected_since": _iso(since) if since else None,
            "disconnects": self.disconnects,
            "last_error": self.last_error or None,
            "events_refused": self.refused,
            "events_refused_waiting": self.refused_waiting,
            "last_refusal": self.refusal or None,
        }

    # ------------------------------------------------------------------ helpers

    def _announce_to_home_assistant(self) -> None:
        """The device's discovery message (edge_daemon/homeassistant.py); nothing when discovery is off."""
        if not self.config.mqtt.homeassistant.discovery:
            return
        topic = homeassistant.device_topic(self.config, self.replay)
        sources = self.replay_sources if self.replay else None
        payload = homeassistant.discovery_payload(self.config, self.configuration_url, sources)
        self._client.publish(topic, json.dumps(payload, separators=(",", ":")), qos=1, retain=True)


def _iso(t: float) -> str:
    from datetime import datetime, timezone

    return datetime.fromtimestamp(t, timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def client_id_of(config: Config) -> str:
    return config.mqtt.client_id or f"emotion-edge-{config.device_id}"


def make_client(config: Config, client_id: str) -> mqtt.Client:
    """A paho client with the configured credentials and TLS (UserError if the certificate files are unusable)."""
    c = config.mqtt
    # MQTT 5: a broker says in the PUBACK when it did not take a message (an ACL, a quota); 3.1.1 acknowledges it.
    # `auto` starts with 5; MqttSession switches to 3.1.1 while a broker refuses it (see _try_other_protocol).
    protocol = mqtt.MQTTv311 if str(c.protocol) == "3.1.1" else mqtt.MQTTv5
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=protocol)
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


def _try_other_protocol(config: Config, client: mqtt.Client) -> None:
    """mqtt.protocol auto, never connected yet: the next attempt uses the other MQTT version."""
    if config.mqtt.protocol != "auto":
        return
    client._protocol = mqtt.MQTTv311 if client._protocol == mqtt.MQTTv5 else mqtt.MQTTv5  # pinned paho<3
    client._clean_session = True  # what paho reads for 3.1.1 (it was created for MQTT 5, where it is None)
    logger.info("MQTT: trying protocol %s next", "3.1.1" if client._protocol == mqtt.MQTTv311 else "5")


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
    client.on_connect = lambda c, userdata, flags, reason_code, properties: answers.put(("connack", reason_code))
    client.on_disconnect = lambda c, userdata, flags, reason_code, properties: answers.put(("closed", reason_code))
    try:
        client.connect(host, port, keepalive=10)
    except (OSError, ValueError):  # TLS failures are OSErrors too
        return diagnose(config, host, port)
    client.loop_start()
    try:
        kind, reason = answers.get(timeout=timeout_s)
    except queue.Empty:
        return f"accepted the connection but sent no MQTT answer within {timeout_s:.0f} s; is this port an MQTT broker?"
    finally:
        client.disconnect()
        client.loop_stop()
    if kind == "closed":
        return closed_without_answer(config)
    if reason.is_failure and getattr(reason, "value", None) in UNSUPPORTED_PROTOCOL and config.mqtt.protocol == "auto":
        # What the daemon does next: try MQTT 3.1.1 (NATS, RabbitMQ).
        v311 = dataclasses.replace(config, mqtt=dataclasses.replace(config.mqtt, protocol="3.1.1"))
        return probe_broker(v311, host, port, timeout_s)
    return f"refused the connection: {reason}" if reason.is_failure else None


def closed_without_answer(config: Config) -> str:
    """The port took the TCP connection and closed it before any CONNACK."""
    if config.mqtt.tls.enabled:
        return "closed the connection during the MQTT handshake; check mqtt.tls and the broker's log"
    return (
        "closed the connection without answering MQTT; is it a TLS port (set mqtt.tls.enabled) or not an MQTT "
        "broker? The broker's log says why"
    )


def resolve_broker(config: Config) -> tuple[str, int]:
    return (config.mqtt.host or "localhost", config.mqtt.port)
