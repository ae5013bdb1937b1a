"""`emotion-edge classify`: the shipped models on single images and wav files, as the daemon runs them."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from .audio.emotion import SpeechEmotionModel
from .audio.features import pcm16_to_float
from .capture.files import read_wav
from .config import Config
from .errors import UserError
from .vision.detector import make_detector
from .vision.emotion import FaceEmotionModel


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
    model = FaceEmotionModel(config.model_path("face_emotion"), config.models.num_threads, config.fusion.calm_as)
    detector = None
    if detect:
        detector = make_detector(
            config.face.detector,
            config.model_path("face_detector") if config.face.detector == "blazeface" else None,
            min_face_px=config.face.min_face_px,
            max_faces=config.face.max_faces,
            score_threshold=config.face.detection_threshold,
        )
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
    model = SpeechEmotionModel(config.model_path("speech_emotion"), config.models.num_threads, config.fusion.calm_as)
    s = config.speech
    for path in paths:
        try:
            audio = pcm16_to_float(read_wav(path))
        except UserError as exc:
            yield {"path": str(path), "error": str(exc).removeprefix(f"{path}: ")}
            continue
        if audio.size == 0:
            yield {"path": str(path), "error": "the wav file holds no samples"}
            continue
        probs = model.classify_clip(audio, s.vad_min_level_db, s.vad_min_speech_fraction, s.hop_s)
        yield _result(path, model.labels, probs)
