"""Perception workers and the fusion loop, the same for live capture and for replay.

    camera/video ─▶ LatestSlot ─▶ FaceWorker ───┐
                                                 ├─▶ predictions queue ─▶ FusionLoop ─▶ Outbox ─▶ MQTT
    mic/wav ─────▶ AudioRing ──▶ SpeechWorker ──┘

Each worker stamps predictions with stream time and reports `progress`, a
lower bound on the time of anything it will still produce. Replay closes a
window once every worker's progress has passed it (so results do not depend on
CPU speed); live closes it a fixed lag behind the clock.
"""

from __future__ import annotations

import copy
import logging
import math
import queue
import statistics
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .audio.emotion import SpeechEmotionModel
from .audio.features import SAMPLE_RATE, pcm16_to_float
from .audio.vad import Gate
from .capture.buffers import AudioRing, LatestSlot
from .capture.sampling import FrameSampler
from .devicestate import DeviceState
from .fusion import FaceResult, Prediction, Windower, WindowResult
from .labels import CANONICAL
from .vision.tracking import FaceTracker

logger = logging.getLogger(__name__)

PREDICTION_QUEUE = 1000  # bounded: a stalled fusion loop must not grow memory without limit


class Timings:
    """Recent durations per stage, for stats and `bench`."""

    def __init__(self, keep: int = 500) -> None:
        self._d: dict[str, deque[float]] = {}
        self._keep = keep
        self._lock = threading.Lock()

    def add(self, stage: str, ms: float) -> None:
        with self._lock:
            self._d.setdefault(stage, deque(maxlen=self._keep)).append(ms)

    def medians(self) -> dict[str, float]:
        with self._lock:
            return {k: round(statistics.median(v), 3) for k, v in self._d.items() if v}


class Worker(threading.Thread):
    COUNTERS: tuple[str, ...] = ()  # totals for `stats`, carried over to a worker that replaces this one

    def __init__(self, name: str, out: queue.Queue[Prediction], stop: threading.Event, timings: Timings) -> None:
        super().__init__(name=name, daemon=True)
        self.out, self.stop_event, self.timings = out, stop, timings
        self.progress = 0.0
        self.finished = threading.Event()
        self.error: BaseException | None = None  # what ended the loop, if it did not end normally
        self.heartbeat = time.monotonic()  # the supervisor reads it
        self._retired = False
        self._pending: tuple[Any, ...] | None = None  # new models, taken up between two inferences

    @property
    def running(self) -> bool:
        return not (self._retired or self.stop_event.is_set())

    def retire(self) -> None:
        """A replacement has taken over: if this thread ever comes back from where it hung, it goes quietly."""
        self._retired = True

    def carry_over(self, old: Worker) -> None:
        for name in self.COUNTERS:
            setattr(self, name, getattr(old, name))

    def replace_models(self, *models: Any) -> None:
        """Hand over reloaded models; the worker switches at the top of its next loop, never mid-inference."""
        self._pending = models

    def _take_pending(self) -> None:
        pending, self._pending = self._pending, None
        if pending is not None:
            self.use_models(*pending)

    def use_models(self, *models: Any) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    def emit(self, pred: Prediction) -> None:
        if not self._retired:
            self.out.put(pred)  # blocks only if fusion is far behind; the queue is bounded

    def run(self) -> None:
        try:
            self.loop()
        except Exception as exc:  # a bug or a broken runtime, not a user mistake: keep the traceback in the log
            logger.exception("%s stage failed", self.name)
            self.error = exc
        finally:
            self.progress = math.inf
            self.finished.set()

    def loop(self) -> None:  # pragma: no cover - overridden
        raise NotImplementedError


def room_vote(probs: list[np.ndarray], scores: list[float]) -> np.ndarray:
    """One frame's face vote: every face's probabilities, weighted by how sure the detector is that it is a face.

    Every person in view counts the same whatever their distance (a far face is as much a person in the room as a
    near one), while a doubtful detection (a poster, a pet) counts less. The count is bounded by face.max_faces.
    """
    w = np.asarray(scores, dtype=np.float64)
    w = w / w.sum() if w.sum() > 0 else np.full(len(probs), 1.0 / len(probs))
    return np.asarray(w @ np.stack(probs), dtype=probs[0].dtype)


