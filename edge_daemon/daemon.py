"""The daemon: the run loop and its few verbs (start, stop, shut down and drain, publish stats and status).

Its parts are built in wiring.py (capture sources and perception stages, the broker session, the page), watched by
supervisor.py, counted by daemonstats.py; a closed window's event goes out through sinks.py, and what an operator
asks of a running daemon (reload, purge, switches, settings) is actions.py's.

`Daemon(config).run()` is the service; `Daemon(config, replay=ReplayInputs(...))` runs the identical pipeline over
files instead of devices.
"""

from __future__ import annotations

import logging
import signal
import socket
import threading
import time
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Any

from . import daemonstats, runtime, wiring
from .actions import Actions
from .config import Config
from .control import Controls
from .devicestate import DeviceState
from .events import Clock, build_event, iso_utc
from .fusion import WindowResult
from .history import History
from .lasterror import LastError
from .models import FileWatch, Models, load_models, model_files
from .outbox import Outbox
from .pipeline import Timings
from .sinks import Fanout, event_sinks
from .stopsignals import StopSignals
from .supervisor import Supervisor, workers_alive
from .systemd import notify, watchdog_interval_s
from .tuning import Tuning
from .wiring import ReplayInputs, Stages

logger = logging.getLogger(__name__)


MODEL_CHECK_S = 5.0  # how often `run` looks for changed model files

__all__ = ["Daemon", "ReplayInputs", "page_url"]


