"""Back-off and status reporting shared by the capture sources."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

logger = logging.getLogger(__name__)


PAUSE_POLL_S = 0.2  # how soon a paused source notices that its switch is on again
BEAT_S = 1.0  # a waiting source updates its heartbeat at least this often


class SourceStatus:
    """`online`, `offline`, `paused`, `ended` or `disabled`; logs each change once instead of once per retry."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.state = "offline"
        self.reason = ""
        self.failures = 0
        self._paused_total = 0.0  # seconds spent switched off, for stats
        self._paused_at: float | None = None
        self._lock = threading.Lock()

    def _leave_pause(self) -> None:
        if self._paused_at is not None:
            self._paused_total += time.monotonic() - self._paused_at
            self._paused_at = None

    def online(self) -> None:
        with self._lock:
            if self.state != "online":
                logger.info("%s online", self.name)
            self._leave_pause()
            self.state, self.reason = "online", ""

    def offline(self, reason: str) -> None:
        with self._lock:
            self.failures += 1
            if self.state != "offline" or self.reason != reason:
                logger.warning("%s offline: %s; retrying with back-off", self.name, reason)
            self._leave_pause()
            self.state, self.reason = "offline", reason

    def stalled(self, reason: str) -> None:
        """The thread has not looped for too long (a read that never returns): not `online`, said once. The thread
        itself sets `online` again if its call ever returns with data."""
        with self._lock:
            if self.state == "offline" and self.reason == reason:
                return
            self.failures += 1
            logger.warning("%s offline: %s", self.name, reason)
            self._leave_pause()
            self.state, self.reason = "offline", reason

    def paused(self) -> None:
        """Switched off: the device is released and nothing is captured (not a failure)."""
        with self._lock:
            if self.state != "paused":
                logger.info("%s paused: switched off, device released", self.name)
                self._paused_at = time.monotonic()
            self.state, self.reason = "paused", "switched off"

    def set(self, state: str) -> None:
        with self._lock:
            self._leave_pause()
            self.state = state

    def snapshot(self) -> dict[str, object]:
        with self._lock:
            ongoing = time.monotonic() - self._paused_at if self._paused_at is not None else 0.0
            return {
                "state": self.state,
                "reason": self.reason,
                "failures": self.failures,
                "paused_s": round(self._paused_total + ongoing, 1),
            }


def always_on() -> bool:
    return True


class Backoff:
    """Exponential delay between `lo` and `hi` seconds, reset after a success."""

    def __init__(self, lo: float, hi: float) -> None:
        self.lo, self.hi = lo, hi
        self.delay = lo

    def wait(self, stop: threading.Event, beat: Callable[[], None] | None = None) -> None:
        """Wait the current delay (or until `stop`), calling `beat` at least every BEAT_S: a source backing off is
        alive, and the supervisor must be able to tell it from one that hangs."""
        end = time.monotonic() + self.delay
        while not stop.is_set() and (left := end - time.monotonic()) > 0:
            if beat is not None:
                beat()
            stop.wait(min(left, BEAT_S))
        self.delay = min(self.hi, self.delay * 2)

    def reset(self) -> None:
        self.delay = self.lo
