"""File-backed sources for replay: a video file into the frame slot and a wav file into the audio ring.

They feed the same hand-offs as the camera and microphone threads (lossless,
so nothing is skipped) and stamp data with media time. With `realtime` they
pace themselves to the wall clock like a live device would.
"""

from __future__ import annotations

import logging
import threading
import time
import wave
from pathlib import Path

import numpy as np

from ..errors import UserError
from . import SAMPLE_RATE
from .buffers import AudioRing, Frame, LatestSlot
from .retry import SourceStatus
from .sampling import open_video, video_fps

logger = logging.getLogger(__name__)


def _check_file(path: Path, kind: str) -> None:
    """UserError for the mistakes whose OS message would say little: a folder, or a file with nothing in it."""
    if path.is_dir():
        raise UserError(f"{path}: is a directory, expected a {kind} file")
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise UserError(f"{path}: {kind} file not found") from None
    except OSError:
        return  # unreadable for another reason: opening it says which
    if size == 0 and path.is_file():  # a device or pipe reports 0 too, and may still have data
        raise UserError(f"{path}: the file is empty (0 bytes)")


def read_wav(path: Path, *, require_samples: bool = False) -> np.ndarray:
    """A wav file as int16 mono at SAMPLE_RATE (down-mixed and resampled if needed); UserError if unreadable.

    `require_samples`: a header with no samples after it is a UserError too, for callers that have nothing to do
    with an empty clip (replay, classify); as a format it is valid, and reads as an empty array.
    """
    path = Path(path)
    _check_file(path, "wav")
    try:
        with wave.open(str(path), "rb") as w:
            rate, channels, width, n = w.getframerate(), w.getnchannels(), w.getsampwidth(), w.getnframes()
            raw = w.readframes(n)
    except FileNotFoundError:
        raise UserError(f"{path}: wav file not found") from None
    except (wave.Error, EOFError, OSError, RuntimeError) as exc:  # RuntimeError: a chunk that claims more than the file
        raise UserError(
            f"{path}: not a readable PCM wav file ({exc}); convert it with: sox IN -r {SAMPLE_RATE} -c 1 -b 16 OUT.wav"
        ) from None
    if width not in (1, 2, 4) or not 1 <= channels <= 64 or not 1000 <= rate <= 384_000:  # beyond: a broken header
        raise UserError(
            f"{path}: unsupported wav format ({width * 8}-bit, {channels} channels, {rate} Hz); use 16-bit PCM"
        )
    if len(raw) < n * width * channels:  # a header that promises more than the file holds: cut short, or a lie
        held = len(raw) // (width * channels)
        logger.warning(
            "%s: the wav header promises %d samples (%.1f s) but the file holds %d (%.1f s); cut short? using what "
            "is there", path, n, n / rate, held, held / rate,
        )  # fmt: skip
    dtype = {1: np.uint8, 2: np.int16, 4: np.int32}[width]
    x = np.frombuffer(raw[: len(raw) // (width * channels) * width * channels], dtype=dtype).astype(np.float64)
    if width == 1:
        x = (x - 128.0) * 256.0
    elif width == 4:
        x = x / 65536.0
    x = x.reshape(-1, channels).mean(axis=1)
    if require_samples and x.size == 0:
        raise UserError(f"{path}: the wav file holds no samples (a header only); record or export it again")
    if rate != SAMPLE_RATE:
        # Imported only when needed: scipy.signal adds about 50 MB of RSS to the daemon.
        from scipy.signal import resample_poly

        g = np.gcd(rate, SAMPLE_RATE)
        x = resample_poly(x, SAMPLE_RATE // g, rate // g)
    return np.clip(np.round(x), -32768, 32767).astype(np.int16)


def probe_video(path: Path) -> float:
    """Frames per second of a readable video file; UserError otherwise."""
    path = Path(path)
    _check_file(path, "video")
    if not path.is_file():  # a pipe or device: OpenCV could block on it, or read a camera
        raise UserError(f"{path}: not a regular file, expected a video file")
    cap = open_video(path)
    try:
        ok, frame = cap.read() if cap.isOpened() else (False, None)
        if not ok or frame is None:
            raise UserError(
                f"{path}: not a readable video (OpenCV could not decode a frame); try re-encoding it as MP4/MJPEG"
            )
        fps = video_fps(cap)
    finally:
        cap.release()
    return fps


class VideoFileSource(threading.Thread):
    def __init__(self, path: Path, slot: LatestSlot, stop: threading.Event, realtime: bool = False) -> None:
        super().__init__(name="video-file", daemon=True)
        self.path, self.slot, self.stop_event, self.realtime = Path(path), slot, stop, realtime
        self.fps = probe_video(self.path)
        self.status = SourceStatus(f"video {self.path.name}")
        self.frames = 0

    def run(self) -> None:
        cap = open_video(self.path)
        start = time.monotonic()
        self.status.online()
        try:
            while not self.stop_event.is_set():
                if not cap.grab():  # decoded, not yet converted: only the frames the face stage takes are (`due`)
                    break
                t = self.frames / self.fps
                index = self.frames
                self.frames += 1
                if not self.slot.due(t):
                    continue
                ok, image = cap.retrieve()
                if not ok or image is None:
                    break
                if self.realtime:
                    self.stop_event.wait(max(0.0, start + t - time.monotonic()))
                self.slot.put(Frame(image, t, index))
        finally:
            cap.release()
            self.status.set("ended")
            self.slot.close()


class WavFileSource(threading.Thread):
    def __init__(
        self, path: Path, ring: AudioRing, stop: threading.Event, realtime: bool = False, chunk_ms: int = 100
    ) -> None:
        super().__init__(name="wav-file", daemon=True)
        self.path, self.ring, self.stop_event, self.realtime = Path(path), ring, stop, realtime
        self.samples = read_wav(self.path, require_samples=True)
        self.chunk = SAMPLE_RATE * chunk_ms // 1000
        self.status = SourceStatus(f"audio {self.path.name}")

    @property
    def duration_s(self) -> float:
        return len(self.samples) / SAMPLE_RATE

    def run(self) -> None:
        start = time.monotonic()
        self.status.online()
        try:
            for i in range(0, len(self.samples), self.chunk):
                if self.stop_event.is_set():
                    break
                if self.realtime:
                    self.stop_event.wait(max(0.0, start + i / SAMPLE_RATE - time.monotonic()))
                self.ring.write(self.samples[i : i + self.chunk])
        finally:
            self.status.set("ended")
            self.ring.close()
