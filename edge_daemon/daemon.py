"""Wiring: loads the models, starts capture, perception, fusion and the broker session, supervises, shuts down.

`Daemon(config).run()` is the service; `Daemon(config, replay=Inputs(...))`
runs the identical pipeline over files instead of devices.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import signal
import socket
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Any

from . import daemonstats
from .audio.features import SAMPLE_RATE
from .audio.vad import Gate
from .capture.buffers import AudioRing, LatestSlot
from .capture.camera import CameraSource
from .capture.files import VideoFileSource, WavFileSource
from .capture.microphone import MicrophoneSource
from .config import Config
from .control import Controls
from .devicestate import DeviceState
from .errors import UserError
from .events import Clock, build_event, iso_utc
from .fusion import FusionRule, Windower, WindowResult
from .history import History, HistoryReader
from .lasterror import LastError
from .models import FileWatch, Models, load_detector, load_face_model, load_models, load_speech_model, model_files
from .mqtt import MqttSession, client_id_of, resolve_broker
from .outbox import Outbox, OutboxWriteError
from .pipeline import FaceWorker, FusionLoop, SpeechWorker, Timings, Worker
from .supervisor import Supervisor, workers_alive
from .systemd import notify, watchdog_interval_s
from .throttle import Throttle
from .tuning import Tuning

logger = logging.getLogger(__name__)


MODEL_CHECK_S = 5.0  # how often `run` looks for changed model files


@dataclass(frozen=True)
class ReplayInputs:
    video: Path | None = None
    audio: Path | None = None
    realtime: bool = False


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
        self.config = config
        self.replay = replay
        # `demo --keep`: once the replay's inputs end, the page stays up (its history and last state) until a signal.
        self.keep_page = keep_page and replay is not None and config.web.enabled
        self.stop_event = threading.Event()
        self.stop_signalled = threading.Event()  # SIGTERM/SIGINT, as opposed to the end of a replay
        # Signals as they arrive, appended by the handler and acted on by the main loop. A handler must not set an
        # Event or take a lock: it runs on the main thread between two bytecodes, possibly inside Event.set or
        # Event.wait holding that very lock, and a second Ctrl-C would wait on it for ever.
        self.signals: list[int] = []
        self.stopped_by: int | None = None  # the first SIGINT/SIGTERM, for the exit code
        self.timings = Timings()
        self.events_out = events_out
        self.events = 0
        self.drain_timeout_s = drain_timeout_s
        self.models = load_models(config)
        self.outbox = Outbox(
            state_dir or config.path(config.state_dir), config.outbox.max_events, config.outbox.max_age_s
        )
        # The switches people set (MQTT commands, the device page), saved in state_dir. A replay is not the service:
        # it ignores them and obeys no commands.
        self.controls = Controls(self.outbox.path.parent if replay is None else None)
        self._controls_changed = threading.Event()
        self.controls.subscribe(lambda switches: self._controls_changed.set())
        # The fusion settings Home Assistant and the page may change (tuning.py), saved beside the switches; a replay
        # keeps to its config file.
        self.tuning = Tuning(config.fusion, self.outbox.path.parent if replay is None else None)
        self._tuning_changed = threading.Event()
        self.tuning.subscribe(lambda settings: self._tuning_changed.set())
        self.last_event_at: float | None = None  # monotonic time of the last event, for stats
        state = state_dir or config.path(config.state_dir)
        h = config.history
        self.history = History(state, h.max_days, h.max_mb) if h.enabled else None
        if self.history:
            self.outbox.make_room = self.history.give_way  # state_dir's space is the outbox's first
        # The page: for the service, and for a real-time replay (demos); a fast replay is over before anyone looks.
        wants_page = replay is None or replay.realtime or self.keep_page
        self.web = self._web_server(state) if config.web.enabled and wants_page else None
        host, port = broker or resolve_broker(config)
        # A replay may run beside the live daemon of the same device: with the same client id the broker would
        # disconnect one for the other, over and over.
        client_id = f"{client_id_of(config)}-replay-{os.getpid()}" if replay is not None else None
        self.session = (
            MqttSession(
                config,
                self.outbox,
                host,
                port,
                config.outbox.drain_rate_per_s,
                client_id,
                owns_availability=replay is None,
                replay=replay is not None,
            )
            if publish
            else None
        )
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
        self.fusion = FusionLoop(
            Windower(
                config.fusion.window_s,
                FusionRule(
                    config.fusion.method,
                    config.fusion.face_weight,
                    config.fusion.speech_weight,
                    config.fusion.min_confidence,
                ),
            ),
            self.state,
            self._on_window,
            absent_after_s=config.fusion.absent_after_s,
        )
        if self.session is not None and replay is None:
            self.session.attach_commands(self.controls, self.tuning)
        self.errors = LastError()  # the last error logged, in stats
        self._fps_mark = (self.started, 0)  # (monotonic time, frames analysed) at the last stats message
        self.sources: list[Any] = []
        self.workers: list[Any] = []
        self.face_worker: FaceWorker | None = None
        self.speech_worker: SpeechWorker | None = None
        self.reload = threading.Event()  # set by SIGHUP
        if self.session is not None and replay is None:
            # Home Assistant's buttons: the same actions as SIGHUP and `emotion-edge history purge`.
            self.session.attach_actions({"reload_models": self.reload.set, "purge_history": self._purge_history_soon})
        self.model_files = FileWatch(model_files(config))
        self._last_status: dict[str, str] = {}
        self.inputs_done = False  # replay: every input was read to its end
        self.store_failures = 0  # events that could not be written to the outbox
        self._store_failure_log = Throttle()
        self.supervisor = Supervisor(self.stop_event, self._replacement)
        # Where each event goes once the outbox has given it its seq (the outbox is the store, not a sink: an event
        # it cannot keep goes nowhere). Each sink only queues or writes a line: none may block the fusion loop.
        self.sinks: list[Callable[[dict[str, Any]], None]] = []
        if self.history:
            self.sinks.append(self.history.record)  # the writer thread stores it
        if self.web:
            self.sinks.append(self.web.on_event)  # one queue per stream client
        if events_out is not None:
            self.sinks.append(self._write_event_line)
        if self.session:
            self.sinks.append(lambda event: self.session.notify_event())  # type: ignore[union-attr]  # drain now
        self._build_pipeline()
        if self.session is not None and replay is not None:  # a replay's device shows its files as its sources
            self.session.replay_sources = {s.name: s.status.name for s in self.sources}

    # ------------------------------------------------------------------ construction

    def _build_pipeline(self) -> None:
        c, r = self.config, self.replay
        lossless = r is not None
        self.slot = LatestSlot(lossless=lossless)
        self.ring = AudioRing(int(c.microphone.buffer_s * SAMPLE_RATE), lossless=lossless)
        if r is not None:
            if r.video:
                self.sources.append(VideoFileSource(r.video, self.slot, self.stop_event, r.realtime))
            if r.audio:
                self.sources.append(
                    WavFileSource(r.audio, self.ring, self.stop_event, r.realtime, c.microphone.chunk_ms)
                )
            video, audio = r.video is not None, r.audio is not None
        else:
            # Each source reads its switch before it opens its device, so a saved OFF holds from the first frame.
            if c.camera.enabled:
                camera_on = lambda: self.controls.active("camera")  # noqa: E731
                self.sources.append(CameraSource(c.camera, self.slot, self.started, self.stop_event, camera_on))
            if c.microphone.enabled:
                mic_on = lambda: self.controls.active("microphone")  # noqa: E731
                self.sources.append(MicrophoneSource(c.microphone, self.ring, self.started, self.stop_event, mic_on))
            video, audio = c.camera.enabled, c.microphone.enabled
        if video:
            self.face_worker = self._face_worker(self.models)
            self.workers.append(self.face_worker)
        if audio:
            self.speech_worker = self._speech_worker(self.models)
            self.workers.append(self.speech_worker)

    def _web_server(self, state_dir: Path) -> Any:
        from .web.server import WebServer, limit_malloc_arenas  # only when the page is on: its imports cost memory

        limit_malloc_arenas()  # before any thread starts: the page's threads would each keep a malloc arena

        names = ["face_emotion", "speech_emotion"] + (
            ["face_detector"] if self.config.face.detector == "blazeface" else []
        )
        cards = {n: self.config.model_path(n).with_suffix(".md") for n in names}
        history = HistoryReader(state_dir, self.history) if self.history else None  # its reads commit what waits
        # A replay obeys no switches (its file sources run to the end): its page offers none rather than one that lies.
        controls = self.controls if self.replay is None else None
        return WebServer(self.config, state_dir, self.snapshot, controls, history, cards, tuning=self.tuning)

    def _face_worker(self, models: Models) -> FaceWorker:
        common = {"out": self.fusion.predictions, "stop": self.stop_event, "timings": self.timings}
        f = self.config.face
        return FaceWorker(self.slot, models.detector, models.face, f.rate_hz, f.detect_every, **common)

    def _speech_worker(self, models: Models) -> SpeechWorker:
        s = self.config.speech
        common = {"out": self.fusion.predictions, "stop": self.stop_event, "timings": self.timings}
        return SpeechWorker(self.ring, models.speech, Gate.from_config(s), s.hop_s, **common)

    # ------------------------------------------------------------------ running

    def run(self) -> int:
        """Block until stopped (service) or until the inputs end (replay). Returns the exit code."""
        logging.getLogger("edge_daemon").addHandler(self.errors)
        # Before the broker hears from us: the first retained state it gets from this run is `starting`, published
        # ahead of `online`, so no one takes the previous run's emotion for current.
        self.state.start()
        if self.session:
            self.session.start()
        if self.history:
            self.history.start()
        if self.web:
            self.web.start()
        for t in [*self.sources, *self.workers]:
            t.start()
        next_stats = time.monotonic() + self.config.mqtt.stats_interval_s
        ping_every = watchdog_interval_s()
        next_ping = next_model_check = 0.0
        notify("READY=1")
        exit_code = 0
        self._controls_changed.set()  # a state saved as paused is published as such
        self._apply_tuning()  # the saved settings, before the first window
        try:
            while not self.stop_event.is_set():
                self.take_signals()
                if self.stop_event.is_set():
                    break
                if self._controls_changed.is_set():  # set from the MQTT thread; fusion belongs to this one
                    self._controls_changed.clear()
                    self._apply_controls()
                if self._tuning_changed.is_set():  # likewise: the MQTT or web thread set it
                    self._tuning_changed.clear()
                    self._apply_tuning()
                if self.replay is not None:
                    self.fusion.pump(min((w.progress for w in self.workers), default=float("inf")))
                    if all(w.finished.is_set() for w in self.workers):
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
                if ping_every and now >= next_ping and self.workers_alive(stall_s=4 * ping_every):
                    notify("WATCHDOG=1")
                    next_ping = now + ping_every
                if self.replay is None and now >= next_model_check:
                    next_model_check = now + MODEL_CHECK_S
                    if self.session:
                        self.session.ensure_network_loop()
                    if self.model_files.changed():
                        self.reload.set()
                    if not self.supervise():
                        exit_code = 1  # systemd's Restart=on-failure (or any supervisor) starts a fresh process
                        break
                if self.reload.is_set():
                    self.reload.clear()
                    self.reload_models()
                self.publish_status()
        finally:
            self.shutdown()
        failed = [w.name for w in self.workers if w.error is not None]
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
            self.take_signals()
            self.stop_event.wait(0.1)

    def note_signal(self, signum: int) -> None:
        """The whole of a signal handler: record the signal. Safe in a handler (list.append takes no lock) and from
        any thread; the main loop acts on it within a tenth of a second."""
        self.signals.append(signum)

    def request_stop(self) -> None:
        """Stop as SIGTERM would (from any thread)."""
        self.note_signal(signal.SIGTERM)

    def take_signals(self) -> None:
        """Main thread: act on the signals recorded since the last call. SIGHUP reloads the models; the first
        SIGINT/SIGTERM stops, and any number more change nothing."""
        while self.signals:
            signum = self.signals.pop(0)
            if signum == signal.SIGHUP:
                self.reload.set()
            elif self.stopped_by is None:
                self.stopped_by = signum
                logger.info("%s received: stopping", signal.Signals(signum).name)
                self.stop_signalled.set()
                self.stop_event.set()

    def reload_models(self) -> bool:
        """Load and check the model files again; switch the workers over only if all of them are good."""
        logger.info("reloading models")
        try:
            new = load_models(self.config)
        except UserError as exc:
            logger.error("model reload rejected, the running models stay: %s", exc)
            return False
        self.models = new
        if self.face_worker:
            self.face_worker.replace_models(new.detector, new.face)
        if self.speech_worker:
            self.speech_worker.replace_models(new.speech)
        logger.info("models reloaded: %s", ", ".join(f"{k} {v}" for k, v in new.versions().items()))
        return True

    def _purge_history_soon(self) -> None:
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

    def _apply_controls(self) -> None:
        """Every enabled modality switched off: the state says `paused` (not `no_one`) until one is back on."""
        if self.replay is not None:
            return
        enabled = {"camera": self.config.camera.enabled, "microphone": self.config.microphone.enabled}
        paused = not any(self.controls.active(n) for n, on in enabled.items() if on)
        self.fusion.set_paused(paused, time.monotonic() - self.started)

    def _apply_tuning(self) -> None:
        """The settings in force, into the rule, the state's window count and the absence timer (main thread)."""
        s = self.tuning.get()
        w = self.fusion.windower
        w.rule = dataclasses.replace(w.rule, method=s["method"], min_confidence=s["min_confidence"])
        self.state.after = s["state_after_windows"]
        self.fusion.absent_after_s = s["absent_after_s"]

    def publish_status(self) -> None:
        """Each source's online/offline state, retained, whenever it changes."""
        status = {s.name: s.status.snapshot()["state"] for s in self.sources}
        if self.session and self.session.refusal:  # events the broker does not take: visible without the log
            status["events"] = f"refused: {self.session.refusal}"
        if status != self._last_status and self.session:
            self.session.publish_retained("status", status)
            self._last_status = status

    def workers_alive(self, stall_s: float) -> bool:
        return workers_alive(self.workers, stall_s)

    def supervise(self) -> bool:
        """Replace a capture or perception thread that died or hung (supervisor.py); False: give up."""
        return self.supervisor.check(self.workers, self.sources)

    @property
    def restarts(self) -> Counter[str]:
        return self.supervisor.restarts

    def _replacement(self, old: Any) -> Any:
        if isinstance(old, Worker):
            old.retire()
            if old is self.face_worker:
                self.models = Models(load_detector(self.config), load_face_model(self.config), self.models.speech)
                self.face_worker = fresh = self._face_worker(self.models)
            else:
                self.models = Models(self.models.detector, self.models.face, load_speech_model(self.config))
                self.speech_worker = fresh = self._speech_worker(self.models)
            fresh.carry_over(old)
            return fresh
        return old.fresh()  # a capture source: same device, same buffer

    def shutdown(self) -> None:
        notify("STOPPING=1")
        self.stop_event.set()
        for t in [*self.sources, *self.workers]:
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
        self.last_seq = self.outbox.last_seq
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
            self.take_signals()
            if self.stop_signalled.is_set():
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
        try:
            # assigns seq; durable at once while the broker is away, else held until the broker acknowledges it
            seq = self.outbox.append(event, hold=self.session is not None and self.session.connected.is_set())
        except OutboxWriteError as exc:
            self._store_failed(exc)
            return
        if self.session is None:
            self.outbox.ack(seq)  # --no-mqtt: nothing will ever send it; keep the seq, not the event
        self.events += 1
        self.last_event_at = time.monotonic()
        for sink in self.sinks:
            sink(event)
        logger.debug(
            "window %s–%s: %s (%.2f) from %s",
            event["window_start"],
            event["window_end"],
            event["emotion"],
            event["confidence"],
            "+".join(event["used"]),
        )

    def _write_event_line(self, event: dict[str, Any]) -> None:
        assert self.events_out is not None
        self.events_out.write(json.dumps(event) + "\n")
        self.events_out.flush()

    def _store_failed(self, exc: OutboxWriteError) -> None:
        """An event that cannot be stored cannot be sent either (it would have no durable seq): count it, say so
        once a minute, and go on; storing resumes by itself once space or permissions are back."""
        self.store_failures += 1
        if self._store_failure_log.ready():
            logger.error(
                "cannot store events (%s): %d dropped so far; free space in state_dir or fix its permissions "
                "(stats.drops.outbox_write_failed)",
                exc, self.store_failures,
            )  # fmt: skip

    def _publish_state(self, state: dict[str, Any]) -> None:
        """DeviceState's listener: the retained `state` topic (Home Assistant reads it) and the page."""
        if self.session:
            self.session.publish_retained("state", state)
        if self.web:
            self.web.on_state(state)

    def stats(self) -> dict[str, Any]:
        """The counters published on `stats` (daemonstats.py)."""
        return daemonstats.collect(self)

    def snapshot(self) -> dict[str, Any]:
        """Read-only view for the device page, called from its threads (daemonstats.py)."""
        return daemonstats.page_snapshot(self)

    def publish_stats(self) -> None:
        stats = self.stats()
        # Frames analysed per second since the last stats message: what the device manages now, pauses included.
        now, (then, frames) = time.monotonic(), self._fps_mark
        done = stats["frames_analysed"] - frames
        stats["frames_analysed_per_s"] = round(done / (now - then), 2) if now > then and done >= 0 else None
        self._fps_mark = (now, stats["frames_analysed"])
        logger.debug("stats %s", stats)
        if self.session:
            self.session.publish_stats(stats)


def page_url(config: Config) -> str:
    """The device page's address as another machine on the network would reach it."""
    w = config.web
    host = socket.getfqdn() if w.host in ("0.0.0.0", "::", "") else w.host
    scheme = "https" if w.tls.cert_file else "http"
    return f"{scheme}://{f'[{host}]' if ':' in host else host}:{w.port}/"
