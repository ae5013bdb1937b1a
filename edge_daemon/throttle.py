"""At most once a period: for log lines and probes about a condition that repeats (a full outbox, a broker away)."""

from __future__ import annotations

import math
import time


class Throttle:
    def __init__(self, period_s: float = 60.0) -> None:
        self.period_s = period_s
        self._last = -math.inf  # monotonic time of the last `ready()` that said yes

    def ready(self) -> bool:
        """True if a whole period has passed since the last True (and the period starts again)."""
        now = time.monotonic()
        if now - self._last < self.period_s:
            return False
        self._last = now
        return True

    def reset(self) -> None:
        """The condition is over: its next occurrence is told at once."""
        self._last = -math.inf
