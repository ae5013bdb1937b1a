"""Capture hand-offs and sources: bounded, typed, lossless in replay; devices that fail are reported, not fatal."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
import wave
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edge_daemon.capture.buffers import AudioRing, Frame, LatestSlot
from edge_daemon.capture.files import probe_video, read_wav
from edge_daemon.errors import UserError

from .conftest import CLIP_AUDIO, CLIP_VIDEO, ROOT


def frame(i: int) -> Frame:
    return Frame(np.zeros((2, 2, 3), np.uint8), i / 10, i)


def test_latest_slot_keeps_only_the_newest_frame_live() -> None:
    slot = LatestSlot()
    for i in range(5):
        slot.put(frame(i))
    assert slot.get(timeout=0.1).index == 4
    assert slot.dropped == 4
    assert slot.get(timeout=0.05) is None


def test_latest_slot_in_replay_waits_instead_of_dropping() -> None:
    slot = LatestSlot(lossless=True)
    got: list[int] = []

    def consume() -> None:
        while (f := slot.get(timeout=1)) is not None:
            got.append(f.index)
            time.sleep(0.005)

    t = threading.Thread(target=consume)
    t.start()
    for i in range(20):
        slot.put(frame(i))
    slot.close()
    t.join(timeout=5)
    assert got == list(range(20)) and slot.dropped == 0


def test_audio_ring_overwrites_oldest_live_and_counts() -> None:
    ring = AudioRing(capacity=100)
    ring.write(np.arange(250, dtype=np.int16))
    assert ring.total == 250 and ring.dropped == 150
    assert ring.read(0, 10, timeout=0) is None  # overwritten
    assert list(ring.read(240, 10, timeout=0)) == list(range(240, 250))


def test_audio_ring_in_replay_blocks_the_writer_until_read() -> None:
    ring = AudioRing(capacity=100, lossless=True)
    writer = threading.Thread(target=ring.write, args=(np.arange(300, dtype=np.int16),))
    writer.start()
    seen = []
    start = 0
    while start < 300:
        chunk = ring.read(start, 50, timeout=2)
        assert chunk is not None
        seen.extend(chunk.tolist())
        start += 50
        ring.release(start)
    writer.join(timeout=2)
    assert seen == list(range(300)) and ring.dropped == 0


def test_audio_ring_does_not_count_overwritten_padding_as_dropped() -> None:
    ring = AudioRing(100)
    ring.write(np.zeros(150, dtype=np.int16), padding=True)  # a microphone away: silence keeps stream time
    assert ring.dropped == 0, "silence nobody read is no lost audio"
    ring.write(np.ones(60, dtype=np.int16))  # captured, never read
    ring.write(np.zeros(100, dtype=np.int16), padding=True)
    assert ring.dropped == 60, "captured samples overwritten unread are still counted"


ABSENT_MICROPHONE_FOR_A_WHILE = """
import threading, time
from edge_daemon.capture.buffers import AudioRing
from edge_daemon.capture.microphone import MicrophoneSource
from edge_daemon.config import MicrophoneConfig

stop, ring = threading.Event(), AudioRing(16000)  # a 1 s ring that nobody reads, as while the speech stage is busy
mic = MicrophoneSource(MicrophoneConfig(reconnect_min_s=0.1, reconnect_max_s=0.2), ring, time.monotonic(), stop)
mic.start()
time.sleep(2.5)
stop.set()
mic.join(timeout=5)
print(ring.dropped, mic.padded, ring.total)
"""


def test_silence_padded_in_while_the_microphone_is_offline_is_not_counted_as_overwritten() -> None:
    # In a child process: PortAudio answers some mistakes with SIGSEGV (see the test above).
    proc = subprocess.run(
        [sys.executable, "-c", ABSENT_MICROPHONE_FOR_A_WHILE], capture_output=True, text=True, timeout=60, cwd=ROOT
    )
    assert proc.returncode == 0, proc.stderr
    dropped, padded, total = map(int, proc.stdout.split())
    assert padded > 16000 and padded == total, proc.stdout  # more silence than the ring holds, and nothing else
    assert dropped == 0, f"{dropped} samples of padding counted as audio_samples_overwritten"


def test_wav_is_downmixed_and_resampled_to_16k_mono(tmp_path: Path) -> None:
    p = tmp_path / "stereo44k.wav"
    t = np.arange(44100) / 44100
    tone = (0.3 * 32767 * np.sin(2 * np.pi * 440 * t)).astype(np.int16)
    with wave.open(str(p), "wb") as w:
        w.setnchannels(2)
        w.setsampwidth(2)
        w.setframerate(44100)
        w.writeframes(np.stack([tone, tone], axis=1).tobytes())
    x = read_wav(p)
    assert x.dtype == np.int16 and len(x) == 16000
    spectrum = np.abs(np.fft.rfft(x.astype(float)))
    assert abs(np.argmax(spectrum) - 440) <= 2  # 1 s at 16 kHz: bin = Hz


@pytest.mark.parametrize("content", [b"", b"RIFF\x00\x00\x00\x00WAVEjunk", b"not audio at all"])
def test_unreadable_wav_is_a_clear_user_error(tmp_path: Path, content: bytes) -> None:
    p = tmp_path / "bad.wav"
    p.write_bytes(content)
    with pytest.raises(UserError, match="bad.wav"):
        read_wav(p)


def test_unreadable_video_is_a_clear_user_error(tmp_path: Path) -> None:
    p = tmp_path / "bad.mp4"
    p.write_bytes(b"\x00" * 1000)
    with pytest.raises(UserError, match="bad.mp4: not a readable video"):
        probe_video(p)
    assert probe_video(CLIP_VIDEO) == pytest.approx(10.0)
    assert len(read_wav(CLIP_AUDIO)) == 18 * 16000


ABSENT_MICROPHONE = """
import threading, time, sys
from edge_daemon.capture.buffers import AudioRing
from edge_daemon.capture.microphone import MicrophoneSource
from edge_daemon.config import MicrophoneConfig

