"""The face emotion model: a face crop in, probabilities over its labels out, as its metadata prescribes."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import UserError
from ..labels import canonical_matrix
from ..modelmeta import SPEC_ERRORS, load_model
from .preprocess import FacePreprocess


class FaceEmotionModel:
    def __init__(self, meta_path: Path, num_threads: int = 1, calm_as: str = "neutral") -> None:
        self.meta, self.model = load_model(meta_path, "face_emotion", num_threads)
        try:
            self.pre = FacePreprocess.from_meta(self.meta.preprocess)
            self.to_canonical = canonical_matrix(self.meta.labels, calm_as)
        except SPEC_ERRORS as exc:
            raise UserError(f"{self.meta.json_path}: field 'preprocess' or 'labels' is invalid ({exc})") from None
        want = (1, *self.pre.size, self.pre.channels)
        if self.model.inputs[0].shape != want:
            raise UserError(
                f"{self.meta.json_path}: 'preprocess' describes input {want} but the model takes {self.model.inputs[0].shape}"
            )

    @property
    def labels(self) -> tuple[str, ...]:
        return self.meta.labels

    def classify(self, face: np.ndarray) -> np.ndarray:
        """Calibrated probabilities over `labels` for one face crop (uint8, any size, gray or BGR)."""
        x = self.pre.prepare(face)[None]
        probs = self.model.run(x)[0][0]
        # As training measured it: the mean of the face and its mirror image, for the faces the first pass is unsure of.
        if self.pre.hflip_average and probs.max() < self.pre.hflip_below:
            probs = (probs + self.model.run(np.ascontiguousarray(x[:, :, ::-1]))[0][0]) / 2
        return self.meta.calibrate(probs)
