"""Speech features: MFCCs (and optionally the voice's pitch) with deltas, or log mel band energies, normalised per
window or per stream.
Training imports this module, so there is no skew.

All parameters travel in the speech model's metadata (`preprocess` section);
`SAMPLE_RATE` is the one rate the daemon captures at and models are trained at.
"""

from __future__ import annotations

import decimal
import math
from dataclasses import asdict, dataclass
from functools import cached_property
from typing import Any

import numpy as np

from ..capture import SAMPLE_RATE  # the rate audio is captured at (also what training imports from here)

MAX_NORM_MEMORY = 100_000  # windows (more than a day of speech): beyond it a metadata value is a mistake

# Pitch tracking (`SpeechFeatures.pitch`): normalised autocorrelation at 8 kHz, the method of Boersma (1993) that
# Praat uses, without its path search. Praat itself (praat-parselmouth) added 73 MB of resident memory on import.
PITCH_RATE = 8_000  # Hz: pitch needs no more, and a quarter of the work of 16 kHz
PITCH_FLOOR, PITCH_CEILING = 60.0, 500.0  # Hz: deep men's to children's voices
PITCH_WINDOW = 3 / PITCH_FLOOR  # s: three periods of the lowest pitch, which the method needs to see one clearly
PITCH_VOICED = 0.45  # normalised autocorrelation peak at or above which a frame counts as voiced
PITCH_QUIET_DB = 30.0  # and at most this far below the loudest frame of the window (relative: level-independent)
# Per octave, in favour of the higher of two equally periodic candidates. Praat's default is 0.01, with a path search
# across frames that mends octave jumps; frame by frame, 0.1 was needed to stop halving gliding voices (tests).
PITCH_OCTAVE_COST = 0.1
PITCH_FILL_HZ = 150.0  # log f0 of a window with no voiced frame at all (between typical men's and women's voices)
PITCH_COLUMNS = ("log_f0", "voicing")  # appended after the MFCCs, before the deltas
# Bumped whenever pitch_track's output changes (2: exact MFCC frame steps, 50 ms window, between-lag peak). The
# metadata of features with pitch carries it: a model trained on another tracker's output is refused, and training's
# window caches (keyed on the metadata) never serve windows of an older tracker.
PITCH_TRACKER = 2