stop = threading.Event()
device = None if sys.argv[1] == "default" else int(sys.argv[1])
cfg = MicrophoneConfig(device=device, reconnect_min_s=0.1, reconnect_max_s=0.2)
mic = MicrophoneSource(cfg, AudioRing(16000 * 4), time.monotonic(), stop)
mic.start()
deadline = time.monotonic() + 10
while mic.status.failures < 2 and time.monotonic() < deadline:
    time.sleep(0.05)
snap = mic.status.snapshot()
alive = mic.is_alive()
stop.set()
mic.join(timeout=5)
print(snap["state"], snap["failures"], alive, mic.is_alive(), "|", snap["reason"])
"""


@pytest.mark.parametrize("device", ["default", "3"])
def test_absent_microphone_is_reported_offline_and_retried_not_fatal(device: str) -> None:
    # This machine has no sound card: the real PyAudio path fails to open an input, as an unplugged USB mic does.
    # In a child process, because PortAudio answers some mistakes (an index that is not there) with SIGSEGV.
    proc = subprocess.run(
        [sys.executable, "-c", ABSENT_MICROPHONE, device], capture_output=True, text=True, timeout=60, cwd=ROOT
    )
    assert proc.returncode == 0, f"the process died ({proc.returncode}):\n{proc.stderr}"
    state, failures, alive, alive_after_stop, reason = proc.stdout.replace(" | ", " ").split(" ", 4)
    assert state == "offline" and int(failures) >= 2, proc.stdout  # retried with back-off
    assert alive == "True" and alive_after_stop == "False", proc.stdout
    if device == "3":
        assert "no input device with index 3" in reason, reason


class FastSoundCard:
    """Stands in for a sound card (this machine has none) whose clock runs 5 % fast: each read of N samples
    returns after 0.95 N / 16 kHz seconds."""

    def __init__(self, chunk: int) -> None:
        self.chunk = chunk
        self.next_at = time.monotonic()

    def read(self, n: int, exception_on_overflow: bool = False) -> bytes:
        self.next_at += 0.95 * n / 16000
        time.sleep(max(0.0, self.next_at - time.monotonic()))
        return np.ones(n, dtype=np.int16).tobytes()

    def close(self) -> None:
        pass


def test_a_sound_card_clock_that_runs_fast_does_not_drift_speech_ahead_of_stream_time(monkeypatch: Any) -> None:
    from edge_daemon.capture import microphone

    class NoPortAudio:
        def terminate(self) -> None:
            pass

    monkeypatch.setattr(microphone, "pyaudio_instance", NoPortAudio)
    monkeypatch.setattr(microphone, "open_input", lambda pa, device, chunk: FastSoundCard(chunk))
    stop, ring, t0 = threading.Event(), AudioRing(16000 * 10), time.monotonic()
    mic = microphone.MicrophoneSource(microphone.MicrophoneConfig(), ring, t0, stop)
    mic.start()
    try:
        time.sleep(6)  # 5 % fast: 0.3 s ahead by now without correction
        lead_s = ring.total / 16000 - (time.monotonic() - t0)
    finally:
        stop.set()
        mic.join(timeout=5)
    assert abs(lead_s) <= 0.15, f"audio leads stream time by {lead_s:.2f} s"
    assert mic.trimmed > 0


def _every_frame_sampled(rate_hz: float) -> list[tuple[int, np.ndarray]]:
    """The reference: every frame of the clip decoded and converted (`read`), the face stage's sampler on top."""
    import cv2

    from edge_daemon.capture.sampling import FrameSampler

    cap = cv2.VideoCapture(str(CLIP_VIDEO))
    fps, sampler, index, taken = cap.get(cv2.CAP_PROP_FPS), FrameSampler(rate_hz), 0, []
    while True:
        ok, image = cap.read()
        if not ok:
            break
        if sampler.take(index / fps):
            taken.append((index, image))
        index += 1
    cap.release()
    return taken


def test_video_file_source_converts_only_the_frames_the_face_stage_takes() -> None:
    """A replay hands the face stage exactly the frames its sampler would have taken from all of them, pixel for pixel,
    and turns no other frame into an image (grab only): at 5 Hz of the 10 fps clip, every second one."""
    from edge_daemon.capture.files import VideoFileSource

    expected = _every_frame_sampled(5.0)
    slot = LatestSlot(lossless=True)
    slot.analyse_at(5.0)  # as the face worker does
    source = VideoFileSource(CLIP_VIDEO, slot, threading.Event())
    source.start()
    got = []
    while (f := slot.get(timeout=5)) is not None:
        got.append(f)
    source.join(timeout=5)
    assert source.frames == 180  # every frame was read from the file
    assert [f.index for f in got] == [i for i, _ in expected] and len(got) == 90
    assert all(np.array_equal(f.image, image) for f, (_, image) in zip(got, expected, strict=True))


def test_sampled_frames_are_the_frames_the_face_stage_takes() -> None:
    from edge_daemon.capture.sampling import sampled_frames

    expected = _every_frame_sampled(5.0)
    got = list(sampled_frames(CLIP_VIDEO, 5.0))
    assert len(got) == len(expected) == 90
    assert all(np.array_equal(a, b) for a, (_, b) in zip(got, expected, strict=True))
