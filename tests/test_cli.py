"""The CLI's inspection commands as a user runs them: classify, devices, bench."""

from __future__ import annotations

import json
import wave
from pathlib import Path

import cv2
import numpy as np

from edge_daemon.capture.files import read_wav
from edge_daemon.labels import CANONICAL, SPEECH_LABELS

from .conftest import CLIP_AUDIO, CLIP_VIDEO, assert_clean_error, run_cli, write_config


def frame_at(second: float) -> np.ndarray:
    cap = cv2.VideoCapture(str(CLIP_VIDEO))
    cap.set(cv2.CAP_PROP_POS_FRAMES, int(second * 10))
    ok, img = cap.read()
    assert ok
    return img


def lines(stdout: str) -> list[dict]:
    return [json.loads(line) for line in stdout.splitlines() if line.strip()]


def test_classify_face_detects_and_labels_each_image_in_a_folder(tmp_path: Path) -> None:
    cv2.imwrite(str(tmp_path / "astronaut.png"), frame_at(3.0))  # the smiling astronaut
    cv2.imwrite(str(tmp_path / "blank.png"), np.full((480, 640, 3), 127, np.uint8))
    cfg = write_config(tmp_path / "config.yaml")
    proc = run_cli("--config", str(cfg), "classify", "face", str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    out = {Path(r["path"]).name: r for r in lines(proc.stdout)}
    assert set(out) == {"astronaut.png", "blank.png"}
    face = out["astronaut.png"]
    assert face["label"] == "happy" and face["faces"] == 1 and set(face["probs"]) == set(CANONICAL)
    assert abs(sum(face["probs"].values()) - 1) < 0.02 and face["confidence"] == max(face["probs"].values())
    assert out["blank.png"]["label"] is None and out["blank.png"]["faces"] == 0


def test_classify_face_no_detect_takes_images_as_crops(tmp_path: Path) -> None:
    crop = cv2.cvtColor(frame_at(3.0)[60:300, 240:420], cv2.COLOR_BGR2GRAY)  # around the astronaut's face
    cv2.imwrite(str(tmp_path / "crop.png"), crop)
    proc = run_cli(
        "--config",
        str(write_config(tmp_path / "config.yaml")),
        "classify",
        "face",
        "--no-detect",
        str(tmp_path / "crop.png"),
    )
    assert proc.returncode == 0, proc.stderr
    [r] = lines(proc.stdout)
    assert r["label"] in CANONICAL and "faces" not in r


def test_classify_speech_labels_each_wav(tmp_path: Path) -> None:
    x = read_wav(CLIP_AUDIO)
    for name, start in (("first.wav", 0), ("second.wav", 6)):
        with wave.open(str(tmp_path / name), "wb") as w:
            w.setnchannels(1)
            w.setsampwidth(2)
            w.setframerate(16000)
            w.writeframes(x[start * 16000 : (start + 6) * 16000].tobytes())
    proc = run_cli("--config", str(write_config(tmp_path / "config.yaml")), "classify", "speech", str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    out = lines(proc.stdout)
    assert [Path(r["path"]).name for r in out] == ["first.wav", "second.wav"]
    for r in out:
        assert r["label"] in SPEECH_LABELS and set(r["probs"]) == set(SPEECH_LABELS)


def test_classify_reports_unreadable_files_and_exits_2(tmp_path: Path) -> None:
    (tmp_path / "broken.png").write_bytes(b"not an image")
    cv2.imwrite(str(tmp_path / "fine.png"), frame_at(3.0))
    proc = run_cli("--config", str(write_config(tmp_path / "config.yaml")), "classify", "face", str(tmp_path))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "broken.png: not a readable image" in proc.stderr
    assert {Path(r["path"]).name for r in lines(proc.stdout)} == {"broken.png", "fine.png"}  # the rest still ran


def test_replay_of_an_unreadable_video_is_one_clear_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"\x00" * 512)
    assert_clean_error(
        run_cli("--config", str(write_config(tmp_path / "config.yaml")), "replay", "--video", str(bad), "--no-mqtt"),
        "bad.mp4",
        "not a readable video",
    )


def test_devices_lists_what_this_machine_has() -> None:
    proc = run_cli("devices")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("microphones:") and "\ncameras:" in proc.stdout


def test_bench_prints_medians_per_stage(tmp_path: Path) -> None:
    proc = run_cli("--config", str(write_config(tmp_path / "config.yaml")), "bench", "--frames", "20")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["frames"] == 20 and report["frames_with_face"] == 20
    for key in ("face_detect_ms", "face_classify_ms", "face_path_ms", "speech_path_ms_per_audio_s", "peak_rss_mb"):
        assert report[key] > 0
