"""MqttSession: one device's broker session, wired from its parts (the package's docstring has the map).

The daemon, a replay and the fleet simulation talk to this class only; the parts never import it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from .. import homeassistant
from ..commands import CommandDispatcher
from ..config import Config, node_name
from ..outbox import Outbox
from .client import client_id_of, make_client
from .connection import Connection
from .delivery import Delivery
from .incoming import Incoming
from .presence import Presence
from .signals import Signals
from .topics import Topics


class MqttSession:
    """One broker connection that reconnects by itself (paho's loop thread) plus a thread that drains the outbox.

    `host`, `port`: the broker, or the first node of a clustered one; `failover`: its other nodes, tried in turn when
    the one in use cannot be reached, refuses or drops the connection (mqtt.hosts)."""

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
        failover: Sequence[tuple[str, int]] = (),
    ) -> None:
        self.config = config
        # A replay never speaks as the service: its topics live under <base>/replay/ and it is a device of its own in
        # Home Assistant (homeassistant.py), so that nothing it says reaches the service's entities or automations.
        self.replay = replay
        self.topics = Topics(homeassistant.base_topic(config, replay))
        self.drain_rate_per_s = drain_rate_per_s
        self.owns_availability = owns_availability
        self.signals = Signals()
        self.connected = self.signals.connected
        client_id = client_id or client_id_of(config)  # a replay's own id, so that its log lines name the right client
        self._client = client = make_client(config, client_id)
        self.presence = Presence(config, client, self.topics, self.signals, replay, owns_availability)
        self.incoming = Incoming(config, self.topics, self.presence, self.signals)
        self.delivery = Delivery(
            outbox,
            client,
            self.topics.events,
            self.signals,
            drain_rate_per_s,
            broker=node_name(host, port),
            client_id=client_id,
            tick=self.presence.tick,
        )
        self.connection = Connection(
            config, client, [(host, port), *failover], self.signals, self.topics.availability, on_up=self._on_up
        )
        client.on_publish = self.delivery.on_publish
        client.on_message = self.incoming.on_message
        self._drainer = threading.Thread(target=self.delivery.run, name="mqtt-drain", daemon=True)

    def _on_up(self, client: Any, v5: bool) -> None:
        self.delivery.broker = self.connection.where()  # for its log line about refusals: the node that refused
        self.incoming.subscribe(client, v5)  # commands first: whoever sees `online` can send one and be heard
        self.presence.on_connected(client, v5)

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        self.connection.start()
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
        self.signals.stopping.set()
        self.signals.wake.set()
        self._drainer.join(timeout=2)
        if self.connected.is_set():
            self.presence.say_stopped(deadline)
        self.connection.close()

    def ensure_network_loop(self) -> None:
        """Start paho's network thread again if an unexpected error ended it (its traceback is logged)."""
        self.connection.ensure_network_loop()

    # ------------------------------------------------------------------ what the daemon publishes

    def notify_event(self) -> None:
        """An event was appended to the outbox: drain now rather than at the next poll."""
        self.signals.wake.set()

    def publish_retained(self, name: str, value: dict[str, Any]) -> None:
        """`state` or `status`: kept, and published again after every reconnect (a broker may have lost it)."""
        self.presence.publish_retained(name, value)

    def publish_retained_topic(self, topic: str, payload: str) -> None:
        """Any retained topic of this device, kept and published again after every reconnect."""
        self.presence.publish_retained_topic(topic, payload)

    def publish_stats(self, stats: dict[str, Any]) -> None:
        self.presence.publish_stats(stats)

    def attach_commands(self, controls: Any, tuning: Any = None) -> CommandDispatcher:
        """Obey `…/<name>/set` (unless mqtt.commands is false) and keep `…/<name>/state` retained; before start().
        `tuning`: the fusion settings (tuning.py), which take their `…/<setting>/set` through the same dispatcher."""
        commands = CommandDispatcher(
            controls,
            self.topics.base,
            self.presence.publish_retained_topic,
            accept_commands=self.config.mqtt.commands,
            tuning=tuning,
        )
        self.incoming.commands = commands
        commands.publish_states()
        return commands

    def attach_actions(self, actions: dict[str, Callable[[], None]]) -> None:
        """Run `actions[name]()` on `…/<name>/set` PRESS (Home Assistant's buttons), unless mqtt.commands is false.

        Called from paho's network thread: an action must return at once (set an event, start a thread)."""
        if self.config.mqtt.commands:
            self.incoming.actions = dict(actions)

    # ------------------------------------------------------------------ what the daemon reads and sets

    @property
    def outbox(self) -> Outbox:
        return self.delivery.outbox

    @outbox.setter
    def outbox(self, outbox: Outbox) -> None:
        self.delivery.outbox = outbox  # a reopened outbox (the tests' restart): delivery drains that one

    @property
    def commands(self) -> CommandDispatcher | None:
        return self.incoming.commands  # the service's remote control (attach_commands)

    @property
    def configuration_url(self) -> str | None:
        return self.presence.configuration_url  # the device page, for Home Assistant's "visit device"

    @configuration_url.setter
    def configuration_url(self, url: str | None) -> None:
        self.presence.configuration_url = url

    @property
    def replay_sources(self) -> dict[str, str]:
        return self.presence.replay_sources  # a replay's status keys -> its files, for its device's sensors

    @replay_sources.setter
    def replay_sources(self, sources: dict[str, str]) -> None:
        self.presence.replay_sources = sources

    @property
    def published(self) -> int:
        return self.delivery.published

    @property
    def refused(self) -> int:
        return self.delivery.refused

    @property
    def refused_waiting(self) -> int:
        return self.delivery.refused_waiting

    @property
    def refusal(self) -> str:
        """The last refusal's reason while it lasts (the daemon shows it in `status`), else ''."""
        return self.delivery.refusal

    @property
    def retry_refused_s(self) -> float:
        return self.delivery.retry_refused_s

    @retry_refused_s.setter
    def retry_refused_s(self, seconds: float) -> None:
        self.delivery.retry_refused_s = seconds

    @property
    def host(self) -> str:
        return self.connection.host  # the node in use, or the one being tried

    @property
    def port(self) -> int:
        return self.connection.port

    @property
    def last_error(self) -> str:
        return self.connection.last_error  # the last connection failure or loss, with its cause

    @property
    def connected_since(self) -> float | None:
        return self.connection.connected_since

    @property
    def disconnects(self) -> int:
        return self.connection.disconnects

    def stats(self) -> dict[str, Any]:
        """The session's part of `stats`: connection state and history, refused events."""
        return {**self.connection.stats(), **self.delivery.stats()}
