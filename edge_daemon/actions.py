"""What an operator may ask of a running daemon besides stopping it: reload the models (SIGHUP, Home Assistant's
button, a changed model file), purge the history, and switches or fusion settings changed by MQTT or the page.

Requests come from any thread (paho's, the page's, a signal); the daemon's main thread acts on them in `poll`, since
the fusion loop and the stages belong to it.
"""

from __future__ import annotations

import dataclasses
import logging
import sqlite3
import threading
import time

from .config import Config
from .control import Controls
from .devicestate import DeviceState
from .errors import UserError
from .history import History, HistoryReader
from .models import load_models
from .pipeline import FusionLoop
from .tuning import Tuning
from .wiring import Stages

logger = logging.getLogger(__name__)


class Actions:
    def __init__(
        self,
        config: Config,
        stages: Stages,
        fusion: FusionLoop,
        state: DeviceState,
        controls: Controls,
        tuning: Tuning,
        history: History | None,
        started: float,
        replay: bool,
    ) -> None:
        self.config, self.stages, self.fusion, self.state = config, stages, fusion, state
        self.controls, self.tuning, self.history = controls, tuning, history
        self.started, self.replay = started, replay
        self.reload = threading.Event()  # SIGHUP, Home Assistant's button, a changed model file
        self._controls_changed = threading.Event()
        self._tuning_changed = threading.Event()
        controls.subscribe(lambda switches: self._controls_changed.set())
        tuning.subscribe(lambda settings: self._tuning_changed.set())

    def start(self) -> None:
        """Before the first window: a state saved as paused is published as such, the saved settings are in force."""
        self._controls_changed.set()
        self.apply_tuning()

    def poll(self) -> None:
        """Main thread: act on what was asked since the last call."""
        if self._controls_changed.is_set():
            self._controls_changed.clear()
            self.apply_controls()
        if self._tuning_changed.is_set():
            self._tuning_changed.clear()
            self.apply_tuning()
        if self.reload.is_set():
            self.reload.clear()
            self.reload_models()

    def reload_models(self) -> bool:
        """Load and check the model files again; switch the workers over only if all of them are good."""
        logger.info("reloading models")
        try:
            new = load_models(self.config)
        except UserError as exc:
            logger.error("model reload rejected, the running models stay: %s", exc)
            return False
        self.stages.use_models(new)
        logger.info("models reloaded: %s", ", ".join(f"{k} {v}" for k, v in new.versions().items()))
        return True

    def purge_history_soon(self) -> None:
        """Home Assistant's Purge history button (paho's thread): the purge runs on a thread of its own."""
        threading.Thread(target=self.purge_history, name="history-purge", daemon=True).start()

    def purge_history(self) -> int:
        """Delete every event of the local history, as `emotion-edge history purge` does; returns how many."""
        if self.history is None:
            return 0
        self.history.flush()  # what waits for the next commit goes too (it would be written after the purge)
        try:
            n = HistoryReader(self.history.path.parent).purge(None)
        except sqlite3.Error as exc:
            logger.error("cannot purge the history in %s (%s)", self.history.path, exc)
            return 0
        logger.info("history purged: %d event(s) deleted from %s", n, self.history.path)
        return n

    def apply_controls(self) -> None:
        """Every enabled modality switched off: the state says `paused` (not `no_one`) until one is back on."""
        if self.replay:
            return
        enabled = {"camera": self.config.camera.enabled, "microphone": self.config.microphone.enabled}
        paused = not any(self.controls.active(n) for n, on in enabled.items() if on)
        self.fusion.set_paused(paused, time.monotonic() - self.started)

    def apply_tuning(self) -> None:
        """The settings in force, into the rule, the state's window count and the absence timer (main thread)."""
        s = self.tuning.get()
        w = self.fusion.windower
        w.rule = dataclasses.replace(w.rule, method=s["method"], min_confidence=s["min_confidence"])
        self.state.after = s["state_after_windows"]
        self.fusion.absent_after_s = s["absent_after_s"]
