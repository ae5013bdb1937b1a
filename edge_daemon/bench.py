"""`emotion-edge bench`: median time per stage on real media, and the peak memory of a process with every model loaded.

The face path is timed on 640×480 frames (the frame is resized to that size,
as a typical USB camera delivers it); the speech path per second of audio.
"""

from __future__ import annotations

import platform
import resource
import statistics
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from .audio.features import SAMPLE_RATE, pcm16_to_float
from .capture.files import probe_video, read_wav
from .config import Config
from .errors import UserError
from .models import load_models
from .runtime import interpreter_class


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


def run_bench(config: Config, video: Path, audio: Path, frames: int = 200) -> dict[str, Any]:
    models = load_models(config)
    probe_video(video)
    detect, classify, total, timed = [], [], [], 0
    cap = cv2.VideoCapture(str(video))
    try:
        while (
            timed < frames
        ):  # frames are decoded one at a time so that peak memory is the daemon's, not a frame cache's
            ok, img = cap.read()
            if not ok:
                if not timed and not cap.get(cv2.CAP_PROP_POS_FRAMES):
                    raise UserError(f"{video}: no frames to time")
                cap.set(cv2.CAP_PROP_POS_FRAMES, 0)  # loop a short clip
                continue
            img = cv2.resize(img, (640, 480))
            t0 = time.perf_counter()
            found = models.detector.detect(img)
            t1 = time.perf_counter()
            if found:
                models.face.classify(models.face.pre.crop(img, found[0].box))
                t2 = time.perf_counter()
                classify.append(t2 - t1)
                total.append(t2 - t0)
            detect.append(t1 - t0)
            timed += 1
    finally:
        cap.release()

    speech = models.speech
    x = pcm16_to_float(read_wav(audio, require_samples=True))
    n = speech.features.window_samples
    if len(x) < n:
        x = np.pad(x, (0, n - len(x)))
    feats, infer, gated = [], [], []
    gate = config.speech.gate()
    for start in range(0, len(x) - n + 1, SAMPLE_RATE):  # one window per second of audio, as the daemon's default hop
        w = x[start : start + n]
        t0 = time.perf_counter()
        gate.voiced(w, start)  # scores the second of audio this window adds (every window is timed as voiced)
        t1 = time.perf_counter()
        f = speech.features.compute(w)
        t2 = time.perf_counter()
        speech.model.run(f.reshape(speech.model.inputs[0].shape))
        t3 = time.perf_counter()
        gated.append(t1 - t0)
        feats.append(t2 - t1)
        infer.append(t3 - t2)
    _, runtime = interpreter_class()
    return {
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "cpu": cpu_model(),
        "runtime": runtime,
        "frames": timed,
        "frames_with_face": len(total),
        "face_detect_ms": _median_ms(detect),
        "face_classify_ms": _median_ms(classify),
        "face_path_ms": _median_ms(total),
        "speech_windows": len(feats),
        "voice_gate_ms": _median_ms(gated[1:]),  # the first window scores 2 s of audio, the others 1 s each
        "speech_features_ms": _median_ms(feats),
        "speech_model_ms": _median_ms(infer),
        "speech_path_ms_per_audio_s": _median_ms([a + b + c for a, b, c in zip(gated, feats, infer, strict=True)]),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }
