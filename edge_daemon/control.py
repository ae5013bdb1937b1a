"""What people have switched on or off: analysis as a whole, the camera, the microphone.

One object, two doors: the MQTT command topics (`…/analysis/set`, `…/camera/set`, `…/microphone/set`) and the
device page both call `Controls.set`; capture threads and publishers read `Controls.get` or subscribe. The choice
survives restarts (`controls.json` in state_dir), so a camera switched off stays off from the first frame of the
next start.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path

from .storage import read_json_object, write_json_atomically
from .throttle import Throttle

logger = logging.getLogger(__name__)

NAMES = ("analysis", "camera", "microphone")
FILENAME = "controls.json"
LOG_EVERY_S = 5.0  # switch changes are logged at most this often; a flood of commands is summed up in the next line

Listener = Callable[[dict[str, bool]], None]


class Controls:
    """Thread-safe switches, persisted in state_dir (or in memory only when `state_dir` is None)."""

    def __init__(self, state_dir: Path | None) -> None:
        self.path = Path(state_dir) / FILENAME if state_dir is not None else None
        self._lock = threading.Lock()  # taken by the capture threads per frame (`active`): held only for dict work
        self._save_lock = threading.Lock()  # one writer of controls.json at a time; the fsync happens under it
        self._on = dict.fromkeys(NAMES, True)
        self._listeners: list[Listener] = []
        self._log = Throttle(LOG_EVERY_S)
        self._unlogged = 0  # changes not logged since the last line
        self._load()
        self._saved = dict(self._on)  # what controls.json holds (or would, had it been written)

    def _load(self) -> None:
        if self.path is None or not self.path.exists():
            return
        try:
            saved = read_json_object(self.path)
        except (OSError, ValueError) as exc:
            # Unreadable switches must not keep the daemon down; everything on is what a fresh install does.
            logger.warning("%s: cannot read the saved switches (%s); starting with everything on", self.path, exc)
            return
        for name in NAMES:
            if isinstance(saved.get(name), bool):
                self._on[name] = saved[name]

    def get(self) -> dict[str, bool]:
        with self._lock:
            return dict(self._on)

    def active(self, name: str) -> bool:
        """Whether a modality ('camera', 'microphone') should run now: its own switch and analysis both on."""
        with self._lock:
            return self._on["analysis"] and self._on[name]

    def set(self, name: str, on: bool, *, source: str) -> bool:
        """Switch one control; returns whether it changed. `source` ('mqtt', 'web', …) goes to the log."""
        if name not in NAMES:
            raise ValueError(f"unknown control {name!r}; one of {', '.join(NAMES)}")
        with self._lock:
            if self._on[name] == on:
                return False
            self._on[name] = on
            snapshot = dict(self._on)
            listeners = list(self._listeners)
            log, unlogged = self._log.ready(), self._unlogged
            self._unlogged = 0 if log else unlogged + 1
        if log:
            logger.info(
                "%s switched %s (from %s)%s", name, "on" if on else "off", source,
                f"; {unlogged} more change(s) since the last such line" if unlogged else "",
            )  # fmt: skip
        self._sync()
        for fn in listeners:
            fn(snapshot)
        return True

    def _sync(self) -> None:
        """Write the latest switches to controls.json, outside the lock the capture threads take per frame: an SD
        card's fsync can take a second. Each writer writes what is current, so the file ends as the switches end."""
        with self._save_lock:
            current = self.get()
            if current != self._saved:
                if self._save(current):  # a failed save is tried again at the next change
                    self._saved = current

    def subscribe(self, fn: Listener) -> None:
        with self._lock:
            self._listeners.append(fn)

    def _save(self, snapshot: dict[str, bool]) -> bool:
        if self.path is None:
            return True
        try:
            write_json_atomically(self.path, snapshot)
        except OSError as exc:  # a read-only card: the switch still works until the next restart
            logger.warning("%s: cannot save the switches (%s); they hold until the next restart", self.path, exc)
            return False
        return True
