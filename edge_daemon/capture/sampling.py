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


def video_fps(cap: cv2.VideoCapture) -> float:
    """The frame rate an opened video file declares, or DEFAULT_FPS when it declares none."""
    fps = cap.get(cv2.CAP_PROP_FPS)
    return fps if fps and fps > 0 else DEFAULT_FPS


class FrameSampler:
    """Feed it every frame's stream time in order; `take(t)` says whether that frame is analysed."""

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
    a file that yields no frame at all yields nothing, looped or not.
    """
    cap = cv2.VideoCapture(str(path))
    fps = video_fps(cap)
    sampler, read, given, read_this_pass = FrameSampler(rate_hz), 0, 0, 0
    try:
        while limit is None or given < limit:
            ok, img = cap.read()
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
                given += 1
                yield img if size is None else cv2.resize(img, size)
    finally:
        cap.release()
