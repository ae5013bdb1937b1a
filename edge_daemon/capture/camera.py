"""The camera thread: a device index or path, a video file, or a stream URL, into a latest-frame slot.

On open failure, read error or end of stream it releases the device, reports
`offline`, and reopens with back-off, while the microphone keeps working.
While its switch is off (`active()` false, read before the device is first
opened) it holds no device at all: the camera's LED goes off, status `paused`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import cv2

from ..config import CameraConfig
from .buffers import Frame, LatestSlot
from .retry import PAUSE_POLL_S, Backoff, SourceStatus, always_on

logger = logging.getLogger(__name__)


def open_capture(source: int | str, cfg: CameraConfig) -> cv2.VideoCapture | None:
    cap = cv2.VideoCapture(source)
    if not cap.isOpened():
        cap.release()
        return None
    if isinstance(source, int) or str(source).startswith("/dev/"):
        cap.set(cv2.CAP_PROP_FRAME_WIDTH, cfg.width)
        cap.set(cv2.CAP_PROP_FRAME_HEIGHT, cfg.height)
        cap.set(cv2.CAP_PROP_FPS, cfg.fps)
        cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)  # we want the newest frame, not a backlog
    return cap


class CameraSource(threading.Thread):
    def __init__(
        self,
        cfg: CameraConfig,
        slot: LatestSlot,
        t0: float,
        stop: threading.Event,
        active: Callable[[], bool] = always_on,
    ) -> None:
        super().__init__(name="camera", daemon=True)
        self.cfg, self.slot, self.t0, self.stop_event = cfg, slot, t0, stop
        self.active = active  # the camera's switch (Controls.active("camera")): off releases the device
        self.status = SourceStatus(f"camera {cfg.source!r}")
        self.frames = 0
        # time.monotonic() of the thread's last loop (frame, retry, pause poll): the supervisor marks the camera
        # offline when it grows old, as a read that never returns (a wedged driver or stream) would leave it.
        self.heartbeat = time.monotonic()

    def beat(self) -> None:
        self.heartbeat = time.monotonic()

    def fresh(self) -> CameraSource:
        """A new thread for the same camera and slot, for the supervisor to start if this one died."""
        fresh = CameraSource(self.cfg, self.slot, self.t0, self.stop_event, self.active)
        fresh.status = self.status  # paused time and failures carry on
        return fresh

    def _wait_while_paused(self) -> None:
        self.status.paused()
        while not self.active() and not self.stop_event.is_set():
            self.beat()
            self.stop_event.wait(PAUSE_POLL_S)

    def run(self) -> None:
        backoff = Backoff(self.cfg.reconnect_min_s, self.cfg.reconnect_max_s)
        # A file used as a camera is paced at its own frame rate; devices and streams pace themselves.
        is_file = (
            isinstance(self.cfg.source, str)
            and "://" not in self.cfg.source
            and not self.cfg.source.startswith("/dev/")
        )
        while not self.stop_event.is_set():
            self.beat()
            if not self.active():  # before every open, so also before the first frame after a start
                self._wait_while_paused()
                continue
            cap = open_capture(self.cfg.source, self.cfg)
            if cap is None:
                self.status.offline("cannot open (unplugged, busy, or not a camera?)")
                backoff.wait(self.stop_event, self.beat)
                continue
            period = 1.0 / (cap.get(cv2.CAP_PROP_FPS) or self.cfg.fps) if is_file else 0.0
            try:
                delivered = self._read_until_failure(cap, period, backoff)
            finally:
                cap.release()
            if self.stop_event.is_set():
                break
            if not self.active():
                continue  # switched off: released above, and the top of the loop waits
            if is_file and delivered:
                continue  # the end of a file used as a camera: play it again, nothing went wrong
            self.status.offline("stopped delivering frames (unplugged, stream ended, or read error)")
            if not self.stop_event.is_set():
                backoff.wait(self.stop_event, self.beat)
        self.slot.close()

    def _read_until_failure(self, cap: cv2.VideoCapture, period: float, backoff: Backoff) -> int:
        """Read frames into the slot until the source fails or ends; returns how many it delivered."""
        next_at = time.monotonic()
        delivered = 0
        while not self.stop_event.is_set() and self.active():
            self.beat()
            if not cap.grab():  # the frame is taken from the device; converting it waits until it is due
                return delivered
            now = time.monotonic()
            if self.slot.due(now - self.t0):
                ok, image = cap.retrieve()
                if not ok or image is None or image.size == 0:
                    return delivered
                self.slot.put(Frame(image, now - self.t0, self.frames))
            delivered += 1
            self.status.online()
            backoff.reset()
            self.frames += 1
            if period:
                next_at += period
                self.stop_event.wait(max(0.0, next_at - time.monotonic()))
            self.beat()
        return delivered
