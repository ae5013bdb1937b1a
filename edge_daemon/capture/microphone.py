"""The microphone thread: PyAudio, 16 kHz mono int16, into a bounded ring buffer.

A missing or failing input is reported `offline` and retried with back-off.
While it is away the ring is padded with silence, so sample indices stay
aligned with stream time and the voice gate simply sees no speech.
While its switch is off (`active()` false, read before the stream is first
opened) the stream is closed and PortAudio released: status `paused`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from ..config import MicrophoneConfig
from . import SAMPLE_RATE
from .buffers import AudioRing
from .retry import PAUSE_POLL_S, Backoff, SourceStatus, always_on

logger = logging.getLogger(__name__)


@contextlib.contextmanager
def _quiet_stderr() -> Iterator[None]:
    """PortAudio's ALSA probing prints pages of noise to fd 2 on machines without every sound device."""
    saved = os.dup(2)
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def pyaudio_instance() -> Any:
    import pyaudio  # imported here: only live capture needs the sound stack

    with _quiet_stderr():
        return pyaudio.PyAudio()


def input_devices(pa: Any) -> list[dict[str, Any]]:
    devices = []
    for i in range(pa.get_device_count()):
        info = pa.get_device_info_by_index(i)
        if int(info.get("maxInputChannels", 0)) > 0:
            devices.append(
                {
                    "index": i,
                    "name": info["name"],
                    "channels": int(info["maxInputChannels"]),
                    "default_rate": info["defaultSampleRate"],
                }
            )
    return devices


def list_input_devices() -> list[dict[str, Any]]:
    pa = pyaudio_instance()
    try:
        return input_devices(pa)
    finally:
        pa.terminate()


def open_input(pa: Any, device: int | str | None, chunk: int) -> Any:
    """A 16 kHz mono int16 input stream on the configured device (OSError or LookupError if it cannot be had)."""
    import pyaudio

    return pa.open(
        format=pyaudio.paInt16,
        channels=1,
        rate=SAMPLE_RATE,
        input=True,
        input_device_index=find_device(pa, device),
        frames_per_buffer=chunk,
    )


def find_device(pa: Any, device: int | str | None) -> int | None:
    """Index for a configured device (index, or part of a name); None means the default input."""
    if device is None:
        return None
    devices = input_devices(pa)
    if isinstance(device, int):
        # Checked here because PortAudio, through PyAudio 0.2.14, crashes the process (SIGSEGV) on an index that
        # is not there: an unplugged or renumbered USB microphone must not take the camera path down with it.
        if any(d["index"] == device for d in devices):
            return device
        raise LookupError(
            f"no input device with index {device} (unplugged or renumbered?); `emotion-edge devices` lists them"
        )
    for d in devices:
        if device.lower() in d["name"].lower():
            return int(d["index"])
    raise LookupError(f"no input device named like {device!r}; `emotion-edge devices` lists them")


TOLERANCE = SAMPLE_RATE // 10  # stream time and sample count may differ this much (scheduling jitter) before we act


class MicrophoneSource(threading.Thread):
    def __init__(
        self,
        cfg: MicrophoneConfig,
        ring: AudioRing,
        t0: float,
        stop: threading.Event,
        active: Callable[[], bool] = always_on,
    ) -> None:
        super().__init__(name="microphone", daemon=True)
        self.cfg, self.ring, self.t0, self.stop_event = cfg, ring, t0, stop
        self.active = active  # the microphone's switch (Controls.active("microphone")): off closes the stream
        self.status = SourceStatus(f"microphone {cfg.device if cfg.device is not None else 'default'}")
        self.chunk = SAMPLE_RATE * cfg.chunk_ms // 1000
        self.trimmed = 0  # samples dropped because the sound card's clock ran ahead
        self.padded = 0  # samples of silence standing in for time without a microphone
        # time.monotonic() of the thread's last loop (chunk, retry, pause poll): the supervisor marks the
        # microphone offline when it grows old, as a read that never returns would leave it.
        self.heartbeat = time.monotonic()

    def beat(self) -> None:
        self.heartbeat = time.monotonic()

    def fresh(self) -> MicrophoneSource:
        """A new thread for the same microphone and ring, for the supervisor to start if this one died."""
        fresh = MicrophoneSource(self.cfg, self.ring, self.t0, self.stop_event, self.active)
        fresh.trimmed, fresh.padded = self.trimmed, self.padded  # totals for stats
        fresh.status = self.status  # paused time and failures carry on
        return fresh

    def _wait_while_paused(self) -> None:
        self.status.paused()
        while not self.active() and not self.stop_event.is_set():
            self.beat()
            self._pad_to_now()  # silence keeps stream time: the voice gate sees no speech, no events
            self.stop_event.wait(PAUSE_POLL_S)

    def run(self) -> None:
        backoff = Backoff(self.cfg.reconnect_min_s, self.cfg.reconnect_max_s)
        while not self.stop_event.is_set():
            self.beat()
            if not self.active():  # before every open, so also before the first sample after a start
                self._wait_while_paused()
                continue
            try:
                self._capture(backoff)
            except (OSError, LookupError, ImportError) as exc:
                self.status.offline(str(exc) or type(exc).__name__)
            if not self.active():
                continue  # switched off: the stream is closed, the top of the loop waits
            self._pad_to_now()
            backoff.wait(self.stop_event, self.beat)
        self.ring.close()

    def _capture(self, backoff: Backoff) -> None:
        pa = pyaudio_instance()
        try:
            stream = open_input(pa, self.cfg.device, self.chunk)
            try:
                while not self.stop_event.is_set() and self.active():
                    self.beat()
                    samples = np.frombuffer(stream.read(self.chunk, exception_on_overflow=False), dtype=np.int16)
                    self._pad_to_now(ahead=len(samples))
                    self.ring.write(self._trim_to_now(samples))
                    self.status.online()
                    backoff.reset()
            finally:
                stream.close()
        finally:
            pa.terminate()

    def _expected(self) -> int:
        """How many samples stream time says we should have had by now."""
        return int((time.monotonic() - self.t0) * SAMPLE_RATE)

    def _pad_to_now(self, ahead: int = 0) -> None:
        """Fill a capture gap with silence so that sample index / rate keeps meaning stream time."""
        gap = min(self._expected() - ahead - self.ring.total, self.ring.capacity)
        if gap > TOLERANCE:
            self.ring.write(np.zeros(gap, dtype=np.int16), padding=True)  # not a drop if nobody reads it in time
            self.padded += gap

    def _trim_to_now(self, samples: np.ndarray) -> np.ndarray:
        """The other direction: a sound card whose clock runs fast (tens of ppm is common) would put speech ever
        later than the faces of the same moment, seconds a day; drop what runs ahead of stream time."""
        excess = self.ring.total + len(samples) - self._expected() - TOLERANCE
        if excess <= 0:
            return samples
        self.trimmed += min(excess, len(samples))
        return samples[excess:]
