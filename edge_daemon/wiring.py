"""Building the daemon's parts from its config: the capture sources and perception stages of one run, the broker
session and the device page. What is built here the daemon runs, the supervisor watches and replaces, and the
operator's actions (actions.py) give new models.
"""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .audio.vad import Gate
from .capture import SAMPLE_RATE
from .capture.buffers import AudioRing, LatestSlot
from .capture.camera import CameraSource
from .capture.files import VideoFileSource, WavFileSource
from .capture.microphone import MicrophoneSource
from .config import Config, FusionConfig
from .control import Controls
from .devicestate import DeviceState
from .fusion import FusionRule, Prediction, Windower, WindowResult
from .models import Models, load_detector, load_face_model, load_speech_model
from .outbox import Outbox
from .pipeline import FaceWorker, FusionLoop, SpeechWorker, Timings, Worker

if TYPE_CHECKING:
    from .history import History
    from .mqtt import MqttSession
    from .tuning import Tuning


@dataclass(frozen=True)
class ReplayInputs:
    video: Path | None = None
    audio: Path | None = None
    realtime: bool = False


class Stages:
    """The capture sources and perception workers of one run, and the buffers between them: the devices the config
    enables (each reads its switch before it opens its device, so a saved OFF holds from the first frame), or a
    replay's files. A replay's buffers are lossless: a file waits for its reader instead of dropping."""

    def __init__(
        self,
        config: Config,
        models: Models,
        out: queue.Queue[Prediction],
        stop: threading.Event,
        timings: Timings,
        started: float,
        controls: Controls,
        replay: ReplayInputs | None = None,
    ) -> None:
        self.config, self.models = config, models
        self._common: dict[str, Any] = {"out": out, "stop": stop, "timings": timings}
        lossless = replay is not None
        self.slot = LatestSlot(lossless=lossless)
        self.ring = AudioRing(int(config.microphone.buffer_s * SAMPLE_RATE), lossless=lossless)
        self.sources: list[Any] = []
        if replay is not None:
            if replay.video:
                self.sources.append(VideoFileSource(replay.video, self.slot, stop, replay.realtime))
            if replay.audio:
                chunk_ms = config.microphone.chunk_ms
                self.sources.append(WavFileSource(replay.audio, self.ring, stop, replay.realtime, chunk_ms))
            video, audio = replay.video is not None, replay.audio is not None
        else:
            if config.camera.enabled:
                camera_on = lambda: controls.active("camera")  # noqa: E731
                self.sources.append(CameraSource(config.camera, self.slot, started, stop, camera_on))
            if config.microphone.enabled:
                mic_on = lambda: controls.active("microphone")  # noqa: E731
                self.sources.append(MicrophoneSource(config.microphone, self.ring, started, stop, mic_on))
            video, audio = config.camera.enabled, config.microphone.enabled
        self.workers: list[Any] = []  # the supervisor replaces threads in these two lists in place
        self.face_worker = self._face_worker() if video else None
        self.speech_worker = self._speech_worker() if audio else None
        self.workers.extend(w for w in (self.face_worker, self.speech_worker) if w is not None)

    def _face_worker(self) -> FaceWorker:
        f = self.config.face
        return FaceWorker(self.slot, self.models.detector, self.models.face, f.rate_hz, f.detect_every, **self._common)

    def _speech_worker(self) -> SpeechWorker:
        s = self.config.speech
        return SpeechWorker(self.ring, self.models.speech, Gate.from_config(s), s.hop_s, **self._common)

    def use_models(self, new: Models) -> None:
        """Reloaded models, checked: the running stages switch over to them."""
        self.models = new
        if self.face_worker:
            self.face_worker.replace_models(new.detector, new.face)
        if self.speech_worker:
            self.speech_worker.replace_models(new.speech)

    def replacement(self, old: Any) -> Any:
        """The supervisor's `replace`: a fresh, not yet started thread for one that died or hung.

        A stage loads its models again (an interpreter must not be used by two threads, and the hung one may still
        be inside its call): UserError when they no longer load. A capture source keeps its device and buffer.
        """
        if not isinstance(old, Worker):
            return old.fresh()
        old.retire()
        if old is self.face_worker:
            self.models = Models(load_detector(self.config), load_face_model(self.config), self.models.speech)
            self.face_worker = fresh = self._face_worker()
        else:
            self.models = Models(self.models.detector, self.models.face, load_speech_model(self.config))
            self.speech_worker = fresh = self._speech_worker()
        fresh.carry_over(old)
        return fresh


def fusion_loop(f: FusionConfig, state: DeviceState, on_window: Callable[[WindowResult], None]) -> FusionLoop:
    """Windows of `f.window_s` under the configured rule; `state` is told each window's verdict."""
    rule = FusionRule(f.method, f.face_weight, f.speech_weight, f.min_confidence)
    return FusionLoop(Windower(f.window_s, rule), state, on_window, absent_after_s=f.absent_after_s)


def mqtt_session(config: Config, outbox: Outbox, broker: tuple[str, int] | None, replay: bool) -> MqttSession:
    """The broker session that delivers from `outbox`: to `broker`, or to the configured node(s) (mqtt.hosts fails
    over between them). A replay may run beside the live daemon of the same device: with the same client id the
    broker would disconnect one for the other, over and over, so it takes its own."""
    # paho (and with it urllib, http.client, email: about 2 MB) only when there is a broker to talk to: a replay
    # with --no-mqtt, classify and bench never load it
    from .mqtt import MqttSession, client_id_of

    (host, port), *failover = [broker] if broker else config.mqtt.nodes()
    client_id = f"{client_id_of(config)}-replay-{os.getpid()}" if replay else None
    return MqttSession(
        config,
        outbox,
        host,
        port,
        config.outbox.drain_rate_per_s,
        client_id,
        owns_availability=not replay,
        replay=replay,
        failover=failover,
    )


def web_server(
    config: Config,
    state_dir: Path,
    snapshot: Callable[[], dict[str, Any]],
    controls: Controls | None,
    history: History | None,
    tuning: Tuning,
) -> Any:
    """The device page. `controls` None: a replay, which obeys no switches (its file sources run to the end), so its
    page offers none rather than one that lies."""
    from .history import HistoryReader
    from .web.server import WebServer  # only when the page is on: its imports cost memory

    names = ["face_emotion", "speech_emotion"] + (["face_detector"] if config.face.detector == "blazeface" else [])
    cards = {n: config.model_path(n).with_suffix(".md") for n in names}
    reader = HistoryReader(state_dir, history) if history else None  # its reads commit what waits
    return WebServer(config, state_dir, snapshot, controls, reader, cards, tuning=tuning)
