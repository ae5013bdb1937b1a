"""The models the daemon runs: loading them as the config names them, checking them against their metadata, and
noticing when their files change.

`run` (and its reload on SIGHUP or a copied file), `replay`, `classify`, `bench` and `check` all load models
here, so a model that one of them accepts is a model all of them accept.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .audio.emotion import SpeechEmotionModel
from .config import Config
from .vision.detector import make_detector
from .vision.emotion import FaceEmotionModel


@dataclass
class Models:
    detector: Any
    face: FaceEmotionModel
    speech: SpeechEmotionModel

    def versions(self) -> dict[str, str]:
        v = {"face_emotion": self.face.meta.version, "speech_emotion": self.speech.meta.version}
        meta = getattr(self.detector, "meta", None)
        v["face_detector"] = meta.version if meta else "opencv-haar"
        return v


def load_detector(config: Config) -> Any:
    """The face detector the config asks for (`face.*`, `models.face_detector`)."""
    return make_detector(
        config.face.detector,
        config.model_path("face_detector") if config.face.detector == "blazeface" else None,
        min_face_px=config.face.min_face_px,
        max_faces=config.face.max_faces,
        score_threshold=config.face.detection_threshold,
        num_threads=config.models.num_threads,
        tiles=config.face.tiles,
    )


def load_face_model(config: Config) -> FaceEmotionModel:
    return FaceEmotionModel(config.model_path("face_emotion"), config.models.num_threads, config.fusion.calm_as)


def load_speech_model(config: Config) -> SpeechEmotionModel:
    return SpeechEmotionModel(config.model_path("speech_emotion"), config.models.num_threads, config.fusion.calm_as)


def load_models(config: Config) -> Models:
    """Every model the config names, checked against its metadata (UserError on any mismatch)."""
    return Models(load_detector(config), load_face_model(config), load_speech_model(config))


def model_files(config: Config) -> list[Path]:
    """The metadata files the config names, and the model files they name."""
    names = ["face_emotion", "speech_emotion"] + (["face_detector"] if config.face.detector == "blazeface" else [])
    paths = [config.model_path(n) for n in names]
    return paths + [p.with_suffix(".tflite") for p in paths]


class FileWatch:
    """Notices when files change, once they have stopped changing (a copy in progress is not a change yet)."""

    def __init__(self, paths: list[Path]) -> None:
        self.paths = paths
        self._loaded = self._previous = self._snapshot()

    def _snapshot(self) -> tuple[tuple[int, int], ...]:
        out = []
        for p in self.paths:
            try:
                st = p.stat()
                out.append((st.st_mtime_ns, st.st_size))
            except OSError:
                out.append((0, 0))
        return tuple(out)

    def changed(self) -> bool:
        now = self._snapshot()
        stable, self._previous = now == self._previous, now
        if stable and now != self._loaded:
            self._loaded = now
            return True
        return False
