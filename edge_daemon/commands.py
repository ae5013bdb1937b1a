"""Remote control over MQTT: `…/<name>/set` commands applied to the shared Controls, retained `…/<name>/state` echoes.

Frigate's shape: `<topic_prefix>/<device_id>/{analysis,camera,microphone}/set` takes `ON` or `OFF`; the resulting
switch is published, retained, on `…/<name>/state` whatever changed it (this topic, the device page, a restart that
read the saved choice). The dispatcher knows Controls and a publish function, not paho: the broker session hands it
each command message, and Controls stays the one place where a switch takes effect.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from .control import NAMES, Controls
from .throttle import Throttle

logger = logging.getLogger(__name__)

ON, OFF = "ON", "OFF"
Publish = Callable[[str, str], None]  # (topic, payload): retained, QoS 1


class CommandDispatcher:
    """Applies `…/<name>/set` payloads to Controls and echoes every switch's state."""

    def __init__(self, controls: Controls, base: str, publish: Publish, *, accept_commands: bool = True) -> None:
        self.controls, self.base, self.publish = controls, base.rstrip("/"), publish
        self.accept_commands = accept_commands
        self._garbage_log = Throttle(5.0)  # a client spamming garbage must not flood the journal
        controls.subscribe(self._echo)

    @property
    def command_filter(self) -> str:
        return f"{self.base}/+/set"

    def state_topic(self, name: str) -> str:
        return f"{self.base}/{name}/state"

    def publish_states(self) -> None:
        """Every switch's state, e.g. after a (re)connect."""
        self._echo(self.controls.get())

    def handle(self, topic: str, payload: bytes) -> bool:
        """One message on the command filter; returns whether it switched something. Garbage is logged and ignored."""
        name = topic[len(self.base) + 1 : -len("/set")] if topic.startswith(self.base + "/") else ""
        if not self.accept_commands or not topic.endswith("/set"):
            return False
        text = payload.decode("utf-8", "replace").strip()
        if name not in NAMES or text.upper() not in (ON, OFF):
            if self._garbage_log.ready():
                logger.warning(
                    "ignored %r on %s: expected ON or OFF on %s", text[:40], topic, ", ".join(self._set_topics())
                )
            return False
        changed = self.controls.set(name, text.upper() == ON, source="mqtt")
        if not changed:
            self._echo(self.controls.get())  # a client that missed the state gets it again
        return changed

    def _set_topics(self) -> list[str]:
        return [f"{self.base}/{n}/set" for n in NAMES]

    def _echo(self, _snapshot: dict[str, bool]) -> None:
        # The current switches, not the snapshot handed over: two doors switching at once call listeners in either
        # order, and the retained states must end as Controls ends.
        for name, on in self.controls.get().items():
            self.publish(self.state_topic(name), ON if on else OFF)
