"""The speech emotion model: windows of audio in, probabilities over its labels out.

A clip (for `classify speech` and training's evaluation) is cut into windows
of the model's length every `hop_s`; the windows that pass the voice gate are
averaged. Where none passes, `classify_clip` (training's evaluation) falls back
to the most speech-like window, while `classify_voiced` (`classify speech`) says so
instead of guessing from silence.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import numpy as np

from ..errors import UserError
from ..labels import canonical_matrix
from ..modelmeta import SPEC_ERRORS, load_model
from .features import SpeechFeatures, StreamNorm
from .vad import Gate


class SpeechEmotionModel:
    def __init__(self, meta_path: Path, num_threads: int = 1, calm_as: str = "neutral") -> None:
        self.meta, self.model = load_model(meta_path, "speech_emotion", num_threads)
        try:
            self.features = SpeechFeatures.from_meta(self.meta.preprocess)
            self.to_canonical = canonical_matrix(self.meta.labels, calm_as)
            frames, feats = self.features.num_frames, self.features.num_features
        except SPEC_ERRORS as exc:
            raise UserError(f"{self.meta.json_path}: field 'preprocess' or 'labels' is invalid ({exc})") from None
        shape = self.model.inputs[0].shape
        if shape[1:3] != (frames, feats):
            raise UserError(
                f"{self.meta.json_path}: features give {self.features.num_frames}×{self.features.num_features} "
                f"but the model takes {shape}; export the model and metadata together"
            )
        self._input_shape = shape

    @property
    def labels(self) -> tuple[str, ...]:
        return self.meta.labels

    def new_stream(self) -> StreamNorm | None:
        """The state one stream of audio carries from window to window (None if this model normalises per window)."""
        return self.features.stream()

    def classify_window(self, audio: np.ndarray, stream: StreamNorm | None = None) -> np.ndarray:
        """Calibrated probabilities over `labels` for exactly one window of float audio in [-1, 1].

        `stream`: the normaliser of the stream this window belongs to (updated by it); without one, a model that
        normalises per stream sees the window as the first of a new stream."""
        x = self.features.compute(audio)
        if self.features.norm_memory:
            if stream is None:
                stream = StreamNorm(self.features)
            elif stream.features != self.features:
                raise ValueError("this stream's normaliser belongs to a model with other features")
            x = stream.push(x)
        return self.meta.calibrate(self.model.run(x.reshape(self._input_shape))[0][0])

    def classify_clip(
        self, audio: np.ndarray, gate: Gate, hop_s: float = 1.0, stream: StreamNorm | None = None
    ) -> np.ndarray:
        """Mean probabilities over a clip's windows; `stream` carries on from earlier clips (else a new stream).

        The fallback window of a clip the gate finds no voice in is pushed too (training's evaluation counts it)."""
        stream = self.new_stream() if stream is None else stream
        windows = clip_windows(audio, self.features, gate, hop_s)
        return np.mean([self.classify_window(w, stream) for w in windows], axis=0)

    def classify_voiced(
        self, audio: np.ndarray, gate: Gate, hop_s: float = 1.0, stream: StreamNorm | None = None
    ) -> tuple[np.ndarray | None, int]:
        """(mean probabilities over the voiced windows, how many there were); (None, 0) for a clip with no voice.

        A label for a silent clip would only be the model's guess about silence, reported with confidence.
        """
        voiced = [g.audio for g in gated_windows(audio, self.features, gate, hop_s) if g.voiced]
        if not voiced:
            return None, 0
        stream = self.new_stream() if stream is None else stream
        return np.mean([self.classify_window(w, stream) for w in voiced], axis=0), len(voiced)


class GatedWindow(NamedTuple):
    start: int  # sample of the clip where the window starts
    audio: np.ndarray
    voiced: bool  # the gate lets it through
    score: float  # its mean speech score (which window is most speech-like)


def clip_windows(audio: np.ndarray, features: SpeechFeatures, gate: Gate, hop_s: float = 1.0) -> list[np.ndarray]:
    """The windows of a clip that the gate lets through; the most speech-like window if none does."""
    gated = gated_windows(audio, features, gate, hop_s)
    voiced = [g.audio for g in gated if g.voiced]
    return voiced or [max(gated, key=lambda g: g.score).audio]


def gated_windows(audio: np.ndarray, features: SpeechFeatures, gate: Gate, hop_s: float = 1.0) -> list[GatedWindow]:
    """Every window of a clip, every `hop_s` and the tail, with the gate's verdict.

    The clip is scored as one stream from its start, as the daemon scores its microphone; a clip shorter than a
    window is centred in silence, as a live window would hold it."""
    n = features.window_samples
    if len(audio) < n:
        pad = n - len(audio)
        audio = np.pad(audio, (pad // 2, pad - pad // 2))
    hop = max(1, int(hop_s * features.sample_rate))
    starts = list(range(0, len(audio) - n + 1, hop))
    if starts[-1] != len(audio) - n:
        starts.append(len(audio) - n)  # cover the tail too
    scores = gate.chunk_scores(audio)
    out = []
    for s in starts:
        inside = gate.window_scores(scores, s, n)
        out.append(
            GatedWindow(s, audio[s : s + n], gate.enough(inside), float(np.mean(inside)) if inside.size else 0.0)
        )
    return out
