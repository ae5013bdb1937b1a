"""Does the device page cost perception anything? The same live daemon measured with no web clients, then with
20 stream clients (and, optionally, 50 idle connections), with `emotion-edge bench` running beside it each time.
With --trickle N, a last phase has N clients send `POST /login` bodies one byte every 5 s (reconnecting whenever
they are cut off) while a health check runs every 2 s: how many checks were answered, how long each slow
connection lived, and whether the owner can still log in from the same address afterwards.

    .venv/bin/python benchmarks/web_load.py [--seconds 60] [--idle 50] [--trickle 80 [--trickle-only]]

`emotion-edge run` with the bundled clip as its camera (looping in real time), publishing to a private Mosquitto,
its page on a free port. For each phase it reports: the gaps between events arriving over MQTT (a window closes every
2 s), the daemon's own inference medians (from /api/stats), its RSS, and `bench`'s medians measured meanwhile.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import yaml
from paho.mqtt.enums import CallbackAPIVersion

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from edge_daemon.devbroker import LocalBroker  # noqa: E402

PASSWORD = "bench-password"
AUTH = "Basic " + base64.b64encode(f"admin:{PASSWORD}".encode()).decode()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def get(port: int, path: str) -> Any:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: {AUTH}\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    return json.loads(data.split(b"\r\n\r\n", 1)[1])


class StreamReader(threading.Thread):
    def __init__(self, port: int, stop: threading.Event) -> None:
        super().__init__(daemon=True)
        self.port, self.stop, self.events = port, stop, 0

    def run(self) -> None:
        with socket.create_connection(("127.0.0.1", self.port), timeout=30) as s:
            s.sendall(f"GET /api/stream HTTP/1.1\r\nHost: x\r\nAuthorization: {AUTH}\r\n\r\n".encode())
            while not self.stop.is_set():
                try:
                    chunk = s.recv(65536)
                except TimeoutError:
                    continue
                if not chunk:
                    return
                self.events += chunk.count(b"event: event\n")


def phase(name: str, port: int, pid: int, broker_port: int, seconds: float, streams: int, idle: int) -> dict:
    arrivals: list[float] = []
    sub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"web-load-{name}")
    sub.on_connect = lambda c, u, f, rc, p: c.subscribe("emotion-edge/bench/events", qos=1)
    sub.on_message = lambda c, u, m: arrivals.append(time.monotonic())
    sub.connect("127.0.0.1", broker_port)
    sub.loop_start()
    stop = threading.Event()
    readers = [StreamReader(port, stop) for _ in range(streams)]
    for r in readers:
        r.start()
    idlers = []
    for _ in range(idle):
        s = socket.create_connection(("127.0.0.1", port))
        s.sendall(b"GET /api/sta")  # and never the rest
        idlers.append(s)
    time.sleep(3)
    clients = get(port, "/api/stats")["web"]["stream_clients"]
    arrivals.clear()
    started = time.monotonic()
    bench = subprocess.run(
        [sys.executable, "-m", "edge_daemon", "bench", "--frames", "200"], cwd=ROOT, capture_output=True, text=True
    )
    time.sleep(max(0.0, seconds - (time.monotonic() - started)))
    stats = get(port, "/api/stats")
    rss = rss_mb(pid)
    stop.set()
    for s in idlers:
        s.close()
    sub.loop_stop()
    sub.disconnect()
    gaps = [b - a for a, b in zip(arrivals, arrivals[1:], strict=False)]
    return {
        "phase": name,
        "stream_clients": clients,
        "idle_connections": idle,
        "events": len(arrivals),
        "event_gap_s": {"median": round(statistics.median(gaps), 3), "max": round(max(gaps), 3)} if gaps else None,
        "stream_events_per_client": [r.events for r in readers][:3],
        "daemon_inference_ms": stats["stats"]["inference_ms"],
        "daemon_drops": stats["stats"]["drops"],
        "daemon_rss_mb": round(rss, 1),
        "bench": json.loads(bench.stdout) if bench.returncode == 0 else bench.stderr[-500:],
    }


class SlowLogin(threading.Thread):
    """Sends a login body one byte every `every_s`, reconnecting whenever the server cuts it off."""

    def __init__(self, port: int, stop: threading.Event, every_s: float = 5.0) -> None:
        super().__init__(daemon=True)
        self.port, self.stop, self.every_s = port, stop, every_s
        self.lifetimes: list[float] = []

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                s = socket.create_connection(("127.0.0.1", self.port), timeout=self.every_s)
            except OSError:
                self.stop.wait(0.5)
                continue
            t0 = time.monotonic()
            try:
                s.sendall(b"POST /login HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\npassword=")
                while not self.stop.is_set():
                    try:
                        if not s.recv(4096):  # the server's answer (503, 408) and then its close
                            break
                    except TimeoutError:
                        s.sendall(b"x")
            except OSError:
                pass
            finally:
                s.close()
            if not self.stop.is_set():
                self.lifetimes.append(time.monotonic() - t0)


def trickle_phase(port: int, seconds: float, n: int) -> dict:
    stop = threading.Event()
    slow = [SlowLogin(port, stop) for _ in range(n)]
    for t in slow:
        t.start()
    time.sleep(2)
    answers: dict[str, int] = {}
    started = time.monotonic()
    while time.monotonic() - started < seconds:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
                s.sendall(b"GET /api/health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                status = s.recv(64).split(b" ")[1].decode()
        except (OSError, IndexError):
            status = "no answer"
        answers[status] = answers.get(status, 0) + 1
        time.sleep(2)
    stop.set()
    for t in slow:
        t.join(10)
    lifetimes = sorted(x for t in slow for x in t.lifetimes)
    login = socket.create_connection(("127.0.0.1", port), timeout=10)
    login.sendall(
        f"POST /login HTTP/1.1\r\nHost: x\r\nContent-Length: {9 + len(PASSWORD)}\r\n\r\npassword={PASSWORD}".encode()
    )
    owner = login.recv(64).split(b" ")[1].decode()
    login.close()
    stats = get(port, "/api/stats")
    web = stats.get("web", stats)  # {"error": ...} when the bench's own address is locked out too
    return {
        "phase": f"{n} clients trickling a login body, one byte every 5 s",
        "health_checks": answers,
        "slow_connections": len(lifetimes),
        "slow_connection_s": {"median": round(statistics.median(lifetimes), 1), "max": round(lifetimes[-1], 1)}
        if lifetimes
        else None,
        "owner_login_afterwards": owner,
        "web_counters": web,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=60, help="length of each phase (bench runs inside it)")
    ap.add_argument("--idle", type=int, default=0, help="idle (slowloris) connections in the loaded phase")
    ap.add_argument("--trickle", type=int, default=0, help="clients trickling login bodies in a last phase")
    ap.add_argument("--trickle-only", action="store_true", help="skip the two load phases")
    args = ap.parse_args()
    with LocalBroker() as broker, tempfile.TemporaryDirectory() as tmp:
        port = free_port()
        cfg = {
            "device_id": "bench",
            "models": {"dir": str(ROOT / "models_tflite")},
            "state_dir": str(Path(tmp) / "state"),
            "camera": {"source": str(ROOT / "tests" / "fixtures" / "av" / "clip.mp4")},
            "microphone": {"enabled": False},
            "mqtt": {"host": "127.0.0.1", "port": broker.port, "stats_interval_s": 5},
            "web": {"host": "127.0.0.1", "port": port},
        }
        path = Path(tmp) / "config.yaml"
        path.write_text(yaml.safe_dump(cfg))
        env = {**os.environ, "EMOTION_EDGE_WEB_PASSWORD": PASSWORD}
        proc = subprocess.Popen(
            [sys.executable, "-m", "edge_daemon", "--config", str(path), "--log-level", "warning", "run"],
            cwd=ROOT, env=env,
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    get(port, "/api/stats")
                    break
                except (OSError, ValueError, IndexError):
                    assert time.monotonic() < deadline and proc.poll() is None, "the daemon did not come up"
                    time.sleep(0.5)
            time.sleep(5)  # past the first windows
            results = [] if args.trickle_only else [
                phase("no web clients", port, proc.pid, broker.port, args.seconds, 0, 0),
                phase("20 stream clients", port, proc.pid, broker.port, args.seconds, 20, args.idle),
            ]  # fmt: skip
            if args.trickle:
                results.append(trickle_phase(port, args.seconds, args.trickle))
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=15)
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
