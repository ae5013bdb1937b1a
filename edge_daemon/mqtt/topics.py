"""The device's topic names: the one place they are spelled (see the package's docstring for what each carries)."""

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