class FaceWorker(Worker):
    """Samples frames at `rate_hz` of stream time, finds faces (detects them, or follows the last ones: tracking.py),
    classifies each."""

    COUNTERS = ("frames_analysed", "faces_seen", "face_detections")

    def __init__(
        self, slot: LatestSlot, detector: Any, model: Any, rate_hz: float, detect_every: int = 1, **kw: Any
    ) -> None:
        super().__init__("face", **kw)
        self.slot, self.rate_hz, self.detect_every = slot, rate_hz, detect_every
        slot.analyse_at(rate_hz)  # the sources convert only the frames this worker's sampler will take
        self.use_models(detector, model)
        self.frames_analysed = 0
        self.faces_seen = 0
        self.face_detections = 0  # detector runs; the other analysed frames followed the faces (vision/tracking.py)

    def use_models(self, detector: Any, model: Any) -> None:
        self.model = model
        self.tracker = FaceTracker(detector, self.detect_every)  # a new detector starts with a fresh detection

    def loop(self) -> None:
        sampler = FrameSampler(self.rate_hz)  # a fixed grid of stream time: replay picks the same frames at any speed
        last_t = 0.0
        while self.running:
            self.heartbeat = time.monotonic()
            self._take_pending()
            frame = self.slot.get(timeout=0.5)
            if frame is None:
                if self.slot.closed:
                    return
                continue
            if not sampler.take(frame.t):
                continue
            if frame.t - last_t > 2.0 / self.rate_hz:  # a gap (camera paused or reconnected): the faces are stale
                self.tracker.reset()
            last_t = frame.t
            t0 = time.perf_counter()
            faces = self.tracker.detect(frame.image)
            t1 = time.perf_counter()
            # (a follow that lost its face and fell back to the detector is timed with the detector)
            self.timings.add("face_detect" if self.tracker.detected else "face_track", (t1 - t0) * 1000)
            self.face_detections += self.tracker.detected
            self.frames_analysed += 1
            self.progress = frame.t
            if not faces:
                continue
            self.faces_seen += 1
            results, votes, weights = [], [], []
            for face in faces:  # the detector returns at most face.max_faces, largest first
                t2 = time.perf_counter()
                probs = self.model.classify(self.model.pre.crop(frame.image, face.box)) @ self.model.to_canonical
                self.timings.add("face_emotion", (time.perf_counter() - t2) * 1000)
                top = int(np.argmax(probs))
                box = tuple(int(round(v)) for v in face.box)
                results.append(FaceResult(box, CANONICAL[top], float(probs[top])))  # type: ignore[arg-type]
                votes.append(probs)
                weights.append(face.score)
            self.emit(Prediction("face", frame.t, room_vote(votes, weights), tuple(results)))


