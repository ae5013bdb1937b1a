"""What arrives from the broker, and who answers it.

`…/<name>/set` is a command (commands.py, through the dispatcher the daemon attaches) or a button press (an action
the daemon registered: Home Assistant's buttons); a retained one is never obeyed, whenever it arrives (on MQTT 5;
an MQTT 3.1.1 broker marks only what it replays at subscribe time: docs/mqtt-state.md), and saying so is throttled. The rest are messages on the device's own topics: another client's value on a retained topic, on
`availability`, Home Assistant coming back online, discovery messages to clear; presence.py answers those.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.subscribeoptions import SubscribeOptions

from .. import homeassistant
from ..commands import CommandDispatcher
from ..config import Config
from ..throttle import Throttle
from .presence import FOREIGN_ANSWER_S, Presence
from .signals import Signals
from .topics import OFFLINE, ONLINE, Topics

logger = logging.getLogger(__name__)


class Incoming:
    """paho's on_message for one device: commands, buttons, and what presence must answer."""

    def __init__(self, config: Config, topics: Topics, presence: Presence, signals: Signals) -> None:
        self.config = config
        self.topics = topics
        self.presence = presence
        self.signals = signals
        self.commands: CommandDispatcher | None = None  # the service's remote control (MqttSession.attach_commands)
        self.actions: dict[str, Callable[[], None]] = {}  # `…/<name>/set` PRESS: Home Assistant's buttons
        self._overwritten_log = Throttle()
        self._retained_command_log = Throttle(5.0)  # a client that floods retained commands must not flood the log

    def subscribe(self, client: mqtt.Client, v5: bool) -> None:
        """A new connection: listen to commands (before `online` and the switch states: whoever sees them can send a
        command and be heard)."""
        if self.commands is not None and self.commands.accept_commands:
            # A broker forwards a live message with the retain flag cleared; MQTT 5's retain-as-published keeps it,
            # so a retained command is refused on arrival, not only when a reconnect replays it.
            opts = SubscribeOptions(qos=1, retainAsPublished=True) if v5 else None
            client.subscribe(self.commands.command_filter, **({"options": opts} if opts else {"qos": 1}))

    def on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        """paho's network thread. An action or a command must return at once (set an event, start a thread)."""
        if self._action_of(msg.topic):
            self._press(msg)
        elif msg.topic == homeassistant.device_topic(self.config, self.presence.replay) and msg.payload:
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
        elif self.presence.is_foreign_state(msg):
            logger.log(
                logging.WARNING if self._overwritten_log.ready() else logging.DEBUG,
                "%s was set to %r by another client; putting this daemon's value back",
                msg.topic, msg.payload.decode("utf-8", "replace")[:40],
            )  # fmt: skip
            self.presence.foreign(msg.topic)
        elif msg.topic in homeassistant.legacy_topics(self.config) and msg.payload:
            # Cleared only when seen: an empty message on them at every start makes Home Assistant warn about a
            # conflicting discovery message. Then announced again, for the entities that clearing removed.
            logger.info("clearing the per-entity Home Assistant discovery of an earlier version: %s", msg.topic)
            client.publish(msg.topic, b"", qos=1, retain=True)
            self.presence.announce()
        elif msg.topic == f"{self.config.mqtt.homeassistant.prefix}/status" and msg.payload == b"online":
            self.presence.foreign(msg.topic)  # Home Assistant restarted: it forgets discovered entities
        elif (
            msg.topic == self.topics.availability
            and msg.payload != ONLINE.encode()
            and not self.signals.stopping.is_set()
        ):
            answered = self.presence.foreign(msg.topic)
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
