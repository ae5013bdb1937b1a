"""A private MQTT broker on a free loopback port, for `demo` and for the tests.

Mosquitto when it is installed (the quick start installs it); otherwise the
pure-Python amqtt broker if that is importable.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .errors import UserError


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(port: int, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return True
        time.sleep(0.05)
    return False


def stop_process(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM, and SIGKILL if it is still there after 5 s."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class LocalBroker:
    """Start with `start()`, stop with `stop()`; `port` is where it listens. `extra_conf` adds mosquitto.conf lines.

    With `persistence`, Mosquitto keeps sessions and retained messages across `stop()`/`start()` (the tests'
    subscribers use that to miss nothing while the broker is down); without, a restart forgets everything.
    """

    def __init__(self, port: int | None = None, extra_conf: str = "", persistence: bool = False) -> None:
        self.port = port or free_port()
        self.extra_conf = extra_conf
        self.persistence = persistence
        self.proc: subprocess.Popen[bytes] | None = None
        self.kind = ""
        self._dir = tempfile.TemporaryDirectory(prefix="emotion-edge-broker-")

    def start(self) -> LocalBroker:
        mosquitto = shutil.which("mosquitto") or next((p for p in ("/usr/sbin/mosquitto",) if Path(p).exists()), None)
        if mosquitto:
            conf = Path(self._dir.name) / "mosquitto.conf"
            conf.write_text(
                f"listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence false\n{self.extra_conf}\n"
            )
            cmd = [mosquitto, "-c", str(conf)]
            self.kind = "mosquitto"
        else:
            try:
                import amqtt  # noqa: F401
            except ImportError:
                raise UserError(
                    "no MQTT broker available: install mosquitto (sudo apt-get install mosquitto) or pip install amqtt"
                ) from None
            cmd = [sys.executable, "-m", "edge_daemon.devbroker_amqtt", str(self.port)]
            self.kind = "amqtt"
        log = open(Path(self._dir.name) / "broker.log", "wb")  # noqa: SIM115 - lives as long as the process
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        if not wait_for_port(self.port):
            self.stop()
            raise UserError(f"local {self.kind} broker did not start on port {self.port}; see {log.name}")
        return self

    def stop(self) -> None:
        if self.proc:
            stop_process(self.proc)
        self.proc = None

    def __enter__(self) -> LocalBroker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
        self._dir.cleanup()
