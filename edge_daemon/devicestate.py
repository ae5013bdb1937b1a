"""The device's state, decided in one place: `starting`, an emotion, `uncertain`, `no_one`, `paused`, `stopped`.

Closed windows, the absence timer, the pause switch and the daemon's start and stop all report here; this class alone
decides what the state is and hands each change, as one dict, to its listeners (the retained MQTT `state` topic,
which Home Assistant reads, and the device page), so every door shows the same value.

Rules (docs/mqtt-state.md):

* `starting` from the moment the daemon starts until the first decision: a previous run's retained emotion is never
  taken for current.
* `paused` holds for as long as analysis (or every enabled modality) is off: a window that was still open when the
  switch went off closes seconds later and becomes an event, but it cannot change the state.
* `stopped` is the last word of a clean shutdown; nothing after it changes the state.
* otherwise an emotion (or `uncertain`) after `after` consecutive windows agree, at once after `starting`,
  `no_one` or `paused` (someone is there again), and `no_one` once the absence timer says the room is empty.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from .fusion import StateTracker, WindowResult
from .labels import NO_ONE, PAUSED, STARTING, STOPPED

# States that no window decided: they carry no confidence and no people.
NOT_FROM_WINDOWS = (STARTING, NO_ONE, PAUSED, STOPPED)

Listener = Callable[[dict[str, Any]], None]


class DeviceState:
    """The owner of the device's state. All changes arrive on the daemon's main thread; `current` may be read from
    any thread."""

    def __init__(
        self,
        after: int,
        *,
        stamp: Callable[[float], str] = lambda t: f"{t:.3f}",
        last_seq: Callable[[], int | None] = lambda: None,
    ) -> None:
        """`after`: windows that must agree before the emotion changes (fusion.state_after_windows); `stamp` turns
        stream seconds into the `since` text; `last_seq` is the seq of the newest event, for the state's `seq`."""
        self._tracker = StateTracker(after)
        self._stamp, self._last_seq = stamp, last_seq
        self._listeners: list[Listener] = []
        self._lock = threading.Lock()  # guards `_current` for readers on other threads
        self._current: dict[str, Any] | None = None
        self.paused = False
        self.stopped = False

    def subscribe(self, fn: Listener) -> None:
        self._listeners.append(fn)

    @property
    def current(self) -> dict[str, Any] | None:
        """The last state handed to the listeners (None before `start`)."""
        with self._lock:
            return self._current

    @property
    def after(self) -> int:
        return self._tracker.after

    @after.setter
    def after(self, windows: int) -> None:
        """fusion.state_after_windows changed while running (tuning.py): the windows already agreeing count."""
        self._tracker.after = windows

    @property
    def emotion(self) -> str | None:
        return self._tracker.current

    @property
    def since(self) -> float:
        """Stream seconds since when the current state holds."""
        return self._tracker.since

    # ------------------------------------------------------------------ what happens to the device

    def start(self, t: float = 0.0) -> None:
        """The daemon starts: `starting` replaces whatever an earlier run left, before anything else is said."""
        self._force(STARTING, t)

    def stop(self, t: float) -> None:
        """A clean shutdown: `stopped`, and nothing changes the state after it."""
        self._force(STOPPED, t)
        self.stopped = True

    def pause(self, t: float) -> None:
        """Analysis (or every enabled modality) switched off."""
        self.paused = True
        self._force(PAUSED, t)

    def resume(self, t: float) -> None:
        """Switched back on: `paused` stays until a window or the absence timer decides."""
        self.paused = False

    def absent(self, t: float) -> None:
        """Nobody seen or heard since stream second `t` for fusion.absent_after_s."""
        if not self.paused:
            self._force(NO_ONE, t)

    def window(self, result: WindowResult) -> None:
        """A closed window (already an event). While paused or after stop it changes nothing: it may have been open
        when the switch went off."""
        if self.paused or self.stopped:
            return
        if self._tracker.update(result.emotion, result.start):
            self._publish(result.emotion, result.confidence, len(result.faces))
            return
        current = self.current
        if (
            current is not None
            and current["emotion"] not in NOT_FROM_WINDOWS
            and current["people"] != len(result.faces)
        ):
            self._publish(current["emotion"], current["confidence"], len(result.faces))  # people come and go

    # ------------------------------------------------------------------ internals

    def _force(self, value: str, t: float) -> None:
        if self.stopped:
            return
        if self._tracker.force(value, t):
            self._publish(value, None, 0)

    def _publish(self, emotion: str, confidence: float | None, people: int) -> None:
        state = {
            "emotion": emotion,
            "confidence": round(confidence, 4) if confidence is not None else None,
            "since": self._stamp(self._tracker.since),
            "seq": self._last_seq(),
            "people": people,
        }
        with self._lock:
            self._current = state
        for fn in self._listeners:
            fn(state)
