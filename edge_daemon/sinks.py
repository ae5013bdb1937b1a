"""Where an event goes once a window closes: the outbox gives it its seq (the store, not a sink: an event it cannot
keep goes nowhere, as it would have no durable seq), then each sink in the list in turn: the history, the page's
stream clients, the events file, the broker session.

Each sink only queues or writes a line: none may block the fusion loop, which calls `emit`.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from typing import IO, Any

from .outbox import Outbox, OutboxWriteError
from .throttle import Throttle

logger = logging.getLogger(__name__)

Sink = Callable[[dict[str, Any]], None]


class EventsFile:
    """A sink: one JSON line per event (`replay --events-out`, tests), flushed at once."""

    def __init__(self, out: IO[str]) -> None:
        self.out = out

    def __call__(self, event: dict[str, Any]) -> None:
        self.out.write(json.dumps(event) + "\n")
        self.out.flush()


def event_sinks(history: Any, page: Any, events_out: IO[str] | None, session: Any) -> list[Sink]:
    """The sinks of the parts a daemon has (None: it has not), in the order an event reaches them."""
    sinks: list[Sink] = []
    if history is not None:
        sinks.append(history.record)  # the history's writer thread stores it
    if page is not None:
        sinks.append(page.on_event)  # one queue per stream client
    if events_out is not None:
        sinks.append(EventsFile(events_out))
    if session is not None:
        sinks.append(lambda event: session.notify_event())  # the broker session drains the outbox now
    return sinks


class Fanout:
    """An event's way out: stored in the outbox, then handed to every sink. Counts what went out and what could
    not be stored."""

    def __init__(self, outbox: Outbox, sinks: list[Sink], *, held: Callable[[], bool], sent: bool) -> None:
        self.outbox = outbox
        self.sinks = sinks
        self.held = held  # the broker is connected: the outbox may keep the event in memory until it is acknowledged
        self.sent = sent  # False (--no-mqtt): nothing will ever send an event, so only its seq is kept
        self.events = 0  # events stored and handed to the sinks
        self.last_event_at: float | None = None  # monotonic time of the last one, for stats
        self.store_failures = 0  # events that could not be written to the outbox
        self._failure_log = Throttle()

    def emit(self, event: dict[str, Any]) -> bool:
        """Store the event (it gets its `seq`) and hand it to every sink; False if it could not be stored."""
        try:
            # durable at once while the broker is away, else held until the broker acknowledges it
            seq = self.outbox.append(event, hold=self.held())
        except OutboxWriteError as exc:
            self._store_failed(exc)
            return False
        if not self.sent:
            self.outbox.ack(seq)  # keep the seq, not the event
        self.events += 1
        self.last_event_at = time.monotonic()
        for sink in self.sinks:
            sink(event)
        return True

    def _store_failed(self, exc: OutboxWriteError) -> None:
        """An event that cannot be stored cannot be sent either (it would have no durable seq): count it, say so
        once a minute, and go on; storing resumes by itself once space or permissions are back."""
        self.store_failures += 1
        if self._failure_log.ready():
            logger.error(
                "cannot store events (%s): %d dropped so far; free space in state_dir or fix its permissions "
                "(stats.drops.outbox_write_failed)",
                exc, self.store_failures,
            )  # fmt: skip
