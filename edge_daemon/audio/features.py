"""Speech features: MFCCs with deltas, normalised per window or per stream. Training imports this module, so there
is no skew.

All parameters travel in the speech model's metadata (`preprocess` section);
`SAMPLE_RATE` is the one rate the daemon captures at and models are trained at.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from functools import cached_property
from typing import Any

import numpy as np
import python_speech_features as psf
from python_speech_features import sigproc
from scipy.fftpack import dct

SAMPLE_RATE = 16_000  # Hz, mono; microphones are opened at this rate and training resamples to it
MAX_NORM_MEMORY = 100_000  # windows (more than a day of speech): beyond it a metadata value is a mistake


@dataclass(frozen=True)
class SpeechFeatures:
    """MFCC front end. Defaults are the shipped speech model's except for the normalisation (a prior only training can
    give); the metadata is the source of truth at run time."""

    sample_rate: int = SAMPLE_RATE
    window_s: float = 2.0  # seconds of audio per model input
    winlen: float = 0.025  # analysis frame, s
    winstep: float = 0.010  # frame step, s
    numcep: int = 20
    nfilt: int = 40
    nfft: int = 512  # >= winlen * sample_rate, else python_speech_features truncates frames
    preemph: float = 0.97
    deltas: bool = True  # append first and second derivatives
    cmvn: bool = True  # per-window mean/variance normalisation: removes level and channel colour
    # Per-stream normalisation instead (`StreamNorm`): each window is normalised by the running mean and standard
    # deviation of the last `norm_memory` windows this stream classified, starting from the training frames' statistics
    # (`norm_prior`: the num_features means, then the num_features standard deviations) worth `norm_prior_weight`
    # windows. Unlike per-window CMVN it keeps how loud and bright this window is against the speaker's own usual
    # voice, which is where much of emotion is.
    norm_memory: int = 0  # windows; 0 = off (per-window `cmvn` or none)
    norm_prior_weight: float = 3.0
    norm_prior: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        for name, kind in (
            ("sample_rate", int),
            ("numcep", int),
            ("nfilt", int),
            ("nfft", int),
            ("deltas", bool),
            ("cmvn", bool),
        ):
            value = getattr(self, name)
            if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
                raise TypeError(f"{name} must be {kind.__name__}, got {value!r}")
        for name in ("window_s", "winlen", "winstep", "preemph", "norm_prior_weight"):
            if isinstance(getattr(self, name), bool) or not isinstance(getattr(self, name), (int, float)):
                raise TypeError(f"{name} must be a number, got {getattr(self, name)!r}")
        if self.sample_rate != SAMPLE_RATE:
            raise ValueError(f"sample_rate {self.sample_rate}: the daemon captures at {SAMPLE_RATE} Hz")
        if not (0.2 <= self.window_s <= 30 and 0.001 <= self.winstep <= self.winlen <= 0.2 and 0 <= self.preemph < 1):
            raise ValueError("window_s, winlen, winstep or preemph out of range")
        if not (1 <= self.numcep <= self.nfilt <= 128 and self.winlen * self.sample_rate <= self.nfft <= 8192):
            raise ValueError("numcep, nfilt or nfft out of range (numcep <= nfilt, nfft >= one frame)")
        if isinstance(self.norm_memory, bool) or not isinstance(self.norm_memory, int):
            raise TypeError(f"norm_memory must be a whole number of windows, got {self.norm_memory!r}")
        if not 0 <= self.norm_memory <= MAX_NORM_MEMORY:
            raise ValueError(f"norm_memory must be 0 (off) to {MAX_NORM_MEMORY} windows, got {self.norm_memory}")
        if not isinstance(self.norm_prior, (tuple, list)) or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in self.norm_prior
        ):
            raise TypeError("norm_prior must be a list of numbers")
        if self.norm_prior and not self.norm_memory:
            raise ValueError("norm_prior is set but norm_memory is 0: a prior without per-stream normalisation")
        if self.norm_memory:
            prior = np.asarray(self.norm_prior, dtype=float)
            if self.cmvn:
                raise ValueError("norm_memory (per-stream normalisation) and cmvn (per-window) exclude each other")
            if (
                prior.shape != (2 * self.num_features,)
                or not np.all(np.abs(prior) < 1e6)  # finite, and far from overflowing when squared
                or np.any(prior[self.num_features :] <= 0)
            ):
                raise ValueError(f"norm_prior must hold {self.num_features} means and {self.num_features} positive "
                                 "standard deviations")  # fmt: skip
            if not 0 < self.norm_prior_weight <= self.norm_memory:
                raise ValueError("norm_prior_weight must be in (0, norm_memory]")

    @classmethod
    def from_meta(cls, pre: dict[str, Any]) -> SpeechFeatures:
        """Raises one of modelmeta.SPEC_ERRORS if a parameter is unknown, mistyped or out of range."""
        unknown = set(pre) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown feature parameters: {', '.join(sorted(unknown))}")
        if isinstance(pre.get("norm_prior"), list):  # JSON has lists; the dataclass is frozen and hashable
            pre = {**pre, "norm_prior": tuple(pre["norm_prior"])}
        return cls(**pre)

    def to_meta(self) -> dict[str, Any]:
        return {**asdict(self), "norm_prior": [float(v) for v in self.norm_prior]}

    def stream(self) -> StreamNorm | None:
        """A fresh normaliser for one stream of audio (a microphone, a file), or None if the model needs none."""
        return StreamNorm(self) if self.norm_memory else None

    @property
    def window_samples(self) -> int:
        return int(round(self.window_s * self.sample_rate))

    @property
    def num_frames(self) -> int:
        """Frames per window, as python_speech_features counts them (it pads the last frame)."""
        frame_len = int(round(self.winlen * self.sample_rate))
        step = int(round(self.winstep * self.sample_rate))
        return 1 + int(np.ceil((self.window_samples - frame_len) / step))

    @property
    def num_features(self) -> int:
        return self.numcep * (3 if self.deltas else 1)

    @cached_property
    def _dither(self) -> np.ndarray:
        # A little fixed noise keeps log energies finite on digital silence (same values every window).
        return 1e-5 * np.random.default_rng(0).standard_normal(self.window_samples)

    @cached_property
    def _filterbank(self) -> np.ndarray:
        return psf.get_filterbanks(self.nfilt, self.nfft, self.sample_rate, 0, self.sample_rate / 2)

    def mfcc(self, x: np.ndarray) -> np.ndarray:
        """`python_speech_features.mfcc(x, …, appendEnergy=True, winfunc=np.hamming)` with our parameters, step by step
        with the same library functions, so that the mel filterbank is built once instead of on every call."""
        frames = sigproc.framesig(
            sigproc.preemphasis(x, self.preemph),
            self.winlen * self.sample_rate,
            self.winstep * self.sample_rate,
            np.hamming,
        )
        pspec = sigproc.powspec(frames, self.nfft)
        eps = np.finfo(float).eps
        energy = pspec.sum(axis=1)
        energy = np.where(energy == 0, eps, energy)  # exactly as psf: zeros become eps (log of 0)
        feat = pspec @ self._filterbank.T
        feat = np.log(np.where(feat == 0, eps, feat))
        feat = psf.lifter(dct(feat, type=2, axis=1, norm="ortho")[:, : self.numcep], 22)
        feat[:, 0] = np.log(energy)
        return feat

    def compute(self, audio: np.ndarray) -> np.ndarray:
        """Features of one window of mono float audio in [-1, 1] at `sample_rate`: float32 (num_frames, num_features).

        With `norm_memory` they are not normalised yet: the stream's `StreamNorm.push` does that."""
        if audio.shape != (self.window_samples,):
            raise ValueError(f"expected {self.window_samples} mono samples, got shape {audio.shape}")
        feat = self.mfcc(audio.astype(np.float64) + self._dither)
        if self.deltas:
            d1 = psf.delta(feat, 2)
            feat = np.concatenate([feat, d1, psf.delta(d1, 2)], axis=1)
        if self.cmvn:
            feat = (feat - feat.mean(axis=0)) / (feat.std(axis=0) + 1e-6)
        return feat.astype(np.float32)