@dataclass(frozen=True)
class SpeechFeatures:
    """MFCC (or log mel band) front end. Defaults are the shipped speech model's except for the normalisation (a prior
    only training can give); the metadata is the source of truth at run time."""

    sample_rate: int = SAMPLE_RATE
    window_s: float = 2.0  # seconds of audio per model input
    winlen: float = 0.025  # analysis frame, s
    winstep: float = 0.010  # frame step, s
    numcep: int = 20  # unused with `mel`
    nfilt: int = 40
    nfft: int = 512  # >= winlen * sample_rate, else python_speech_features truncates frames
    preemph: float = 0.97
    deltas: bool = True  # append first and second derivatives
    # The voice's pitch (PITCH_COLUMNS) beside the MFCCs: after per-stream normalisation its rise and fall against the
    # speaker's usual pitch is much of how surprise, fear and sadness differ, and it is there in a low voice as much as
    # in a high one (20 MFCCs from 40 mel bands smear a low voice's harmonics). Models before it have no such field.
    pitch: bool = False
    # Log mel band energies (nfilt of them) in place of the MFCCs, for a network that convolves over frequency as well
    # as time: a lower voice is the same pattern moved down the mel axis, which such a net can follow and a net over
    # cepstra (the DCT of these bands) cannot. An image of time x frequency, so without deltas or pitch columns.
    mel: bool = False
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
            ("pitch", bool),
            ("mel", bool),
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
        if self.mel and (self.deltas or self.pitch):
            raise ValueError("mel (log mel bands, an image over time and frequency) takes neither deltas nor pitch: "
                             "set deltas and pitch to false")  # fmt: skip
        if self.pitch and self.frame_step % (self.sample_rate // PITCH_RATE):
            raise ValueError(f"pitch needs a frame step of whole {PITCH_RATE} Hz samples: winstep {self.winstep} s is "
                             f"{self.frame_step} samples at {self.sample_rate} Hz")  # fmt: skip
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
        pre = dict(pre)
        tracker = pre.pop("pitch_tracker", None)
        if pre.get("pitch") and tracker != PITCH_TRACKER:
            raise ValueError(f"the pitch features were made by pitch tracker version {tracker or 1}, this code computes "
                             f"version {PITCH_TRACKER}: train the model again with this version")  # fmt: skip
        if tracker is not None and not pre.get("pitch"):
            raise ValueError("pitch_tracker is set but pitch is off")
        unknown = set(pre) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown feature parameters: {', '.join(sorted(unknown))}")
        if isinstance(pre.get("norm_prior"), list):  # JSON has lists; the dataclass is frozen and hashable
            pre = {**pre, "norm_prior": tuple(pre["norm_prior"])}
        return cls(**pre)

    def to_meta(self) -> dict[str, Any]:
        meta = {**asdict(self), "norm_prior": [float(v) for v in self.norm_prior]}
        if self.pitch:
            meta["pitch_tracker"] = PITCH_TRACKER
        else:
            # Left out when off: a model without pitch has exactly the metadata it had before the field existed, so
            # older daemons (which refuse unknown fields) still load it and cached features keep their keys.
            del meta["pitch"]
        if not self.mel:
            del meta["mel"]  # the same
        return meta

    def stream(self) -> StreamNorm | None:
        """A fresh normaliser for one stream of audio (a microphone, a file), or None if the model needs none."""
        return StreamNorm(self) if self.norm_memory else None

    @property
    def window_samples(self) -> int:
        return int(round(self.window_s * self.sample_rate))

    @property
    def frame_step(self) -> int:
        """Samples from one MFCC frame to the next, rounded as python_speech_features rounds them."""
        return _round_half_up(self.winstep * self.sample_rate)

    @property
    def num_frames(self) -> int:
        """Frames per window, as python_speech_features counts them (it pads the last frame)."""
        frame_len = _round_half_up(self.winlen * self.sample_rate)
        return 1 + int(np.ceil((self.window_samples - frame_len) / self.frame_step))

    @property
    def num_features(self) -> int:
        if self.mel:
            return self.nfilt
        return (self.numcep + len(PITCH_COLUMNS) * self.pitch) * (3 if self.deltas else 1)

    @cached_property
    def _dither(self) -> np.ndarray:
        # A little fixed noise keeps log energies finite on digital silence (same values every window).
        return 1e-5 * np.random.default_rng(0).standard_normal(self.window_samples)

    @cached_property
    def _filterbank(self) -> np.ndarray:
        return _filterbanks(self.nfilt, self.nfft, self.sample_rate, 0, self.sample_rate / 2)

    @cached_property
    def _dct(self) -> np.ndarray:
        return _dct_matrix(self.nfilt)

    def _power_spectrum(self, x: np.ndarray) -> np.ndarray:
        """Pre-emphasis, framing, power spectrum: (frames, nfft // 2 + 1), as python_speech_features computes it."""
        frames = _framesig(
            np.append(x[0], x[1:] - self.preemph * x[:-1]),  # pre-emphasis
            self.winlen * self.sample_rate,
            self.winstep * self.sample_rate,
        )
        return 1.0 / self.nfft * np.square(np.absolute(np.fft.rfft(frames, self.nfft)))

    def _log_mel(self, pspec: np.ndarray) -> np.ndarray:
        feat = pspec @ self._filterbank.T
        return np.log(np.where(feat == 0, np.finfo(float).eps, feat))  # as psf: zeros become eps (log of 0)

    def log_mel(self, x: np.ndarray) -> np.ndarray:
        """(frames, nfilt) log mel band energies: the log of `python_speech_features.fbank(x, …, winfunc=np.hamming)`'s
        first output with our parameters (its `logfbank` takes no window; the MFCCs' Hamming window is kept)."""
        return self._log_mel(self._power_spectrum(x))

    def mfcc(self, x: np.ndarray) -> np.ndarray:
        """`python_speech_features.mfcc(x, …, appendEnergy=True, winfunc=np.hamming)` with our parameters, step by step
        with the same operations, so that the mel filterbank is built once instead of on every call."""
        pspec = self._power_spectrum(x)
        energy = pspec.sum(axis=1)
        energy = np.where(energy == 0, np.finfo(float).eps, energy)  # exactly as psf: zeros become eps (log of 0)
        feat = _lifter((self._log_mel(pspec) @ self._dct)[:, : self.numcep], 22)
        feat[:, 0] = np.log(energy)
        return feat

    @cached_property
    def _pitch_window(self) -> tuple[np.ndarray, np.ndarray, int, int]:
        """Hann window, its own normalised autocorrelation (which the signal's is divided by), FFT size, hop (8 kHz)."""
        n = int(round(PITCH_WINDOW * PITCH_RATE))
        hann = np.hanning(n)
        nfft = 1 << int(np.ceil(np.log2(n + PITCH_RATE / PITCH_FLOOR)))  # no circular wrap within the lags we search
        w_ac = np.fft.irfft(np.abs(np.fft.rfft(hann, nfft)) ** 2)[:n]
        return hann, w_ac / w_ac[0], nfft, self.frame_step * PITCH_RATE // self.sample_rate  # exact: __post_init__

    def pitch_track(self, x: np.ndarray, num_frames: int) -> np.ndarray:
        """(num_frames, 2): log f0 in Hz and the voicing strength (0-1) of the frames `mfcc` cut from `x`, each pitch
        window centred on its MFCC frame. Unvoiced frames take the log f0 of the voiced frames around them (linear in
        between, held at the ends), so that the contour is continuous and a pause does not read as a pitch jump."""
        # Imported here, with pitch on only: scipy.signal adds about 50 MB of RSS to the daemon (192.6 -> 141 MB).
        from scipy.signal import resample_poly

        hann, w_ac, nfft, hop = self._pitch_window
        n = len(hann)
        y = resample_poly(x, PITCH_RATE, self.sample_rate)
        centre = self.winlen * PITCH_RATE / 2  # first MFCC frame's centre, in 8 kHz samples
        start = int(round(centre - n / 2))
        pad_left = max(0, -start)
        need = start + pad_left + (num_frames - 1) * hop + n
        y = np.pad(y, (pad_left, max(0, need - pad_left - len(y))))
        rows = np.arange(num_frames)
        idx = (start + pad_left) + hop * rows[:, None] + np.arange(n)[None, :]
        frames = y[idx]
        frames = (frames - frames.mean(axis=1, keepdims=True)) * hann
        ac = np.fft.irfft(np.abs(np.fft.rfft(frames, nfft, axis=1)) ** 2, axis=1)[:, :n]
        energy = ac[:, 0]
        lo, hi = int(PITCH_RATE / PITCH_CEILING), int(np.ceil(PITCH_RATE / PITCH_FLOOR))
        lags = np.arange(lo, hi + 1)
        r_pad = ac[:, lo - 1 : hi + 2] / (energy[:, None] + 1e-12) / w_ac[lo - 1 : hi + 2]  # one lag more each side
        # Candidates are peaks of the autocorrelation only: at the shortest lag, the slope of the lag-0 peak of a dull
        # sound (a frame that is mostly pause) would otherwise read as a 500 Hz voice.
        peak = (r_pad[:, 1:-1] > r_pad[:, :-2]) & (r_pad[:, 1:-1] >= r_pad[:, 2:])
        r = r_pad[:, 1:-1]
        score = np.where(peak, r - PITCH_OCTAVE_COST * np.log2(PITCH_FLOOR * lags / PITCH_RATE), -np.inf)
        best = score.argmax(axis=1)
        strength = np.where(peak.any(axis=1), np.clip(r[rows, best], 0.0, 1.0), 0.0)
        loud = energy >= energy.max() * 10 ** (-PITCH_QUIET_DB / 10)
        voiced = (strength >= PITCH_VOICED) & loud
        # The peak between lags, from the parabola through it and its neighbours: a whole 8 kHz lag is 3 % of a
        # 250 Hz period, more than the pitch moves between two frames.
        left, mid, right = r_pad[rows, best], r_pad[rows, best + 1], r_pad[rows, best + 2]
        curve = left - 2 * mid + right
        shift = np.where(curve < 0, 0.5 * (left - right) / np.where(curve < 0, curve, -1.0), 0.0)
        log_f0 = np.log(PITCH_RATE / (lags[best] + np.clip(shift, -0.5, 0.5)))
        if voiced.any():
            at = np.flatnonzero(voiced)
            log_f0 = np.interp(rows, at, log_f0[at])
        else:
            log_f0 = np.full(num_frames, np.log(PITCH_FILL_HZ))
        return np.stack([log_f0, np.where(loud, strength, 0.0)], axis=1)

    def compute(self, audio: np.ndarray) -> np.ndarray:
        """Features of one window of mono float audio in [-1, 1] at `sample_rate`: float32 (num_frames, num_features).

        With `norm_memory` they are not normalised yet: the stream's `StreamNorm.push` does that."""
        if audio.shape != (self.window_samples,):
            raise ValueError(f"expected {self.window_samples} mono samples, got shape {audio.shape}")
        x = audio.astype(np.float64) + self._dither
        feat = self.log_mel(x) if self.mel else self.mfcc(x)
        if self.pitch:
            feat = np.concatenate([feat, self.pitch_track(x, len(feat))], axis=1)
        if self.deltas:
            d1 = _delta(feat, 2)
            feat = np.concatenate([feat, d1, _delta(d1, 2)], axis=1)
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


# ---------------------------------------------------------------- python_speech_features 0.6, without scipy
# The library's MFCC steps, operation for operation (their results are equal to the last bit, tests/test_features.py),
# except the DCT: python_speech_features imports scipy for it, and scipy costs the daemon 25 MB of RSS and 0.3 s of
# start-up (it pulls in scipy.special, linalg and sparse). A matrix product gives the same orthonormal DCT-II to
# within 1e-12.


def _round_half_up(number: float) -> int:
    return int(decimal.Decimal(number).quantize(decimal.Decimal("1"), rounding=decimal.ROUND_HALF_UP))


def _framesig(sig: np.ndarray, frame_len: float, frame_step: float) -> np.ndarray:
    """Overlapping Hamming-windowed frames; the last one padded with zeros."""
    slen, frame_len, frame_step = len(sig), _round_half_up(frame_len), _round_half_up(frame_step)
    numframes = 1 if slen <= frame_len else 1 + int(math.ceil((1.0 * slen - frame_len) / frame_step))
    padlen = int((numframes - 1) * frame_step + frame_len)
    padsignal = np.concatenate((sig, np.zeros((padlen - slen,))))
    # The library's frames, as a strided view of the signal instead of a gather through a tiled index array built
    # on every call: the same samples times the same window, bit for bit.
    frames = np.lib.stride_tricks.sliding_window_view(padsignal, frame_len)[::frame_step][:numframes]
    return frames * np.hamming(frame_len)


def _filterbanks(nfilt: int, nfft: int, samplerate: int, lowfreq: float, highfreq: float) -> np.ndarray:
    """Triangular mel filters, one per row, over the nfft // 2 + 1 bins."""
    melpoints = np.linspace(2595 * np.log10(1 + lowfreq / 700.0), 2595 * np.log10(1 + highfreq / 700.0), nfilt + 2)
    bins = np.floor((nfft + 1) * (700 * (10 ** (melpoints / 2595.0) - 1)) / samplerate)
    fbank = np.zeros([nfilt, nfft // 2 + 1])
    for j in range(0, nfilt):
        for i in range(int(bins[j]), int(bins[j + 1])):
            fbank[j, i] = (i - bins[j]) / (bins[j + 1] - bins[j])
        for i in range(int(bins[j + 1]), int(bins[j + 2])):
            fbank[j, i] = (bins[j + 2] - i) / (bins[j + 2] - bins[j + 1])
    return fbank


def _dct_matrix(n: int) -> np.ndarray:
    """M such that `x @ M` is the orthonormal DCT-II of each row of x (scipy's `dct(x, type=2, norm="ortho")`)."""
    k, i = np.arange(n)[None, :], np.arange(n)[:, None]
    m = np.cos(np.pi * k * (2 * i + 1) / (2 * n)) * np.sqrt(2.0 / n)
    m[:, 0] /= np.sqrt(2.0)
    return m


def _lifter(cepstra: np.ndarray, L: int = 22) -> np.ndarray:  # noqa: N803 (the library's name)
    n = np.arange(np.shape(cepstra)[1])
    return (1 + (L / 2.0) * np.sin(np.pi * n / L)) * cepstra


def _delta(feat: np.ndarray, N: int) -> np.ndarray:  # noqa: N803
    """Delta coefficients over ±N frames, the edges repeated."""
    denominator = 2 * sum([i**2 for i in range(1, N + 1)])
    padded = np.pad(np.asarray(feat, dtype=np.float64), ((N, N), (0, 0)), mode="edge")
    T = len(feat)  # noqa: N806
    # python_speech_features' sum over the 2N+1 neighbours of each frame, one shifted slice per offset instead of a
    # dot product per frame (400 small calls per window); in float64 like the dot product, then the input's type.
    delta_feat = sum(k * (padded[N + k : N + k + T] - padded[N - k : N - k + T]) for k in range(1, N + 1))
    return (delta_feat / denominator).astype(feat.dtype, copy=False)
