"""`emotion-edge bench`: median time per stage on real media, and the peak memory of a process with every model loaded.

The face path is timed on 640×480 frames (the frame is resized to that size,
as a typical USB camera delivers it), sampled at `face.rate_hz` like the daemon's:
once with the detector on every frame, once as configured (`face.detect_every`,
faces followed between detections); the speech path per second of audio, and the voice gate alone on a quiet
room with no voice (where it spends most of its time).
"""

from __future__ import annotations

import platform
import resource
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np

from .audio.features import SAMPLE_RATE, pcm16_to_float
from .audio.vad import Gate
from .capture.files import probe_video, read_wav
from .capture.sampling import sampled_frames
from .config import Config
from .errors import UserError
from .models import Models, load_models
from .runtime import interpreter_class
from .vision.tracking import FaceTracker


def cpu_model() -> str:
    """The CPU's name as the kernel reports it (x86 'model name'; many ARM boards give only 'Model' or nothing)."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or "unknown"
    for key in ("model name", "Model", "Hardware"):
        for line in info.splitlines():
            if line.startswith(key) and ":" in line:
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def _median_ms(samples: list[float]) -> float:
    return round(statistics.median(samples) * 1000, 3) if samples else float("nan")


def _mean_ms(samples: list[float]) -> float:
    return round(statistics.fmean(samples) * 1000, 3) if samples else float("nan")


def _time_face_path(models: Models, video: Path, n: int, rate_hz: float, detect_every: int) -> dict[str, list[float]]:
    """Seconds per frame to find faces, and (frames with a face) to classify the largest and for both, over `n`
    640x480 frames of the clip (looped) as the face stage samples them. Frames are decoded one at a time, so that
    peak memory is the daemon's, not a frame cache's."""
    tracker = FaceTracker(models.detector, detect_every)
    t: dict[str, list[float]] = {"find": [], "classify": [], "total": []}
    for img in sampled_frames(video, rate_hz, n, loop=True, size=(640, 480)):
        t0 = time.perf_counter()
        found = tracker.detect(img)
        t1 = time.perf_counter()
        if found:
            models.face.classify(models.face.pre.crop(img, found[0].box))
            t2 = time.perf_counter()
            t["classify"].append(t2 - t1)
            t["total"].append(t2 - t0)
        t["find"].append(t1 - t0)
    if not t["find"]:
        raise UserError(f"{video}: no frames to time")
    return t


def _time_idle_gate(config: Config, seconds: int = 30) -> tuple[list[float], float]:
    """Seconds per window of the voice gate on a quiet room (hiss and mains hum, no voice: what a microphone hears
    most of the day), and its CPU seconds per second of audio (Silero's worker threads included)."""
    t = np.arange(seconds * SAMPLE_RATE) / SAMPLE_RATE
    room = 0.003 * np.random.default_rng(0).standard_normal(t.size) + 0.003 * np.sin(2 * np.pi * 50 * t)
    room = room.astype(np.float32)
    gate, n, out = Gate.from_config(config.speech), 2 * SAMPLE_RATE, []
    c0 = time.process_time()
    for start in range(0, room.size - n + 1, SAMPLE_RATE):
        t0 = time.perf_counter()
        gate.voiced(room[start : start + n], start)
        out.append(time.perf_counter() - t0)
    return out, (time.process_time() - c0) / seconds


def run_bench(config: Config, video: Path, audio: Path, frames: int = 200) -> dict[str, Any]:
    models = load_models(config)
    probe_video(video)
    rate, every = config.face.rate_hz, config.face.detect_every
    _time_face_path(models, video, 1, rate, 1)  # warm-up: the first invokes set up the interpreters
    full = _time_face_path(models, video, frames, rate, 1)
    tracked = _time_face_path(models, video, frames, rate, every)

    speech = models.speech
    x = pcm16_to_float(read_wav(audio, require_samples=True))
    n = speech.features.window_samples
    if len(x) < n:
        x = np.pad(x, (0, n - len(x)))
    feats, infer, gated = [], [], []
    gate = Gate.from_config(config.speech)
    stream = speech.new_stream()
    for start in range(0, len(x) - n + 1, SAMPLE_RATE):  # one window per second of audio, as the daemon's default hop
        w = x[start : start + n]
        t0 = time.perf_counter()
        gate.voiced(w, start)  # scores the second of audio this window adds (every window is timed as voiced)
        t1 = time.perf_counter()
        f = speech.features.compute(w)
        if stream is not None:
            f = stream.push(f)  # the per-stream normalisation (the daemon pushes voiced windows; all are timed here)
        t2 = time.perf_counter()
        speech.model.run(f.reshape(speech.model.inputs[0].shape))
        t3 = time.perf_counter()
        gated.append(t1 - t0)
        feats.append(t2 - t1)
        infer.append(t3 - t2)
    idle, idle_cpu = _time_idle_gate(config)
    _, runtime = interpreter_class()
    return {
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "cpu": cpu_model(),
        "runtime": runtime,
        "frames": len(full["find"]),
        "frames_with_face": len(full["total"]),
        # the detector on every frame: medians per stage
        "face_detect_ms": _median_ms(full["find"]),
        "face_classify_ms": _median_ms(full["classify"]),
        "face_path_ms": _median_ms(full["total"]),
        "face_path_mean_ms": _mean_ms(full["total"]),
        # as the daemon runs it (face.detect_every): a mean, since most frames follow and a few detect
        "face_rate_hz": rate,
        "face_detect_every": every,
        "face_path_tracked_ms": _mean_ms(tracked["total"]),
        "speech_windows": len(feats),
        "voice_gate_ms": _median_ms(gated[1:]),  # the first window scores 2 s of audio, the others 1 s each
        # on a quiet room with no voice, where the pre-gate lets Silero sleep: per second of audio
        "voice_gate_idle_ms": _median_ms(idle[1:]),
        "voice_gate_idle_cpu_ms": round(idle_cpu * 1000, 3),
        "speech_features_ms": _median_ms(feats),
        "speech_model_ms": _median_ms(infer),
        "speech_path_ms_per_audio_s": _median_ms([a + b + c for a, b, c in zip(gated, feats, infer, strict=True)]),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }
