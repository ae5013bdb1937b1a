"""Supervision of the capture and perception threads: a thread that died, or a perception stage that hung, is
replaced with a fresh one; one that keeps failing rests (capture) or ends the process for systemd (perception).

The supervisor knows threads, not models: the daemon hands it `replace`, which builds the fresh thread (loading a
stage's models again) and may raise UserError when they no longer load.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from .errors import UserError
from .pipeline import Worker

logger = logging.getLogger(__name__)

STALL_S = 30.0  # a perception stage that has not looped for this long is stuck and gets replaced
# A capture thread loops at least every second (a frame, an audio chunk, a back-off or pause poll); one silent this
# long is inside a call that does not return (a wedged camera driver or stream). It cannot be killed and a fresh one
# would fight it for the device, so its source is only marked offline; it comes back online by itself if the
# call ever returns with data.
CAPTURE_STALL_S = 10.0
# A stage replaced this many times within RESTART_WINDOW_S is not helped by more of the same: the process exits
# non-zero, and systemd (Restart=on-failure) or another supervisor starts it afresh.
MAX_RESTARTS = 3
RESTART_WINDOW_S = 3600.0


def workers_alive(workers: list[Worker], stall_s: float) -> bool:
    """Every worker thread runs and has looped recently (they wake at least every 0.5 s even without input)."""
    now = time.monotonic()
    return all(w.error is None and now - w.heartbeat <= stall_s for w in workers if not w.finished.is_set())


class Supervisor:
    def __init__(self, stop_event: threading.Event, replace: Callable[[Any], Any]) -> None:
        self.stop_event = stop_event
        self.replace = replace  # old thread -> a fresh, not yet started one
        self.restarts: Counter[str] = Counter()  # thread name -> times replaced, for stats
        self._restarted_at: dict[str, list[float]] = {}

    def check(self, *groups: list[Any]) -> bool:
        """Live: replace a thread that died, or a perception stage that hung, with a fresh one, in its list.

        A hung thread cannot be killed from Python; a stage's is retired (it exits quietly if its call ever
        returns) and its models are left to it, since an interpreter must not be used by two threads: the fresh
        stage loads its own. Returns False when replacing is not enough: models that no longer load, or a thread
        that keeps failing.
        """
        now = time.monotonic()
        for threads in groups:
            for t in threads:
                _mark_if_stalled(t, now)
            for i, t in enumerate(threads):
                if not t.is_alive() or getattr(t, "error", None) is not None:
                    error = getattr(t, "error", None)
                    why = f"failed ({type(error).__name__})" if error else "ended unexpectedly"
                elif isinstance(t, Worker) and now - t.heartbeat > STALL_S:
                    why = f"stuck for {now - t.heartbeat:.0f} s"
                else:
                    continue
                if self.stop_event.is_set():  # threads end when asked to: checked after seeing one gone, no race
                    return True
                if not self._restart(threads, i, why, now):
                    return False
        return True

    def _restart(self, threads: list[Any], i: int, why: str, now: float) -> bool:
        old = threads[i]
        recent = [t for t in self._restarted_at.get(old.name, []) if now - t < RESTART_WINDOW_S]
        if len(recent) >= MAX_RESTARTS and not isinstance(old, Worker):
            # A capture thread that keeps failing costs only its own modality: it rests (offline) until the hour
            # allows another try, and the other modality goes on. A new process would not fix a device.
            reason = f"capture thread {why}, {len(recent)} times within the hour; next try later"
            if old.status.snapshot()["reason"] != reason:  # said once, not every supervision round
                old.status.offline(reason)
            return True
        if len(recent) >= MAX_RESTARTS:
            logger.error(
                "%s thread %s after %d restarts within %.0f min: stopping so that systemd (or another "
                "supervisor) starts the daemon afresh",
                old.name, why, len(recent), RESTART_WINDOW_S / 60,
            )  # fmt: skip
            return False
        try:
            fresh = self.replace(old)
        except UserError as exc:
            logger.error("%s thread %s and its models do not load again (%s): stopping", old.name, why, exc)
            return False
        threads[i] = fresh
        fresh.start()
        self._restarted_at[old.name] = [*recent, now]
        self.restarts[old.name] += 1
        logger.error("%s thread %s: replaced it with a fresh one (restart %d)", old.name, why, len(recent) + 1)
        return True


def _mark_if_stalled(t: Any, now: float) -> None:
    """A live capture thread (one with a `heartbeat`) that has not looped for CAPTURE_STALL_S: its status leaves
    `online`, once, so that MQTT, the page and Home Assistant stop showing a hung camera as working."""
    beat = getattr(t, "heartbeat", None)
    if beat is None or isinstance(t, Worker) or not t.is_alive():
        return
    if now - beat > CAPTURE_STALL_S and t.status.snapshot()["state"] == "online":
        t.status.stalled(f"stalled: no {t.name} data for {now - beat:.0f} s (a read that does not return)")