class Daemon:
    def __init__(
        self,
        config: Config,
        *,
        replay: ReplayInputs | None = None,
        state_dir: Path | None = None,
        events_out: IO[str] | None = None,
        publish: bool = True,
        broker: tuple[str, int] | None = None,
        drain_timeout_s: float = 30.0,
        keep_page: bool = False,
    ) -> None:
        # Before any thread starts or model loads: one malloc arena and a fixed mmap threshold (runtime.limit_malloc
        # says why); the page's threads, one per connection, would otherwise each keep an arena of their own.
        runtime.limit_malloc()
        self.config = config
        self.replay = replay
        # `demo --keep`: once the replay's inputs end, the page stays up (its history and last state) until a signal.
        self.keep_page = keep_page and replay is not None and config.web.enabled
        self.stop_event = threading.Event()
        self.timings = Timings()
        self.events_out = events_out
        self.drain_timeout_s = drain_timeout_s
        models = load_models(config)
        state = state_dir or config.path(config.state_dir)
        self.outbox = Outbox(state, config.outbox.max_events, config.outbox.max_age_s)
        # The switches people set (MQTT commands, the device page) and the fusion settings Home Assistant and the
        # page may change (tuning.py), saved in state_dir. A replay is not the service: it keeps to its config file
        # and obeys no commands.
        saved_in = self.outbox.path.parent if replay is None else None
        self.controls = Controls(saved_in)
        self.tuning = Tuning(config.fusion, saved_in)
        h = config.history
        self.history = History(state, h.max_days, h.max_mb) if h.enabled else None
        if self.history:
            self.outbox.make_room = self.history.give_way  # state_dir's space is the outbox's first
        # The page: for the service, and for a real-time replay (demos); a fast replay is over before anyone looks.
        wants_page = replay is None or replay.realtime or self.keep_page
        page_controls = self.controls if replay is None else None
        self.web = (
            wiring.web_server(config, state, self.snapshot, page_controls, self.history, self.tuning)
            if config.web.enabled and wants_page
            else None
        )
        self.session = wiring.mqtt_session(config, self.outbox, broker, replay is not None) if publish else None
        if self.session and self.web:  # Home Assistant's "visit device" opens the device page
            self.session.configuration_url = config.web.public_base_url()
        self.started = time.monotonic()
        self.clock = Clock(self.started, datetime.now(timezone.utc) if replay is not None else None)
        # The one owner of `state`: MQTT (and so Home Assistant) and the page are its listeners, nobody else writes it.
        self.state = DeviceState(
            config.fusion.state_after_windows,
            stamp=lambda t: iso_utc(self.clock.wall(t)),
            last_seq=lambda: self.outbox.last_seq,
        )
        self.state.subscribe(self._publish_state)
        self.fusion = wiring.fusion_loop(config.fusion, self.state, self._on_window)
        self.stages = Stages(
            config, models, self.fusion.predictions, self.stop_event, self.timings, self.started, self.controls, replay
        )
        self.actions = Actions(
            config, self.stages, self.fusion, self.state, self.controls, self.tuning, self.history, self.started,
            replay=replay is not None,
        )  # fmt: skip
        self.reload = self.actions.reload  # set by SIGHUP
        self.signals = StopSignals(self.stop_event, self.reload)
        if self.session is not None and replay is None:
            self.session.attach_commands(self.controls, self.tuning)
            # Home Assistant's buttons: the same actions as SIGHUP and `emotion-edge history purge`.
            self.session.attach_actions(
                {"reload_models": self.reload.set, "purge_history": self.actions.purge_history_soon}
            )
        if self.session is not None and replay is not None:  # a replay's device shows its files as its sources
            self.session.replay_sources = {s.name: s.status.name for s in self.stages.sources}
        self.errors = LastError()  # the last error logged, in stats
        self.frame_rate = daemonstats.FrameRate(self.started)
        self.model_files = FileWatch(model_files(config))
        self._last_status: dict[str, str] = {}
        self.inputs_done = False  # replay: every input was read to its end
        self.supervisor = Supervisor(self.stop_event, self.stages.replacement)
        # Where each event goes once the outbox has given it its seq, in this order.
        sinks = event_sinks(self.history, self.web, events_out, self.session)
        self.fanout = Fanout(
            self.outbox,
            sinks,
            held=lambda: self.session is not None and self.session.connected.is_set(),
            sent=self.session is not None,
        )

    # ------------------------------------------------------------------ what others read

    @property
    def models(self) -> Models:
        return self.stages.models

    @property
    def sources(self) -> list[Any]:
        return self.stages.sources

    @property
    def face_worker(self) -> Any:
        return self.stages.face_worker

    @property
    def events(self) -> int:
        return self.fanout.events

    @property
    def store_failures(self) -> int:
        return self.fanout.store_failures

    @property
    def last_seq(self) -> int:
        return self.outbox.last_seq

    @property
    def stopped_by(self) -> int | None:
        return self.signals.stopped_by

    @property
    def restarts(self) -> Counter[str]:
        return self.supervisor.restarts

    # ------------------------------------------------------------------ running

    def run(self) -> int:
        """Block until stopped (service) or until the inputs end (replay). Returns the exit code."""
        logging.getLogger("edge_daemon").addHandler(self.errors)
        # Before the broker hears from us: the first retained state it gets from this run is `starting`, published
        # ahead of `online`, so no one takes the previous run's emotion for current.
        self.state.start()
        for part in (self.session, self.history, self.web):
            if part:
                part.start()
        for t in [*self.sources, *self.stages.workers]:
            t.start()
        next_stats = time.monotonic() + self.config.mqtt.stats_interval_s
        ping_every = watchdog_interval_s()
        next_ping = next_model_check = 0.0
        notify("READY=1")
        exit_code = 0
        self.actions.start()
        try:
            while not self.stop_event.is_set():
                self.signals.take()
                if self.stop_event.is_set():
                    break
                self.actions.poll()  # switches, settings and reloads asked for by other threads
                if self.replay is not None:
                    self.fusion.pump(min((w.progress for w in self.stages.workers), default=float("inf")))
                    if all(w.finished.is_set() for w in self.stages.workers):
                        self.inputs_done = True
                        if self.keep_page:
                            self._keep_page_until_signal()
                        break
                else:
                    # Live windows close this long after they end: a speech prediction is stamped at its window's centre.
                    lag = self.models.speech.features.window_s / 2 + 1.0
                    self.fusion.pump(time.monotonic() - self.started - lag)
                now = time.monotonic()
                if now >= next_stats:
                    self.publish_stats()
                    next_stats += self.config.mqtt.stats_interval_s
                if ping_every and now >= next_ping and workers_alive(self.stages.workers, stall_s=4 * ping_every):
                    notify("WATCHDOG=1")
                    next_ping = now + ping_every
                if self.replay is None and now >= next_model_check:
                    next_model_check = now + MODEL_CHECK_S
                    if self.session:
                        self.session.ensure_network_loop()
                    if self.model_files.changed():
                        self.reload.set()
                    # Replace a capture or perception thread that died or hung (supervisor.py); False: give up.
                    if not self.supervisor.check(self.stages.workers, self.sources):
                        exit_code = 1  # systemd's Restart=on-failure (or any supervisor) starts a fresh process
                        break
                self.publish_status()
        finally:
            self.shutdown()
        failed = [w.name for w in self.stages.workers if w.error is not None]
        if failed:  # replay: the inputs were not fully processed, whatever reached the outbox
            logger.error("the %s stage failed; its input was not fully processed", " and ".join(failed))
            exit_code = 1
        return exit_code

    def _keep_page_until_signal(self) -> None:
        """`demo --keep`: every window of the clip is closed and published; the page keeps serving it (and its
        history) until Ctrl-C or SIGTERM, so a newcomer can look at it after the 18 s clip."""
        self.fusion.pump(float("inf"))
        self.publish_stats()
        logger.info("the clip is done; the device page stays up until Ctrl-C")
        while not self.stop_event.is_set():
            self.signals.take()
            self.stop_event.wait(0.1)

    def note_signal(self, signum: int) -> None:
        """The whole of a signal handler (stopsignals.py): safe in a handler and from any thread."""
        self.signals.note(signum)

    def request_stop(self) -> None:
        """Stop as SIGTERM would (from any thread)."""
        self.signals.note(signal.SIGTERM)

    # ------------------------------------------------------------------ stopping

    def shutdown(self) -> None:
        """Stop every thread, close the last window, drain what the broker may still take, close the files."""
        notify("STOPPING=1")
        self.stop_event.set()
        for t in [*self.sources, *self.stages.workers]:
            t.join(timeout=2)
        self.fusion.flush()
        if self.replay is None:  # a replay's last state stays: it says what the file showed at its end
            self.state.stop(time.monotonic() - self.started)  # before `stopped` on availability
        self.publish_status()  # the sources' last word (a replay's inputs `ended`)
        if self.session and self.replay is not None:
            self._wait_drained(self.drain_timeout_s + self.outbox.depth() / self.config.outbox.drain_rate_per_s)
        elif self.session:
            self.session.flush(2.0)  # briefly, a service stop must stay within its 5 s
        self.publish_stats()  # the final figures, after the drain they count
        if self.web:
            self.web.stop()
        if self.history:
            self.history.close()
        if self.session:
            self.session.stop(flush_timeout_s=0.5)  # drained above; this only waits for `stopped` to go out
        left = self.outbox.depth()
        if left:
            logger.warning(
                "%d event(s) not yet acknowledged by the broker stay in %s for the next start", left, self.outbox.path
            )
        self.outbox.close()
        logging.getLogger("edge_daemon").removeHandler(self.errors)

    def _wait_drained(self, timeout_s: float) -> None:
        """End of a replay: give the broker up to `timeout_s` to take what the outbox holds."""
        assert self.session is not None
        deadline = time.monotonic() + timeout_s
        if self.outbox.depth() and not self.session.connected.is_set():
            logger.info("waiting up to %.0f s for MQTT broker %s:%d", timeout_s, self.session.host, self.session.port)
        while self.outbox.depth() and time.monotonic() < deadline:
            self.signals.take()
            if self.signals.stopped.is_set():
                break
            time.sleep(0.05)

    # ------------------------------------------------------------------ outputs

    def _on_window(self, result: WindowResult) -> None:
        event = build_event(
            result,
            device_id=self.config.device_id,
            clock=self.clock,
            method=self.fusion.windower.rule.method,  # the method in force (tuning.py)
            models=self.models.versions(),
        )
        if self.fanout.emit(event):
            logger.debug(
                "window %s–%s: %s (%.2f) from %s",
                event["window_start"], event["window_end"], event["emotion"], event["confidence"],
                "+".join(event["used"]),
            )  # fmt: skip

    def _publish_state(self, state: dict[str, Any]) -> None:
        """DeviceState's listener: the retained `state` topic (Home Assistant reads it) and the page."""
        if self.session:
            self.session.publish_retained("state", state)
        if self.web:
            self.web.on_state(state)

    def publish_status(self) -> None:
        """Each source's online/offline state, retained, whenever it changes."""
        status = {s.name: s.status.snapshot()["state"] for s in self.sources}
        if self.session and self.session.refusal:  # events the broker does not take: visible without the log
            status["events"] = f"refused: {self.session.refusal}"
        if status != self._last_status and self.session:
            self.session.publish_retained("status", status)
            self._last_status = status

    def stats(self) -> dict[str, Any]:
        """The counters published on `stats` (daemonstats.py)."""
        return daemonstats.collect(self)

    def snapshot(self) -> dict[str, Any]:
        """Read-only view for the device page, called from its threads (daemonstats.py)."""
        return daemonstats.page_snapshot(self)

    def publish_stats(self) -> None:
        stats = self.frame_rate.add_to(self.stats())
        logger.debug("stats %s", stats)
        if self.session:
            self.session.publish_stats(stats)


def page_url(config: Config) -> str:
    """The device page's address as another machine on the network would reach it."""
    w = config.web
    host = socket.getfqdn() if w.host in ("0.0.0.0", "::", "") else w.host
    scheme = "https" if w.tls.cert_file else "http"
    return f"{scheme}://{f'[{host}]' if ':' in host else host}:{w.port}/"
