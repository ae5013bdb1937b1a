"""Helpers for the device page tests: the daemon as systemd runs it, with its page on a free port, and an HTTP client."""

from __future__ import annotations

import base64
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .conftest import CLIP_VIDEO, ROOT, write_config

PASSWORD = "correct horse battery staple"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out after {timeout} s waiting for {what}"
        time.sleep(0.1)


class Response:
    def __init__(self, status: int, headers: http.client.HTTPMessage, body: bytes) -> None:
        self.status, self.headers, self.body = status, headers, body

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def text(self) -> str:
        return self.body.decode("utf-8")


def request(
    port: int,
    method: str,
    path: str,
    *,
    basic: tuple[str, str] | None = None,
    cookie: str | None = None,
    headers: dict[str, str] | None = None,
    body: bytes | str | None = None,
    source: str | None = None,
    timeout: float = 15,
) -> Response:
    """One HTTP request on its own connection (from `source`, another loopback address, if given)."""
    h = dict(headers or {})
    if basic:
        h["Authorization"] = "Basic " + base64.b64encode(f"{basic[0]}:{basic[1]}".encode()).decode()
    if cookie:
        h["Cookie"] = cookie
    conn = http.client.HTTPConnection(
        "127.0.0.1", port, timeout=timeout, source_address=(source, 0) if source else None
    )
    try:
        conn.request(method, path, body=body, headers=h)
        r = conn.getresponse()
        return Response(r.status, r.headers, r.read())
    finally:
        conn.close()


def admin(port: int, path: str, **kw: Any) -> Response:
    return request(port, kw.pop("method", "GET"), path, basic=("admin", PASSWORD), **kw)


def login(port: int, password: str = PASSWORD, source: str | None = None) -> Response:
    return request(
        port,
        "POST",
        "/login",
        body=f"password={password.replace(' ', '+')}",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
        source=source,
    )


def session_cookie(resp: Response) -> str:
    """`name=value` of the session cookie a login set."""
    return resp.headers["Set-Cookie"].split(";", 1)[0]


class Trickler(threading.Thread):
    """A slow client: a `POST /login` whose headers arrive at once and whose body (a password guess) follows one byte
    every `every_s`, until the server hangs up. `closed_after` is how long that took, `reply` what it said."""

    def __init__(self, port: int, every_s: float = 0.5, source: str | None = None, length: int = 100) -> None:
        super().__init__(daemon=True)
        self.sock = socket.create_connection(
            ("127.0.0.1", port), timeout=5, source_address=(source, 0) if source else None
        )
        self.sock.sendall(
            b"POST /login HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\n"
            + f"Content-Length: {length}\r\n\r\n".encode()
        )
        self.body = (b"password=" + b"guess" * length)[: length - 1]  # one byte short: it never ends by itself
        self.every_s = every_s
        self.t0 = time.monotonic()
        self.closed_after: float | None = None
        self.reply = b""

    def run(self) -> None:
        self.sock.settimeout(self.every_s)
        sent = 0
        try:
            while time.monotonic() - self.t0 < 60:
                try:
                    data = self.sock.recv(4096)
                except TimeoutError:
                    if sent < len(self.body):
                        self.sock.sendall(self.body[sent : sent + 1])
                        sent += 1
                    continue
                if not data:
                    break
                self.reply += data
        except OSError:  # reset: closed too
            pass
        self.closed_after = time.monotonic() - self.t0
        self.sock.close()


def truncated_login(port: int, source: str | None = None) -> None:
    """A `POST /login` that announces 100 bytes of body, sends a password guess of 20 and hangs up."""
    with socket.create_connection(("127.0.0.1", port), timeout=5, source_address=(source, 0) if source else None) as s:
        s.sendall(
            b"POST /login HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\n"
            b"Content-Length: 100\r\n\r\npassword=cut-off-abc"
        )


def web_config(tmp_path: Path, port: int, broker_port: int | None = None, **sections: Any) -> Path:
    mqtt = {"host": "127.0.0.1", "port": broker_port, "stats_interval_s": 1} if broker_port else {"port": free_port()}
    cfg = {
        "device_id": "livingroom",
        "camera": {"source": str(CLIP_VIDEO), "reconnect_min_s": 0.2, "reconnect_max_s": 0.5},
        "microphone": {"reconnect_min_s": 0.2, "reconnect_max_s": 0.5},
        "mqtt": mqtt,
        "web": {"enabled": True, "host": "127.0.0.1", "port": port},
    }
    for key, value in sections.items():
        cfg[key] = {**cfg.get(key, {}), **value} if isinstance(value, dict) else value
    return write_config(tmp_path / "config.yaml", **cfg)


class Daemon:
    """`emotion-edge --config CFG run` (or any other command line) with its log in a file."""

    def __init__(self, tmp_path: Path, args: list[str], env: dict[str, str] | None = None) -> None:
        self.log_path = tmp_path / f"daemon-{time.monotonic_ns()}.log"
        self._log = open(self.log_path, "w")  # noqa: SIM115 - closed in stop()
        full_env = {**os.environ, "EMOTION_EDGE_WEB_PASSWORD": PASSWORD, **(env or {})}
        for k, v in list(full_env.items()):
            if v is None:
                del full_env[k]
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "edge_daemon", *args], cwd=ROOT, stderr=self._log, text=True, env=full_env
        )

    @property
    def log(self) -> str:
        return self.log_path.read_text()

    def wait_for_page(self, port: int, timeout: float = 60) -> None:
        def up() -> bool:
            assert self.proc.poll() is None, f"daemon exited {self.proc.returncode}:\n{self.log}"
            try:
                return request(port, "GET", "/api/health", timeout=2).status in (200, 503)
            except OSError:
                return False

        wait_until(up, timeout, "the device page")

    def stop(self) -> str:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            finally:
                if self.proc.poll() is None:
                    self.proc.kill()
                    self.proc.wait()
        self._log.close()
        return self.log