class StreamNorm:
    """The running normalisation of one stream: every window updates the mean and variance, then is normalised by them.

    The estimate is a running average over the stream's windows (the prior weighs as much as `norm_prior_weight`
    windows at the start), which becomes an exponential one with a time constant of `norm_memory` windows: at the
    daemon's 1 s hop, after about that many seconds of speech it describes the person speaking, and it follows a new
    speaker or a changed microphone gain within about as long. Only windows the voice gate passed should be pushed:
    silence says nothing about a voice. One stream, one thread: the state is not locked.
    """

    def __init__(self, features: SpeechFeatures) -> None:
        self.features = features
        prior = np.asarray(features.norm_prior, dtype=np.float64).reshape(2, features.num_features)
        self._prior_mean, self._prior_sq = prior[0], prior[1] ** 2 + prior[0] ** 2
        self._memory, self._prior_weight = float(features.norm_memory), float(features.norm_prior_weight)
        self.reset()

    def reset(self) -> None:
        self.mean, self.sq = self._prior_mean.copy(), self._prior_sq.copy()
        self.weight = self._prior_weight

    def push(self, frames: np.ndarray) -> np.ndarray:
        """Update with one window's un-normalised frames (from `compute`), then return them normalised (float32)."""
        a = 1.0 / (self.weight + 1.0)
        f = frames.astype(np.float64)
        self.mean += a * (f.mean(axis=0) - self.mean)
        self.sq += a * ((f * f).mean(axis=0) - self.sq)
        self.weight = min(self.weight + 1.0, self._memory)
        std = np.sqrt(np.maximum(self.sq - self.mean**2, 1e-8))
        return ((f - self.mean) / (std + 1e-6)).astype(np.float32)


def pcm16_to_float(pcm: np.ndarray) -> np.ndarray:
    """int16 PCM to float32 in [-1, 1)."""
    return pcm.astype(np.float32) / 32768.0
