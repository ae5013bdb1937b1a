"""Bounded, typed hand-offs between the capture threads and the perception workers.

Live capture never waits for perception: the latest-frame slot keeps only the
newest frame and the audio ring overwrites its oldest samples (both count what
they drop). Replay sets `lossless`, so the producer waits instead and every
frame and sample is processed: the same code path, minus the dropping.
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass

import numpy as np

from .sampling import FrameSampler


@dataclass(frozen=True)
class Frame:
    image: np.ndarray  # BGR (or gray) uint8
    t: float  # stream seconds
    index: int  # frames captured so far, from 0


class LatestSlot:
    """Holds at most one frame. `put` replaces (live) or waits for the reader (lossless).

    The reader may say which frames it will analyse (`analyse_at`); the producer then asks `due(t)` before it turns
    a captured frame into an image, and skips the others undecoded: converting a frame to BGR and copying it out
    costs as much as decoding it, and at 5 Hz of analysis a 30 fps camera's other 25 frames a second were converted
    only to be thrown away. `dropped` counts frames that were due and replaced before the reader took them.
    """

    def __init__(self, lossless: bool = False) -> None:
        self._cond = threading.Condition()
        self._frame: Frame | None = None
        self._closed = False
        self.lossless = lossless
        self.dropped = 0
        self._sampler: FrameSampler | None = None

    def analyse_at(self, rate_hz: float) -> None:
        """The reader analyses one frame per 1/`rate_hz` of stream time, on FrameSampler's grid."""
        self._sampler = FrameSampler(rate_hz)

    def due(self, t: float) -> bool:
        """Whether the frame at stream time `t` is one the reader will analyse; ask once per frame, in order.

        Only the producer calls it (one per slot), so the sampler needs no lock."""
        sampler = self._sampler
        return sampler is None or sampler.take(t)

    def put(self, frame: Frame) -> None:
        with self._cond:
            if self.lossless:
                self._cond.wait_for(lambda: self._frame is None or self._closed)
            elif self._frame is not None:
                self.dropped += 1
            self._frame = frame
            self._cond.notify_all()

    def get(self, timeout: float) -> Frame | None:
        """The newest frame not yet taken, or None after `timeout` (or when closed and empty)."""
        with self._cond:
            self._cond.wait_for(lambda: self._frame is not None or self._closed, timeout)
            frame, self._frame = self._frame, None
            self._cond.notify_all()
            return frame

    def close(self) -> None:
        """The producer is done (end of file, shutdown): wake the reader."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    @property
    def closed(self) -> bool:
        with self._cond:
            return self._closed and self._frame is None


class AudioRing:
    """int16 mono samples addressed by their absolute index since capture began."""

    def __init__(self, capacity: int, lossless: bool = False) -> None:
        self._buf = np.zeros(capacity, dtype=np.int16)
        self._cond = threading.Condition()
        self.capacity = capacity
        self.lossless = lossless
        self.total = 0  # samples written so far
        self.consumed = 0  # the reader no longer needs samples before this index (lossless waits on it)
        self.dropped = 0  # captured samples overwritten before anyone read them
        # [start, end) of the silence written to keep stream time while the microphone was away, not yet consumed:
        # silence that nobody read before it was overwritten is no lost audio, so it is not counted in `dropped`.
        self._padding: deque[list[int]] = deque()
        self._closed = False

    def write(self, samples: np.ndarray, padding: bool = False) -> None:
        """Append samples; `padding`: silence standing in for time without a microphone (never counted as dropped)."""
        samples = np.asarray(samples, dtype=np.int16).ravel()
        for start in range(0, len(samples), self.capacity // 2):
            self._write(samples[start : start + self.capacity // 2], padding)

    def _write(self, part: np.ndarray, padding: bool) -> None:
        with self._cond:
            if self.lossless:
                self._cond.wait_for(lambda: self.total + len(part) - self.consumed <= self.capacity or self._closed)
            i = self.total % self.capacity
            first = min(len(part), self.capacity - i)  # the part may wrap round the end of the buffer
            self._buf[i : i + first] = part[:first]
            self._buf[: len(part) - first] = part[first:]
            if padding and len(part):
                if self._padding and self._padding[-1][1] == self.total:
                    self._padding[-1][1] += len(part)
                else:
                    self._padding.append([self.total, self.total + len(part)])
            self.total += len(part)
            overwritten = self.total - self.capacity - self.consumed
            if overwritten > 0:
                self.dropped += overwritten - self._padding_between(self.consumed, self.consumed + overwritten)
                self.consumed += overwritten
                self._forget_padding()
            self._cond.notify_all()

    def _padding_between(self, start: int, end: int) -> int:
        return sum(max(0, min(end, e) - max(start, s)) for s, e in self._padding)

    def _forget_padding(self) -> None:
        while self._padding and self._padding[0][1] <= self.consumed:
            self._padding.popleft()

    def read(self, start: int, n: int, timeout: float) -> np.ndarray | None:
        """Samples [start, start+n) once written; None on timeout or if they were overwritten or will never come."""
        with self._cond:
            self._cond.wait_for(lambda: self.total >= start + n or self._closed, timeout)
            if self.total < start + n or start < self.total - self.capacity:
                return None
            # Two slices, not an index array: a 2 s window every second is 32,000 indices to build and gather.
            i = start % self.capacity
            first = min(n, self.capacity - i)
            out = np.empty(n, dtype=self._buf.dtype)
            out[:first] = self._buf[i : i + first]
            out[first:] = self._buf[: n - first]
            return out

    def release(self, upto: int) -> None:
        """The reader is done with samples before `upto`."""
        with self._cond:
            self.consumed = max(self.consumed, min(upto, self.total))
            self._forget_padding()
            self._cond.notify_all()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    @property
    def closed(self) -> bool:
        with self._cond:
            return self._closed
