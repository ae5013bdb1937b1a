"""Back-off and status reporting shared by the capture sources."""

from __future__ import annotations

import logging
import threading

logger = logging.getLogger(__name__)


class SourceStatus:
    """`online`, `offline`, `ended` or `disabled`; logs each change once instead of once per retry."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.state = "offline"
        self.reason = ""
        self.failures = 0
        self._lock = threading.Lock()

    def online(self) -> None:
        with self._lock:
            if self.state != "online":
                logger.info("%s online", self.name)
            self.state, self.reason = "online", ""

    def offline(self, reason: str) -> None:
        with self._lock:
            self.failures += 1
            if self.state != "offline" or self.reason != reason:
                logger.warning("%s offline: %s; retrying with back-off", self.name, reason)
            self.state, self.reason = "offline", reason

    def set(self, state: str) -> None:
        with self._lock:
            self.state = state

    def snapshot(self) -> dict[str, object]:
        with self._lock:
            return {"state": self.state, "reason": self.reason, "failures": self.failures}


class Backoff:
    """Exponential delay between `lo` and `hi` seconds, reset after a success."""

    def __init__(self, lo: float, hi: float) -> None:
        self.lo, self.hi = lo, hi
        self.delay = lo

    def wait(self, stop: threading.Event) -> None:
        stop.wait(self.delay)
        self.delay = min(self.hi, self.delay * 2)

    def reset(self) -> None:
        self.delay = self.lo
