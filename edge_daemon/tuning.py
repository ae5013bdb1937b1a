"""The fusion settings a person tunes while the device runs: `min_confidence`, `state_after_windows`,
`absent_after_s` and `method`.

Two doors, one object (as with the switches in control.py): Home Assistant's number and select entities
(`…/<name>/set`, retained `…/<name>/state`) and the device page's `POST /api/controls` both call `Tuning.set`; the
daemon applies the values to the fusion rule, the state tracker and the absence timer on its main thread. The config
file gives the defaults; a value set through either door overrides it and is kept in `settings.json` in state_dir,
so it survives restarts (delete the file, or set the value again, to go back). The allowed ranges are the config
schema's own (FusionConfig's field metadata): a value the config file could not hold is refused here too.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from .config import FusionConfig
from .storage import read_json_object, write_json_atomically
from .throttle import Throttle

logger = logging.getLogger(__name__)

FILENAME = "settings.json"
NAMES = ("min_confidence", "state_after_windows", "absent_after_s", "method")
REFUSAL_LOG_EVERY_S = 5.0  # a client repeating a bad value is told once, then summed up

Listener = Callable[[dict[str, Any]], None]


class SettingError(ValueError):
    """A value a setting cannot take; the message names the setting and what it allows."""


@dataclass(frozen=True)
class Setting:
    """One tunable field of FusionConfig, with the bounds the config schema gives it."""

    name: str
    kind: type  # int, float or str
    lo: float | None
    hi: float | None
    choices: tuple[str, ...]

    @property
    def key(self) -> str:
        return f"fusion.{self.name}"

    def allowed(self) -> str:
        if self.choices:
            return "one of " + ", ".join(self.choices)
        whole = "a whole number" if self.kind is int else "a number"
        return f"{whole} from {_num(self.lo)} to {_num(self.hi)}"

    def check(self, value: Any) -> Any:
        """`value` as this setting holds it (JSON's 2.0 for an int is 2, "Vote " is "vote"); SettingError if not."""
        if self.choices:
            text = value.strip().lower() if isinstance(value, str) else None
            if text not in self.choices:
                raise SettingError(f"{self.key}: {self.allowed()}, got {_show(value)}")
            return text
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise SettingError(f"{self.key}: {self.allowed()}, got {_show(value)}")
        if not math.isfinite(value) or (self.kind is int and value != int(value)):  # NaN, inf (int(inf) raises); 1.5
            raise SettingError(f"{self.key}: {self.allowed()}, got {_show(value)}")
        if (self.lo is not None and value < self.lo) or (self.hi is not None and value > self.hi):
            raise SettingError(f"{self.key}: {self.allowed()}, got {_show(value)}")
        return int(value) if self.kind is int else float(value)

    def parse(self, text: str) -> Any:
        """An MQTT payload ("1", "1.0", "0.45", "vote") as this setting's value; SettingError if it is none."""
        if self.choices:
            return self.check(text)
        try:
            return self.check(float(text.strip()))
        except (ValueError, SettingError):  # the payload as sent in the message, not as a float
            raise SettingError(f"{self.key}: {self.allowed()}, got {_show(text)}") from None


def _num(x: float | None) -> str:
    return f"{x:g}" if x is not None else "?"


def _show(value: Any) -> str:
    return repr(value)[:40]


SETTINGS: dict[str, Setting] = {
    f.name: Setting(f.name, type(f.default), f.metadata["lo"], f.metadata["hi"], tuple(f.metadata["choices"]))
    for f in fields(FusionConfig)
    if f.name in NAMES
}


class Tuning:
    """Thread-safe settings: the config's values, overridden by what was set and saved (in memory only when
    `state_dir` is None, as for a replay, which keeps to its config file)."""

    def __init__(self, defaults: FusionConfig, state_dir: Path | None) -> None:
        self.path = Path(state_dir) / FILENAME if state_dir is not None else None
        self.defaults = {name: getattr(defaults, name) for name in NAMES}
        self._lock = threading.Lock()
        self._save_lock = threading.Lock()  # one writer of settings.json at a time; the fsync happens under it
        self._overrides: dict[str, Any] = {}
        self._listeners: list[Listener] = []
        self._refusal_log = Throttle(REFUSAL_LOG_EVERY_S)
        self._unlogged = 0
        self._load()
        self._saved = dict(self._overrides)

    def _load(self) -> None:
        if self.path is None or not self.path.exists():
            return
        try:
            saved = read_json_object(self.path)
        except (OSError, ValueError) as exc:
            logger.warning("%s: cannot read the saved settings (%s); using the config file's", self.path, exc)
            return
        for name, value in saved.items():
            setting = SETTINGS.get(name)
            try:
                if setting is None:
                    raise SettingError(f"{name}: not a setting that can be tuned")
                self._overrides[name] = setting.check(value)
            except SettingError as exc:  # an older version's range, a hand edit: that one setting falls back
                logger.warning("%s: ignoring a saved value (%s); using the config file's", self.path, exc)
        for name, value in self._overrides.items():
            if value != self.defaults[name]:
                logger.info(
                    "fusion.%s is %s, set from Home Assistant or the page and kept in %s (the config file says %s)",
                    name, value, self.path, self.defaults[name],
                )  # fmt: skip

    def get(self) -> dict[str, Any]:
        with self._lock:
            return {**self.defaults, **self._overrides}

    def value(self, name: str) -> Any:
        with self._lock:
            return self._overrides.get(name, self.defaults[name])

    def check(self, name: str, value: Any, *, source: str) -> Any:
        """`value` as setting `name` holds it; SettingError, logged as a refusal from `source`, if it cannot."""
        try:
            return SETTINGS[name].check(value)
        except SettingError as exc:
            self._refused(exc, source)
            raise

    def set(self, name: str, value: Any, *, source: str) -> bool:
        """Set one setting; returns whether it changed. SettingError (logged once) for a value it cannot take."""
        if name not in SETTINGS:
            raise SettingError(f"{name!r}: not a setting; one of {', '.join(NAMES)}")
        return self._apply(name, self.check(name, value, source=source), source)

    def set_text(self, name: str, text: str, *, source: str) -> bool:
        """`set` from a text payload (MQTT)."""
        try:
            value = SETTINGS[name].parse(text)
        except SettingError as exc:
            self._refused(exc, source)
            raise
        return self._apply(name, value, source)

    def _apply(self, name: str, value: Any, source: str) -> bool:
        with self._lock:
            if self._overrides.get(name, self.defaults[name]) == value and name in self._overrides:
                return False
            old = self._overrides.get(name, self.defaults[name])
            self._overrides[name] = value  # kept even when it equals the config's: the person chose it
            snapshot = {**self.defaults, **self._overrides}
            listeners = list(self._listeners)
        if old != value:
            logger.info("fusion.%s set to %s (from %s; was %s)", name, value, source, old)
        self._sync()
        for fn in listeners:
            fn(snapshot)
        return old != value

    def _refused(self, exc: SettingError, source: str) -> None:
        if self._refusal_log.ready():
            more = f"; {self._unlogged} more refused since the last such line" if self._unlogged else ""
            logger.warning("refused a setting from %s: %s; the value in force stays%s", source, exc, more)
            self._unlogged = 0
        else:
            self._unlogged += 1

    def subscribe(self, fn: Listener) -> None:
        with self._lock:
            self._listeners.append(fn)

    def _sync(self) -> None:
        """Write the current overrides to settings.json (outside the lock readers take; see Controls._sync)."""
        with self._save_lock:
            with self._lock:
                current = dict(self._overrides)
            if current != self._saved:
                if self._save(current):  # a failed save is tried again at the next change
                    self._saved = current

    def _save(self, overrides: dict[str, Any]) -> bool:
        if self.path is None:
            return True
        try:
            write_json_atomically(self.path, overrides)
        except OSError as exc:  # a read-only card: the value holds until the next restart
            logger.warning("%s: cannot save the settings (%s); they hold until the next restart", self.path, exc)
            return False
        return True
