"""Presence: what the device says about itself, and that the last word on it stays ours.

`availability` (`online` on every connect, before it the retained topics; `stopped` at a clean stop), the retained
topics the daemon hands over (`state`, `status`, the switches' `…/<name>/state`: kept, and said again after every
reconnect), `state_changed` once per change, `stats`, and Home Assistant's discovery (homeassistant.py). When another
client writes on one of these (a replay's `stopped`, an old will, a stray retained value), this device's value is
put back, at most every FOREIGN_ANSWER_S per topic.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.subscribeoptions import SubscribeOptions

from .. import homeassistant
from ..config import Config
from ..throttle import Throttle
from .signals import Signals
from .topics import ONLINE, STOPPED, Topics

logger = logging.getLogger(__name__)

FOREIGN_ANSWER_S = 5.0  # another client's message on our availability or Home Assistant's status: answered this often


class Presence:
    """The device's retained topics and its Home Assistant device, on one paho client."""

    def __init__(
        self,
        config: Config,
        client: mqtt.Client,
        topics: Topics,
        signals: Signals,
        replay: bool = False,
        owns_availability: bool = True,
    ) -> None:
        self.config = config
        self.client = client
        self.topics = topics
        self.signals = signals
        self.replay = replay
        # The service owns its device's availability: when anything else leaves another value there (a replay's
        # `stopped`, the will of an older process of this device), it says `online` again with its retained topics.
        self.owns_availability = owns_availability
        self._retained: dict[str, str] = {}  # topic -> payload, published again after every reconnect
        self._last_state: str | None = None  # the last state said on `state_changed`
        self.configuration_url: str | None = None  # the device page, for Home Assistant's "visit device"
        self.replay_sources: dict[str, str] = {}  # a replay's status keys -> its files, for its device's sensors
        # Other clients' messages on our availability and on Home Assistant's status, answered at most every
        # FOREIGN_ANSWER_S per topic (so that a flood on one never delays the other). One that comes sooner is answered
        # when the time is up, by the drain thread (`tick`): the last word on the topic is always ours.
        self._foreign_lock = threading.Lock()  # paho's thread writes, the drain thread reads
        self._answered_at: dict[str, float] = {}  # topic -> monotonic time of the last answer
        self._answer_due: dict[str, float] = {}  # topic -> when its postponed answer is due (monotonic)
        self._foreign_ignored: dict[str, int] = {}  # topic -> messages folded into a later answer
        self._foreign_log: dict[str, Throttle] = {}  # topic -> once a minute, the count of folded messages

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
        if self.client.is_connected():
            payload = json.dumps({**value, "previous": previous}, separators=(",", ":"))
            self.client.publish(self.topics.state_changed, payload, qos=1, retain=False)

    def publish_retained_topic(self, topic: str, payload: str) -> None:
        """Any retained topic of this device, kept and published again after every reconnect."""
        self._retained[topic] = payload
        # paho's own flag, not `connected`: that is set at the end of Connection.on_connect, after on_connected has
        # re-published what _retained held, and a value stored in between would wait for the next reconnect. Twice is harmless.
        if self.client.is_connected():
            self.client.publish(topic, payload, qos=1, retain=True)

    def publish_stats(self, stats: dict[str, Any]) -> None:
        """The daemon's counters (QoS 0, not kept): nothing while the broker is away."""
        if self.signals.connected.is_set():
            self.client.publish(self.topics.stats, json.dumps(stats, separators=(",", ":")), qos=0)

    def on_connected(self, client: mqtt.Client, v5: bool) -> None:
        """A new connection (paho's thread, before `connected` is set): say who we are, listen to our topics."""
        with self._foreign_lock:
            self._answer_due.clear()  # what follows is the answer to everything postponed
        self._answer(self.topics.availability)  # the retained state, then `online`
        ha = self.config.mqtt.homeassistant
        if ha.discovery:
            client.subscribe(f"{ha.prefix}/status", qos=1)
            self.announce()
        else:
            # An earlier announcement is cleared when the broker still keeps it (see incoming.py), once: a clear at
            # every connect makes Home Assistant log "No device components to cleanup" each time.
            client.subscribe(homeassistant.device_topic(self.config, self.replay), qos=1)
        if not self.replay:
            # 0.1 announced one topic per entity; if the broker still keeps them, they are cleared (see incoming.py).
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

    def say_stopped(self, deadline: float) -> None:
        """A clean stop: `stopped` as the last word, waited for until `deadline` (monotonic), 0.2 s at least."""
        info = self.client.publish(self.topics.availability, STOPPED, qos=1, retain=True)
        try:
            info.wait_for_publish(timeout=max(0.2, deadline - time.monotonic()))
        except (RuntimeError, ValueError):
            pass

    def tick(self, now: float) -> None:
        """The drain thread, every pass: give the answers that `foreign` postponed, once they are due."""
        if self._answer_due and self.signals.connected.is_set():
            self._answer_postponed(now)

    def announce(self) -> None:
        """The device's discovery message (edge_daemon/homeassistant.py); nothing when discovery is off."""
        if not self.config.mqtt.homeassistant.discovery:
            return
        topic = homeassistant.device_topic(self.config, self.replay)
        sources = self.replay_sources if self.replay else None
        payload = homeassistant.discovery_payload(self.config, self.configuration_url, sources)
        self.client.publish(topic, json.dumps(payload, separators=(",", ":")), qos=1, retain=True)

    def is_foreign_state(self, msg: mqtt.MQTTMessage) -> bool:
        """Another client's value on one of the retained topics this service owns (`state`, `status`, the switches'
        `…/<name>/state`): the page, MQTT and Home Assistant must show one value, ours."""
        if not self.owns_availability or self.signals.stopping.is_set() or msg.topic == self.topics.availability:
            return False
        ours = self._retained.get(msg.topic)
        return ours is not None and msg.payload != ours.encode()

    def foreign(self, topic: str) -> bool:
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
        """Drain thread: give the answers that `foreign` postponed and that are due."""
        with self._foreign_lock:
            due = [t for t, at in self._answer_due.items() if at <= now]
            for t in due:
                del self._answer_due[t]
                self._answered_at[t] = now
        for t in due:
            self._answer(t)

    def _answer(self, topic: str) -> None:
        if topic == self.topics.availability:
            if self.signals.stopping.is_set():
                return  # stopping: `stopped` is the last word
            # The retained topics first: Home Assistant shows an entity's last value the moment it reads `online`,
            # and that must be this run's `state` (`starting` at first), not what a previous run left there.
            for retained, payload in list(self._retained.items()):
                self.client.publish(retained, payload, qos=1, retain=True)
            self.client.publish(topic, ONLINE, qos=1, retain=True)
        elif topic in self._retained:  # another client's value on a retained topic of ours
            if not self.signals.stopping.is_set():
                self.client.publish(topic, self._retained[topic], qos=1, retain=True)
        else:
            self.announce()
