"""Voice-activity gate: a cheap energy test that keeps silence from reaching the speech model.

Energy in 30 ms frames against a threshold that follows the room's noise
floor, so a fan or a hum does not count as speech. Training uses
`speech_fraction` to pick the windows it learns from, the same test the
daemon applies before it classifies.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

FRAME_S = 0.030


def frame_levels_db(audio: np.ndarray, sample_rate: int) -> np.ndarray:
    """RMS level in dBFS of consecutive 30 ms frames of float audio in [-1, 1]."""
    n = int(sample_rate * FRAME_S)
    frames = audio[: len(audio) // n * n].reshape(-1, n).astype(np.float64)
    rms = np.sqrt(np.mean(frames * frames, axis=1) + 1e-12)
    return 20.0 * np.log10(rms)


def speech_fraction(audio: np.ndarray, sample_rate: int, threshold_db: float) -> float:
    """Fraction of 30 ms frames louder than `threshold_db`."""
    levels = frame_levels_db(audio, sample_rate)
    return float(np.mean(levels > threshold_db)) if levels.size else 0.0


@dataclass
class VoiceGate:
    """Decides per window whether it holds enough speech to classify.

    The threshold is `margin_db` above a slowly tracked noise floor, and never
    below `min_level_db`, so a quiet room does not turn breathing into speech.
    """

    sample_rate: int
    min_level_db: float = -45.0
    margin_db: float = 12.0
    min_speech_fraction: float = 0.25
    noise_floor_db: float = -70.0

    def threshold_db(self) -> float:
        return max(self.min_level_db, self.noise_floor_db + self.margin_db)

    def is_speech(self, audio: np.ndarray) -> bool:
        levels = frame_levels_db(audio, self.sample_rate)
        if not levels.size:
            return False
        # The quietest tenth of frames estimates the floor; rise slowly, fall fast.
        quiet = float(np.percentile(levels, 10))
        rate = 0.05 if quiet > self.noise_floor_db else 0.5
        self.noise_floor_db += rate * (quiet - self.noise_floor_db)
        return float(np.mean(levels > self.threshold_db())) >= self.min_speech_fraction
