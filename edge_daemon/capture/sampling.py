"""Which frames the face stage analyses: one per 1/`rate_hz` of stream time, on a fixed grid, so that a replay picks
the same frames at any speed. The face stage, `emotion-edge bench`, the `fer` peer benchmark and the tracking check
all sample through here, so they analyse, time and compare the same frames.

Only the standard library, OpenCV and numpy (which OpenCV needs): the peer benchmark imports this module from its
own environment.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np

DEFAULT_FPS = 25.0  # when a container does not say


def open_video(path: Path | str) -> cv2.VideoCapture:
    """A video file opened for decoding on the calling thread only.

    FFmpeg's default decodes with a thread per core plus one, each holding its own frames: about 2.7 MB more memory
    and two more threads for a clip the face stage reads a few frames a second of (docs/performance.md). The frames
    are the same. A backend that does not take the setting (a build without FFmpeg) opens the file as before.
    """
    cap = cv2.VideoCapture(str(path), cv2.CAP_ANY, [cv2.CAP_PROP_N_THREADS, 1])
    if not cap.isOpened():
        cap.release()
        cap = cv2.VideoCapture(str(path))
    return cap


def video_fps(cap: cv2.VideoCapture) -> float:
    """The frame rate an opened video file declares, or DEFAULT_FPS when it declares none."""
    fps = cap.get(cv2.CAP_PROP_FPS)
    return fps if fps and fps > 0 else DEFAULT_FPS


class FrameSampler:
    """Feed it every frame's stream time in order; `take(t)` says whether that frame is analysed.

    Fed only the frames it took, a second sampler on the same grid takes all of them: so a producer that hands on
    only the frames its sampler takes (capture/buffers.LatestSlot.due) changes nothing for the reader's own.
    """

    def __init__(self, rate_hz: float) -> None:
        self.rate_hz = rate_hz
        self._next_t = 0.0

    def take(self, t: float) -> bool:
        if t + 1e-6 < self._next_t:
            return False
        self._next_t = (math.floor(t * self.rate_hz + 1e-6) + 1) / self.rate_hz
        return True


def sampled_frames(
    path: Path | str, rate_hz: float, limit: int | None = None, loop: bool = False, size: tuple[int, int] | None = None
) -> Iterator[np.ndarray]:
    """The frames of a video file the face stage would analyse at `rate_hz`, resized to `size` (w, h) if given.

    `loop` plays a short clip again and again (stream time goes on, so the grid does too) until `limit` frames;
    a file that yields no frame at all yields nothing, looped or not. Skipped frames are only decoded (`grab`), never
    converted to BGR or copied out (`retrieve`), as the daemon's sources do.
    """
    cap = open_video(path)
    fps = video_fps(cap)
    sampler, read, given, read_this_pass = FrameSampler(rate_hz), 0, 0, 0
    try:
        while limit is None or given < limit:
            ok = cap.grab()
            if not ok:
                if not loop or not read_this_pass:
                    return
                cap.set(cv2.CAP_PROP_POS_FRAMES, 0)
                read_this_pass = 0
                continue
            t = read / fps
            read += 1
            read_this_pass += 1
            if sampler.take(t):
                ok, img = cap.retrieve()
                if not ok or img is None:
                    return
                given += 1
                yield img if size is None else cv2.resize(img, size)
    finally:
        cap.release()
