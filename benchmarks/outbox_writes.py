"""How much the daemon writes to its state_dir per event, with the broker up, and what that is per day.

    .venv/bin/python benchmarks/outbox_writes.py [--events 300] [--window 0.5] [--state-dir DIR]

Runs `emotion-edge run` as the service would, with the bundled clip as its camera (looping in real time), no
microphone, publishing to a private Mosquitto, and short fusion windows so that a few hundred events take minutes,
not hours (what an event costs the outbox does not depend on the window). It reads the daemon's `write_bytes` from
/proc/PID/io (bytes the process caused to be sent to the block device, from the first event to the last) and the
size of the outbox files, and prints bytes per event and MB per day at the default 2 s window. The state_dir must
be on a real block-device file system (not tmpfs) for write_bytes to count: the default is a folder under this
checkout.
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import yaml
from paho.mqtt.enums import CallbackAPIVersion

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from edge_daemon.devbroker import LocalBroker  # noqa: E402


def write_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/io").read_text().splitlines():
        if line.startswith("write_bytes:"):
            return int(line.split()[1])
    raise RuntimeError("no write_bytes in /proc/PID/io")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=300)
    ap.add_argument("--window", type=float, default=0.5, help="fusion.window_s for the run (default 0.5)")
    ap.add_argument("--state-dir", default=None, help="where the outbox goes (default: a folder in this checkout)")
    args = ap.parse_args()
    state = Path(args.state_dir) if args.state_dir else Path(tempfile.mkdtemp(prefix=".outbox-writes-", dir=ROOT))
    seqs: list[int] = []
    with LocalBroker() as broker, tempfile.TemporaryDirectory() as tmp:
        cfg = {
            "device_id": "writes",
            "models": {"dir": str(ROOT / "models_tflite")},
            "state_dir": str(state),
            "camera": {"source": str(ROOT / "tests" / "fixtures" / "av" / "clip.mp4")},
            "microphone": {"enabled": False},
            "fusion": {"window_s": args.window},
            "mqtt": {"host": "127.0.0.1", "port": broker.port},
        }
        (Path(tmp) / "c.yaml").write_text(yaml.safe_dump(cfg))
        sub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="writes-sub")
        got = threading.Event()

        def on_message(c: object, u: object, msg: mqtt.MQTTMessage) -> None:
            seqs.append(json.loads(msg.payload)["seq"])
            got.set()

        sub.on_message = on_message
        sub.on_connect = lambda c, u, f, rc, p: c.subscribe("emotion-edge/writes/events", qos=1)
        sub.connect("127.0.0.1", broker.port)
        sub.loop_start()
        proc = subprocess.Popen(
            [sys.executable, "-m", "edge_daemon", "--config", str(Path(tmp) / "c.yaml"), "run"],
            cwd=ROOT, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            if not got.wait(120):
                print("no event within 120 s", file=sys.stderr)
                return 1
            first, start, t0 = len(seqs), write_bytes(proc.pid), time.monotonic()
            while len(seqs) < first + args.events:
                time.sleep(0.5)
                if proc.poll() is not None:
                    print("the daemon ended", file=sys.stderr)
                    return 1
            written, n, elapsed = write_bytes(proc.pid) - start, len(seqs) - first, time.monotonic() - t0
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=20)
            sub.loop_stop()
    files = {p.name: p.stat().st_size for p in sorted(state.glob("outbox*"))}
    if not args.state_dir:
        shutil.rmtree(state, ignore_errors=True)
    per_event = written / n
    print(f"{n} events in {elapsed:.0f} s (window {args.window} s): {written} bytes written by the daemon")
    print(f"{per_event:.0f} bytes/event -> {per_event * 86400 / 2.0 / 1e6:.2f} MB/day at the default 2 s window")
    print(f"outbox files after SIGTERM: {files}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
