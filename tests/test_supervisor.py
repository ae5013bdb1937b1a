"""The supervisor watches the capture threads' heartbeats: a camera or microphone whose read never returns is not
`online`."""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edge_daemon import supervisor as supervisor_module
from edge_daemon.capture.buffers import AudioRing, LatestSlot
from edge_daemon.capture.camera import CameraSource
from edge_daemon.capture.retry import Backoff
from edge_daemon.config import CameraConfig, MicrophoneConfig
from edge_daemon.supervisor import Supervisor

W, H = 64, 48


class HangingCamera:
    """A camera as OpenCV opens it (a path, read by cv2.VideoCapture, as a device or stream is) that delivers
    `frames` frames and then nothing, without ending: a FIFO whose writer stays open, like a wedged driver or a
    stream that stops sending. `release()` closes the writer, and the blocked read returns."""

    def __init__(self, path: Path, frames: int) -> None:
        self.path = path
        os.mkfifo(path)
        self._release = threading.Event()
        self._writer = threading.Thread(target=self._write, args=(frames,), daemon=True)
        self._writer.start()

    def _write(self, frames: int) -> None:
        with open(self.path, "wb") as f:  # blocks until the camera thread opens the FIFO
            f.write(f"YUV4MPEG2 W{W} H{H} F10:1 Ip A1:1 C420jpeg\n".encode())
            for i in range(frames):
                f.write(b"FRAME\n" + bytes([i * 7 % 256]) * (W * H * 3 // 2))
            f.flush()
            self._release.wait(60)

    def release(self) -> None:
        self._release.set()
        self._writer.join(timeout=5)


@pytest.fixture
def hanging_camera(tmp_path: Path) -> Iterator[HangingCamera]:
    cam = HangingCamera(tmp_path / "camera.y4m", frames=10)  # 1 s at its 10 fps
    yield cam
    cam.release()


def start_camera(source: str, stop: threading.Event) -> CameraSource:
    cfg = CameraConfig(source=source, reconnect_min_s=0.1, reconnect_max_s=0.2)
    cam = CameraSource(cfg, LatestSlot(), time.monotonic(), stop)
    cam.start()
    return cam


def wait_until(predicate: Any, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


def assert_marked_stalled_once(sup: Supervisor, source: Any, caplog: pytest.LogCaptureFixture) -> None:
    """Several supervision rounds over a capture thread stuck in a read: offline, `stalled`, said once, not replaced."""
    with caplog.at_level(logging.WARNING, logger="edge_daemon"):
        for _ in range(3):
            assert sup.check([source])
    snap = source.status.snapshot()
    assert snap["state"] == "offline" and f"stalled: no {source.name} data" in snap["reason"], snap
    lines = [r.getMessage() for r in caplog.records if "stalled" in r.getMessage()]
    assert len(lines) == 1, lines
    assert sup.restarts[source.name] == 0


def test_a_camera_whose_read_hangs_is_marked_offline_once_not_replaced(
    hanging_camera: HangingCamera, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(supervisor_module, "CAPTURE_STALL_S", 1.0)
    stop = threading.Event()
    cam = start_camera(str(hanging_camera.path), stop)
    sup = Supervisor(stop, replace=lambda old: pytest.fail("a hung capture thread is not replaced"))
    try:
        assert wait_until(lambda: cam.status.snapshot()["state"] == "online", 10), cam.status.snapshot()
        assert wait_until(lambda: cam.frames >= 10, 10), cam.frames  # every frame delivered, then the read hangs
        # While frames flow, supervision rounds leave it alone.
        assert sup.check([cam]) and cam.status.snapshot()["state"] == "online"
        time.sleep(1.5)
        assert cam.is_alive() and cam.frames == 10  # inside cap.read(), which does not return
        assert_marked_stalled_once(sup, cam, caplog)  # before: "online"
    finally:
        stop.set()  # first: at the end of a file the camera thread would open it again
        hanging_camera.release()  # the read returns (end of stream), and the thread ends
        cam.join(timeout=5)
    assert not cam.is_alive()


def test_a_camera_backing_off_keeps_its_heartbeat(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A source that is retrying (here: a path that is not there) is alive, not stalled, even with long back-offs."""
    monkeypatch.setattr(supervisor_module, "CAPTURE_STALL_S", 1.0)
    stop = threading.Event()
    cfg = CameraConfig(source=str(tmp_path / "absent.mp4"), reconnect_min_s=2.5, reconnect_max_s=2.5)
    cam = CameraSource(cfg, LatestSlot(), time.monotonic(), stop)
    cam.start()
    try:
        assert wait_until(lambda: cam.status.failures >= 1, 10)
        time.sleep(1.5)  # inside a 2.5 s back-off, longer than the bound
        assert time.monotonic() - cam.heartbeat < 1.5
        Supervisor(stop, replace=lambda old: old).check([cam])
        assert "stalled" not in cam.status.snapshot()["reason"]
    finally:
        stop.set()
        cam.join(timeout=5)


def test_backoff_beats_while_it_waits() -> None:
    beats: list[float] = []
    Backoff(1.5, 5.0).wait(threading.Event(), lambda: beats.append(time.monotonic()))
    assert len(beats) >= 2 and max(b - a for a, b in zip(beats, beats[1:], strict=False)) <= 1.2, beats


class StallingSoundCard:
    """Stands in for a sound card (this machine has none), opened where the microphone thread opens PyAudio's
    stream: it delivers `reads` chunks in real time, then a read that does not return (a wedged USB audio driver)
    until `resume()`, after which audio flows again."""

    def __init__(self, reads: int) -> None:
        self.left = reads
        self.reads = 0
        self.flowing = threading.Event()

    def read(self, n: int, exception_on_overflow: bool = False) -> bytes:
        if self.left > 0:
            self.left -= 1
        else:
            self.flowing.wait(60)
        time.sleep(n / 16000)
        self.reads += 1
        return np.full(n, 100, dtype=np.int16).tobytes()

    def resume(self) -> None:
        self.left = 10**9
        self.flowing.set()

    def close(self) -> None:
        pass


def test_a_microphone_whose_read_hangs_is_marked_offline_once_and_online_again_when_audio_flows(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from edge_daemon.capture import microphone

    class NoPortAudio:
        def terminate(self) -> None:
            pass

    card = StallingSoundCard(reads=5)
    monkeypatch.setattr(microphone, "pyaudio_instance", NoPortAudio)
    monkeypatch.setattr(microphone, "open_input", lambda pa, device, chunk: card)
    monkeypatch.setattr(supervisor_module, "CAPTURE_STALL_S", 1.0)
    stop = threading.Event()
    cfg = MicrophoneConfig(reconnect_min_s=0.1, reconnect_max_s=0.2)
    mic = microphone.MicrophoneSource(cfg, AudioRing(16000 * 4), time.monotonic(), stop)
    sup = Supervisor(stop, replace=lambda old: pytest.fail("a hung capture thread is not replaced"))
    mic.start()
    try:
        assert wait_until(lambda: card.reads >= 5, 10), card.reads  # every chunk delivered, then the read hangs
        assert mic.status.snapshot()["state"] == "online"
        assert sup.check([mic]) and mic.status.snapshot()["state"] == "online"  # frames flowed just now
        time.sleep(1.5)
        assert mic.is_alive() and card.reads == 5  # inside stream.read(), which does not return
        assert_marked_stalled_once(sup, mic, caplog)
        card.resume()  # the read returns with audio: the thread itself says online again
        assert wait_until(lambda: mic.status.snapshot()["state"] == "online", 5), mic.status.snapshot()
        assert sup.check([mic]) and mic.status.snapshot()["state"] == "online"
    finally:
        stop.set()
        card.resume()
        mic.join(timeout=5)
    assert not mic.is_alive()
