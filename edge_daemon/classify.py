"""`emotion-edge classify`: the shipped models on single images and wav files, as the daemon runs them."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from .audio.features import pcm16_to_float
from .audio.vad import Gate
from .capture.files import read_wav
from .config import Config
from .errors import UserError
from .models import load_detector, load_face_model, load_speech_model


def _result(path: Path, labels: tuple[str, ...], probs: np.ndarray, **extra: Any) -> dict[str, Any]:
    i = int(np.argmax(probs))
    return {
        "path": str(path),
        "label": labels[i],
        "confidence": round(float(probs[i]), 4),
        "probs": {name: round(float(p), 4) for name, p in zip(labels, probs, strict=True)},
        **extra,
    }


def classify_faces(config: Config, paths: list[Path], detect: bool = True) -> Iterator[dict[str, Any]]:
    model = load_face_model(config)
    detector = load_detector(config) if detect else None
    for path in paths:
        image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        if image is None or image.size == 0:
            yield {"path": str(path), "error": "not a readable image"}
            continue
        if image.dtype != np.uint8:
            image = cv2.convertScaleAbs(image, alpha=255.0 / max(1, int(image.max())))
        if detector is None:
            yield _result(path, model.labels, model.classify(image))
            continue
        faces = detector.detect(image)
        if not faces:
            yield {"path": str(path), "label": None, "confidence": 0.0, "probs": None, "faces": 0}
            continue
        box = [round(v, 1) for v in faces[0].box]
        yield _result(
            path, model.labels, model.classify(model.pre.crop(image, faces[0].box)), faces=len(faces), box=box
        )


def classify_speech(config: Config, paths: list[Path]) -> Iterator[dict[str, Any]]:
    model = load_speech_model(config)
    s = config.speech
    for path in paths:
        try:
            audio = pcm16_to_float(read_wav(path, require_samples=True))
        except UserError as exc:
            yield {"path": str(path), "error": str(exc).removeprefix(f"{path}: ")}
            continue
        probs, voiced = model.classify_voiced(audio, Gate.from_config(s), s.hop_s)
        if probs is None:  # like a picture with no face: no voice, so no label rather than a guess about silence
            yield {"path": str(path), "label": None, "confidence": 0.0, "probs": None, "voiced_windows": 0}
            continue
        yield _result(path, model.labels, probs, voiced_windows=voiced)
