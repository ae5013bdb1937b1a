"""SIGINT, SIGTERM and SIGHUP as a running daemon takes them: a handler only records the signal, the main loop acts.

A handler must not set an Event or take a lock: it runs on the main thread between two bytecodes, possibly inside
Event.set or Event.wait holding that very lock, and a second Ctrl-C would wait on it for ever.
"""

from __future__ import annotations

import logging
import signal
import threading

logger = logging.getLogger(__name__)


class StopSignals:
    def __init__(self, stop: threading.Event, reload: threading.Event) -> None:
        self.stop, self.reload = stop, reload
        self.pending: list[int] = []  # appended by the handler, taken by the main loop
        self.stopped_by: int | None = None  # the first SIGINT/SIGTERM, for the exit code
        self.stopped = threading.Event()  # SIGTERM/SIGINT, as opposed to the end of a replay

    def note(self, signum: int) -> None:
        """The whole of a signal handler: record the signal. Safe in a handler (list.append takes no lock) and from
        any thread; the main loop acts on it within a tenth of a second."""
        self.pending.append(signum)

    def take(self) -> None:
        """Main thread: act on the signals recorded since the last call. SIGHUP reloads the models; the first
        SIGINT/SIGTERM stops, and any number more change nothing."""
        while self.pending:
            signum = self.pending.pop(0)
            if signum == signal.SIGHUP:
                self.reload.set()
            elif self.stopped_by is None:
                self.stopped_by = signum
                logger.info("%s received: stopping", signal.Signals(signum).name)
                self.stopped.set()
                self.stop.set()
