"""The CLI as a user runs it: classify, devices, bench, check, replay's input mistakes, options and signals."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import wave
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from edge_daemon.capture.files import read_wav
from edge_daemon.labels import CANONICAL, SPEECH_LABELS

from .conftest import CLIP_AUDIO, CLIP_VIDEO, ROOT, assert_clean_error, run_cli, write_config


def frame_at(second: float) -> np.ndarray:
    cap = cv2.VideoCapture(str(CLIP_VIDEO))
    cap.set(cv2.CAP_PROP_POS_FRAMES, int(second * 10))
    ok, img = cap.read()
    assert ok
    return img


def lines(stdout: str) -> list[dict]:
    return [json.loads(line) for line in stdout.splitlines() if line.strip()]


def write_wav(path: Path, samples: np.ndarray) -> Path:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes(samples.astype(np.int16).tobytes())
    return path


def free_port() -> int:
    """A port nothing listens on (bound and released), so a broker probe is refused at once."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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
        assert r["voiced_windows"] >= 1


def test_classify_speech_gives_no_label_for_silence(tmp_path: Path) -> None:
    # The model always has an argmax, even for silence; a confident "fear" for an all-zero file is not an answer.
    write_wav(tmp_path / "silent.wav", np.zeros(3 * 16000))
    proc = run_cli("--config", str(write_config(tmp_path / "config.yaml")), "classify", "speech", str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    [r] = lines(proc.stdout)
    assert r["label"] is None and r["probs"] is None and r["confidence"] == 0.0 and r["voiced_windows"] == 0


def test_classify_speech_reports_empty_and_header_only_wavs(tmp_path: Path) -> None:
    (tmp_path / "empty.wav").write_bytes(b"")
    write_wav(tmp_path / "header.wav", np.zeros(0))
    proc = run_cli("--config", str(write_config(tmp_path / "config.yaml")), "classify", "speech", str(tmp_path))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert f"{tmp_path / 'empty.wav'}: the file is empty (0 bytes)" in proc.stderr
    assert f"{tmp_path / 'header.wav'}: the wav file holds no samples" in proc.stderr


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


def test_replay_input_mistakes_are_one_clear_line(tmp_path: Path) -> None:
    (tmp_path / "empty.wav").write_bytes(b"")
    write_wav(tmp_path / "header.wav", np.zeros(0))
    (tmp_path / "folder.mp4").mkdir()
    cfg = str(write_config(tmp_path / "config.yaml"))
    for option, path, message in (
        ("--audio", tmp_path / "empty.wav", "the file is empty (0 bytes)"),
        ("--audio", tmp_path / "header.wav", "the wav file holds no samples"),  # a valid header is still nothing
        ("--audio", tmp_path / "folder.mp4", "is a directory, expected a wav file"),
        ("--video", tmp_path / "folder.mp4", "is a directory, expected a video file"),
    ):
        proc = run_cli("--config", cfg, "replay", option, str(path), "--no-mqtt")
        assert_clean_error(proc, f"{path}: {message}")


@pytest.mark.parametrize(
    "args",
    [
        ("bench", "--frames", "0"),
        ("bench", "--frames", "-1"),
        ("replay", "--audio", str(CLIP_AUDIO), "--no-mqtt", "--drain-timeout", "-1"),
        ("replay", "--audio", str(CLIP_AUDIO), "--no-mqtt", "--drain-timeout", "nan"),
    ],
)
def test_counts_and_seconds_that_make_no_sense_are_refused(tmp_path: Path, args: tuple[str, ...]) -> None:
    proc = run_cli("--config", str(write_config(tmp_path / "config.yaml")), *args)
    assert_clean_error(proc, args[-2], repr(args[-1]))
    assert proc.stdout == ""  # no report full of NaN


def test_config_and_log_level_are_taken_after_the_command_too(tmp_path: Path) -> None:
    missing = tmp_path / "missing.yaml"
    assert_clean_error(run_cli("check", "--config", str(missing)), str(missing), "config file not found")
    # Given in both places, the one after the command counts, as the later of two options does.
    assert_clean_error(
        run_cli("--config", "elsewhere.yaml", "classify", "speech", "--config", str(missing), str(CLIP_AUDIO)),
        str(missing),
        "config file not found",
    )
    cfg = str(write_config(tmp_path / "config.yaml"))
    wav = str(write_wav(tmp_path / "short.wav", np.zeros(16000)))
    before = run_cli("--config", cfg, "--log-level", "warning", "replay", "--audio", wav, "--no-mqtt")
    after = run_cli("replay", "--audio", wav, "--no-mqtt", "--log-level", "warning", "--config", cfg)
    default = run_cli("--config", cfg, "replay", "--audio", wav, "--no-mqtt")
    for proc in (before, after, default):
        assert proc.returncode == 0, proc.stderr
    assert "replay done" in default.stderr  # logged at info: the level is what hides it below
    assert "replay done" not in before.stderr and "replay done" not in after.stderr


def test_check_on_a_board_without_a_camera_prints_no_opencv_warnings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("OPENCV_LOG_LEVEL", raising=False)  # the CLI's own default is what is under test
    cfg = write_config(
        tmp_path / "config.yaml",
        camera={"source": 9},  # /dev/video9: not there
        microphone={"enabled": False},
        mqtt={"host": "127.0.0.1", "port": free_port()},
    )
    proc = run_cli("check", "--config", str(cfg))
    assert proc.returncode == 2 and "camera: cannot open 9" in proc.stdout, proc.stdout + proc.stderr
    assert "[ WARN" not in proc.stderr and "[ WARN" not in proc.stdout, proc.stderr


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_interrupted_replay_says_so_and_exits_128_plus_the_signal(tmp_path: Path, signum: int) -> None:
    cfg = write_config(tmp_path / "config.yaml")
    proc = subprocess.Popen(
        [sys.executable, "-m", "edge_daemon", "--config", str(cfg), "replay", "--video", str(CLIP_VIDEO),
         "--audio", str(CLIP_AUDIO), "--realtime", "--no-mqtt", "--events-out", "-"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        first = proc.stdout.readline()  # the 18 s clip in real time: the stop lands well before its end
        assert first.strip(), proc.stderr.read() if proc.poll() is not None else "no event"
        proc.send_signal(signum)
        _, stderr = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 128 + signum, stderr
    assert "replay interrupted" in stderr and "replay done" not in stderr and "Traceback" not in stderr, stderr


def test_ctrl_c_while_the_models_load_is_one_line(tmp_path: Path, monkeypatch: Any, capsys: Any) -> None:
    # Where a real Ctrl-C lands is up to the kernel (any of the process's threads may take it; a FIFO-based version
    # of this test raced in CI), so the interrupt is injected exactly where it matters: inside model loading,
    # before the command's own signal handlers exist. Everything around it is the real CLI.
    from edge_daemon import cli, daemon

    def interrupted(config: Any) -> Any:
        raise KeyboardInterrupt

    monkeypatch.setattr(daemon, "load_models", interrupted)
    monkeypatch.setattr(cli, "setup_logging", lambda level: None)  # leave this test process's logging alone
    cfg = write_config(tmp_path / "config.yaml")
    code = cli.main(["--config", str(cfg), "replay", "--audio", str(CLIP_AUDIO), "--no-mqtt"])
    err = capsys.readouterr().err
    assert code == 130, err
    assert [line for line in err.splitlines() if line.startswith("emotion-edge")] == ["emotion-edge: interrupted"]
    assert "Traceback" not in err


def test_devices_lists_what_this_machine_has() -> None:
    proc = run_cli("devices")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("microphones:") and "\ncameras:" in proc.stdout


def test_bench_prints_medians_per_stage(tmp_path: Path) -> None:
    proc = run_cli("--config", str(write_config(tmp_path / "config.yaml")), "bench", "--frames", "20")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["frames"] == 20 and report["frames_with_face"] == 20
    keys = ("face_detect_ms", "face_classify_ms", "face_path_ms", "face_path_tracked_ms", "speech_path_ms_per_audio_s")
    for key in (*keys, "peak_rss_mb"):
        assert report[key] > 0
    assert report["face_detect_every"] == 5  # the daemon's default, timed as the daemon runs it


def _check_and_run(cfg: Path) -> tuple[list[str], str]:
    """`check`'s problem lines (stdout), and the one error line `run` gives, without its `emotion-edge: error: `."""
    check = run_cli("--config", str(cfg), "check", timeout=60)
    assert check.returncode == 2 and "Traceback" not in check.stderr, check.stdout + check.stderr
    run = run_cli("--config", str(cfg), "run", timeout=60)
    assert_clean_error(run)
    error = next(line for line in run.stderr.splitlines() if "error" in line.lower())
    return check.stdout.splitlines(), error.removeprefix("emotion-edge: error: ")


@pytest.mark.parametrize("what", ["not-pem", "missing-key"])
def test_check_refuses_web_tls_files_that_run_cannot_load_with_the_same_line(tmp_path: Path, what: str) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.write_text("this is not a certificate\n")  # e.g. a DER file, or the wrong file copied
    if what == "not-pem":
        key.write_text("nor is this a key\n")
    cfg = write_config(
        tmp_path / "config.yaml", camera={"enabled": False}, microphone={"enabled": False},
        mqtt={"host": "127.0.0.1", "port": free_port()},
        web={"enabled": True, "port": free_port(), "tls": {"cert_file": str(cert), "key_file": str(key)}},
    )  # fmt: skip
    lines, error = _check_and_run(cfg)
    assert error.startswith("web.tls:") and str(cert) in error, error
    assert error in lines, lines  # before: `check` had no web.tls line at all


def test_check_refuses_a_state_dir_where_nothing_can_be_created_with_the_same_line(tmp_path: Path) -> None:
    # /proc is a directory and, for root, os.access says writable: only creating something there tells.
    cfg = write_config(
        tmp_path / "config.yaml", camera={"enabled": False}, microphone={"enabled": False},
        mqtt={"host": "127.0.0.1", "port": free_port()}, state_dir="/proc/emotion-edge",
    )  # fmt: skip
    lines, error = _check_and_run(cfg)
    assert error.startswith("state_dir:") and "/proc" in error, error
    assert error in lines, lines


def test_a_missing_mqtt_ca_file_is_one_line_in_check_as_in_run(tmp_path: Path) -> None:
    missing = tmp_path / "ca.pem"
    cfg = write_config(
        tmp_path / "config.yaml", camera={"enabled": False}, microphone={"enabled": False},
        mqtt={"host": "127.0.0.1", "port": free_port(), "tls": {"enabled": True, "ca_file": str(missing)}},
    )  # fmt: skip
    lines, error = _check_and_run(cfg)
    assert error == f"mqtt.tls.ca_file: {missing} not found", error
    # Before: "mqtt: broker 127.0.0.1:PORT (mqtt.host, mqtt.port) mqtt.tls.ca_file: ... not found", two in one.
    assert error in lines, lines
    assert not any("mqtt: broker" in line for line in lines), lines


def test_check_probes_each_node_of_mqtt_hosts_and_fails_only_when_none_answers(tmp_path: Path, broker: Any) -> None:
    down = free_port()
    nodes = [f"127.0.0.1:{down}", f"127.0.0.1:{broker.port}"]
    cfg = write_config(
        tmp_path / "config.yaml", camera={"enabled": False}, microphone={"enabled": False}, mqtt={"hosts": nodes}
    )
    one_down = run_cli("--config", str(cfg), "check", timeout=60)
    assert one_down.returncode == 0, one_down.stdout + one_down.stderr
    assert (
        f"warning: mqtt: broker node 127.0.0.1:{down} (mqtt.hosts[0]) is unreachable" in one_down.stdout
        and f"the device uses the nodes that answer: 127.0.0.1:{broker.port}" in one_down.stdout
    ), one_down.stdout
    other = free_port()
    cfg = write_config(
        tmp_path / "config.yaml", camera={"enabled": False}, microphone={"enabled": False},
        mqtt={"hosts": [f"127.0.0.1:{down}", f"127.0.0.1:{other}"]},
    )  # fmt: skip
    none = run_cli("--config", str(cfg), "check", timeout=60)
    assert none.returncode == 2, none.stdout + none.stderr
    failing = [line.split(")")[0] for line in none.stdout.splitlines() if line.startswith("mqtt: broker node")]
    assert failing == [
        f"mqtt: broker node 127.0.0.1:{down} (mqtt.hosts[0]",
        f"mqtt: broker node 127.0.0.1:{other} (mqtt.hosts[1]",
    ], none.stdout
