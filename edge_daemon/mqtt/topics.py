"""The device's own topics (availability, events, state, state_changed, stats, status), spelled here once (the
package's docstring says what each carries). The per-switch `…/<name>/set|state` topics are built by commands.py and
Home Assistant's discovery topics by homeassistant.py, each from the same base."""

from __future__ import annotations

from dataclasses import dataclass

ONLINE, OFFLINE, STOPPED = "online", "offline", "stopped"  # what `availability` says


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
