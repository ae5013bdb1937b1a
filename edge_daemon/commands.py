"""Remote control over MQTT: `…/<name>/set` commands applied to the shared Controls, retained `…/<name>/state` echoes.

Frigate's shape: `<topic_prefix>/<device_id>/{analysis,camera,microphone}/set` takes `ON` or `OFF`; the resulting
switch is published, retained, on `…/<name>/state` whatever changed it (this topic, the device page, a restart that
read the saved choice). The dispatcher knows Controls and a publish function, not paho: the broker session hands it
each command message, and Controls stays the one place where a switch takes effect.

The fusion settings (tuning.py) come through the same door: `…/<setting>/set` takes a number or a method's name,
and the value in force is published, retained, on `…/<setting>/state`, also after a value is refused.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from .control import NAMES, Controls
from .throttle import Throttle
from .tuning import NAMES as SETTINGS
from .tuning import SettingError, Tuning

logger = logging.getLogger(__name__)

ON, OFF = "ON", "OFF"
Publish = Callable[[str, str], None]  # (topic, payload): retained, QoS 1


class CommandDispatcher:
    """Applies `…/<name>/set` payloads to Controls and echoes every switch's state."""

    def __init__(
        self,
        controls: Controls,
        base: str,
        publish: Publish,
        *,
        accept_commands: bool = True,
        tuning: Tuning | None = None,
    ) -> None:
        self.controls, self.base, self.publish = controls, base.rstrip("/"), publish
        self.accept_commands = accept_commands
        self.tuning = tuning
        self._garbage_log = Throttle(5.0)  # a client spamming garbage must not flood the journal
        controls.subscribe(self._echo)
        if tuning is not None:
            tuning.subscribe(self._echo_settings)

    @property
    def command_filter(self) -> str:
        return f"{self.base}/+/set"

    def state_topic(self, name: str) -> str:
        return f"{self.base}/{name}/state"

    def publish_states(self) -> None:
        """Every switch's and setting's state, e.g. after a (re)connect."""
        self._echo(self.controls.get())
        self._echo_settings({})

    def handle(self, topic: str, payload: bytes) -> bool:
        """One message on the command filter; returns whether it switched something. Garbage is logged and ignored."""
        name = topic[len(self.base) + 1 : -len("/set")] if topic.startswith(self.base + "/") else ""
        if not self.accept_commands or not topic.endswith("/set"):
            return False
        text = payload.decode("utf-8", "replace").strip()
        if self.tuning is not None and name in SETTINGS:
            return self._set_setting(name, text)
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

    def _set_setting(self, name: str, text: str) -> bool:
        assert self.tuning is not None
        try:
            changed = self.tuning.set_text(name, text, source="mqtt")  # a refusal is logged there, once
        except SettingError:
            changed = False
        if not changed:
            self._echo_settings({})  # the value in force, for a client that showed the refused or missed one
        return changed

    def _set_topics(self) -> list[str]:
        return [f"{self.base}/{n}/set" for n in NAMES]

    def _echo_settings(self, _snapshot: dict[str, object]) -> None:
        if self.tuning is not None:
            for name, value in self.tuning.get().items():
                self.publish(self.state_topic(name), str(value))

    def _echo(self, _snapshot: dict[str, bool]) -> None:
        # The current switches, not the snapshot handed over: two doors switching at once call listeners in either
        # order, and the retained states must end as Controls ends.
        for name, on in self.controls.get().items():
            self.publish(self.state_topic(name), ON if on else OFF)