class SpeechWorker(Worker):
    """Slides a window of the model's length over the ring every `hop_s`, and classifies the voiced ones."""

    COUNTERS = ("windows", "voiced")

    def __init__(self, ring: AudioRing, model: SpeechEmotionModel, gate: Gate, hop_s: float, **kw: Any) -> None:
        super().__init__("speech", **kw)
        self.ring, self.gate = ring, gate
        self.rate = SAMPLE_RATE  # the ring's rate; models are checked to match it when they load
        self.hop = max(1, int(hop_s * self.rate))
        self.use_models(model)
        self.windows = 0
        self.voiced = 0
        self.first_sample = 0  # where the first window starts

    def carry_over(self, old: Worker) -> None:
        super().carry_over(old)
        self.first_sample = max(0, self.ring.total - self.n)  # a replacement goes on from now, not from the start
        if isinstance(old, SpeechWorker) and old.model.features == self.model.features and old.stream is not None:
            # A replacement still knows the voice it was hearing, in a copy: the retired thread, should it come back
            # from where it hung, must not push into the state this one uses.
            self.stream = copy.deepcopy(old.stream)

    def use_models(self, model: SpeechEmotionModel) -> None:
        self.model, self.n = model, model.features.window_samples  # a new model may use another window length
        # The microphone is one stream; its normaliser learns the voices it hears. A reloaded model starts afresh,
        # even from the same file: its prior and memory may differ, and a reload is rare.
        self.stream = model.new_stream()

    def loop(self) -> None:
        start = self.first_sample
        while self.running:
            self.heartbeat = time.monotonic()
            self._take_pending()
            self.progress = (start + self.n / 2) / self.rate
            buf = self.ring.read(start, self.n, timeout=0.5)
            if buf is None:
                total = self.ring.total
                if start < total - self.ring.capacity:  # we fell behind and the ring moved on: skip to the newest audio
                    start = max(0, total - self.n)
                elif self.ring.closed:
                    self._tail(start)
                    return
                continue
            self._classify(buf, start)
            start += self.hop
            self.ring.release(start)

    def _tail(self, start: int) -> None:
        """End of input: one last window flush with the end, if a real part of the audio was never covered."""
        total = self.ring.total
        covered = start - self.hop + self.n if start else 0
        if total - covered >= self.hop // 2 and total >= self.n:
            buf = self.ring.read(total - self.n, self.n, timeout=0)
            if buf is not None:
                self._classify(buf, total - self.n)

    def _classify(self, buf: np.ndarray, start: int) -> None:
        self.windows += 1
        audio = pcm16_to_float(buf)
        t0 = time.perf_counter()
        voiced = self.gate.voiced(audio, start)
        self.timings.add("voice_gate", (time.perf_counter() - t0) * 1000)
        if not voiced:
            return
        self.voiced += 1
        t0 = time.perf_counter()
        probs = self.model.classify_window(audio, self.stream)
        self.timings.add("speech_emotion", (time.perf_counter() - t0) * 1000)
        self.emit(Prediction("speech", (start + self.n / 2) / self.rate, probs @ self.model.to_canonical))


@dataclass
class FusionLoop:
    """Turns predictions into closed windows (events) and tells the device's state owner what happened."""

    windower: Windower
    state: DeviceState  # decides the state; the loop only reports windows, absence and the pause switch
    on_window: Callable[[WindowResult], None]
    predictions: queue.Queue[Prediction] = field(default_factory=lambda: queue.Queue(PREDICTION_QUEUE))
    absent_after_s: float = math.inf  # this long without a face or voiced speech: the state becomes `no_one`
    last_seen: float = 0.0  # stream time: the end of the last window that had a prediction

    def pump(self, watermark: float, wait_s: float = 0.1) -> int:
        """Take the queued predictions, close windows up to `watermark`; returns how many windows closed."""
        try:
            self.windower.add(self.predictions.get(timeout=wait_s))
            while True:
                self.windower.add(self.predictions.get_nowait())
        except queue.Empty:
            pass
        closed = self._emit(self.windower.close_until(watermark))
        # Windows without predictions produce nothing; only time passing can tell that everyone has left.
        # (An infinite watermark is the end of a replay, not an empty room.)
        if math.isfinite(watermark) and watermark - self.last_seen >= self.absent_after_s:
            self.state.absent(self.last_seen)
        return closed

    def set_paused(self, paused: bool, now: float) -> None:
        """Every modality off (or one back on): the state owner holds `paused` until a window or absence decides."""
        if paused:
            self.state.pause(now)
        else:
            self.state.resume(now)
            self.last_seen = max(self.last_seen, now)  # the absence timer starts again from the resume

    def flush(self) -> int:
        while True:
            try:
                self.windower.add(self.predictions.get_nowait())
            except queue.Empty:
                break
        return self._emit(self.windower.flush())

    def _emit(self, results: list[WindowResult]) -> int:
        for r in results:
            self.last_seen = max(self.last_seen, r.end)
            self.on_window(r)  # first: the state then carries this window's seq
            self.state.window(r)
        return len(results)
