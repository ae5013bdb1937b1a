"""The systemd unit: valid, notify-type with a watchdog, and sandboxed to an exposure of 2.5 or lower."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

from .conftest import ROOT

UNIT = ROOT / "systemd" / "emotion-edge.service"


def installed_copy(tmp_path: Path) -> Path:
    """The unit as installed, with ExecStart pointing at an executable that exists here (verify checks it)."""
    text = UNIT.read_text().replace("/opt/emotion-edge/.venv/bin/emotion-edge", str(Path(sys.executable).resolve()))
    unit = tmp_path / "emotion-edge.service"
    unit.write_text(text)
    return unit


def analyze(*args: str) -> subprocess.CompletedProcess[str]:
    tool = shutil.which("systemd-analyze")
    assert tool, "systemd-analyze is part of systemd: scripts/bootstrap.sh installs it"
    return subprocess.run([tool, *args], capture_output=True, text=True, timeout=60)


def test_unit_verifies(tmp_path: Path) -> None:
    proc = analyze("verify", str(installed_copy(tmp_path)))
    assert proc.returncode == 0 and not proc.stderr.strip(), proc.stderr


def test_unit_exposure_is_at_most_2_5(tmp_path: Path) -> None:
    proc = analyze("security", "--offline=true", str(installed_copy(tmp_path)))
    score = float(re.search(r"Overall exposure level for \S+: ([\d.]+)", proc.stdout).group(1))
    assert score <= 2.5, proc.stdout[-3000:]


def test_unit_is_notify_type_with_watchdog_credentials_and_unprivileged_user() -> None:
    text = UNIT.read_text()
    for line in (
        "Type=notify",
        "WatchdogSec=",
        "Restart=on-failure",
        "User=emotion-edge",
        "SupplementaryGroups=video audio",
        "StateDirectory=emotion-edge",
        "ConfigurationDirectory=emotion-edge",
        "LoadCredential=mqtt_password:",
        "LoadCredential=web_password:",
        "ExecReload=",
        "MemoryMax=",
    ):
        assert re.search(rf"^{re.escape(line)}", text, re.M), line


def test_daemon_reports_ready_pings_the_watchdog_and_says_stopping(tmp_path: Path) -> None:
    import os
    import signal
    import socket
    import time

    from .conftest import CLIP_VIDEO, write_config

    addr = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(addr)
    sock.settimeout(0.5)
    cfg = write_config(
        tmp_path / "config.yaml", camera={"source": str(CLIP_VIDEO)}, microphone={"enabled": False}, mqtt={"port": 1}
    )
    env = {**os.environ, "NOTIFY_SOCKET": addr, "WATCHDOG_USEC": "2000000"}  # WatchdogSec=2: a ping every second
    proc = subprocess.Popen(
        [sys.executable, "-m", "edge_daemon", "--config", str(cfg), "run"], cwd=ROOT, env=env, stderr=subprocess.DEVNULL
    )
    got: list[str] = []
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and got.count("WATCHDOG=1") < 3:
            try:
                got.append(sock.recv(256).decode())
            except TimeoutError:
                pass
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=10)
        while True:
            try:
                got.append(sock.recv(256).decode())
            except TimeoutError:
                break
    finally:
        if proc.poll() is None:
            proc.kill()
        sock.close()
    assert got[0] == "READY=1" and got.count("WATCHDOG=1") >= 3 and got[-1] == "STOPPING=1", got
    assert proc.returncode == 0
