"""Soak: run the daemon for a set time on media in a loop and report its memory and open files over time.

    .venv/bin/python benchmarks/soak.py --minutes 20 [--config config.yaml] [--interval 30]

The daemon runs as a service would (`emotion-edge run`), with the bundled clip as its camera (a file is reopened at
its end, so it loops in real time) and publishing to a private Mosquitto. Every `interval` seconds the script reads
the daemon's resident memory and open file descriptors from /proc; at the end it prints the series and the growth.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from edge_daemon.devbroker import LocalBroker  # noqa: E402


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=20)
    ap.add_argument("--interval", type=float, default=30)
    ap.add_argument("--config", default=str(ROOT / "config.yaml"))
    ap.add_argument("--video", default=str(ROOT / "tests" / "fixtures" / "av" / "clip.mp4"))
    args = ap.parse_args()

    with LocalBroker() as broker, tempfile.TemporaryDirectory() as tmp:
        cfg = yaml.safe_load(Path(args.config).read_text()) or {}
        cfg.setdefault("models", {})["dir"] = str(
            (Path(args.config).parent / cfg.get("models", {}).get("dir", "models_tflite")).resolve()
        )
        cfg["state_dir"] = tmp
        cfg["camera"] = {**cfg.get("camera", {}), "source": args.video}
        cfg["microphone"] = {**cfg.get("microphone", {}), "enabled": False}
        cfg["mqtt"] = {**cfg.get("mqtt", {}), "host": "127.0.0.1", "port": broker.port, "stats_interval_s": 10}
        (Path(tmp) / "soak.yaml").write_text(yaml.safe_dump(cfg))
        cmd = [
            sys.executable,
            "-m",
            "edge_daemon",
            "--config",
            str(Path(tmp) / "soak.yaml"),
            "--log-level",
            "warning",
            "run",
        ]
        proc = subprocess.Popen(cmd, cwd=ROOT)
        start = time.monotonic()
        rows = []
        try:
            while time.monotonic() - start < args.minutes * 60:
                time.sleep(min(args.interval, max(0.0, args.minutes * 60 - (time.monotonic() - start))))
                if proc.poll() is not None:
                    print(f"daemon exited early with {proc.returncode}", file=sys.stderr)
                    return 1
                rows.append((time.monotonic() - start, rss_mb(proc.pid), open_fds(proc.pid)))
                print(f"{rows[-1][0] / 60:6.1f} min  rss {rows[-1][1]:7.1f} MB  fds {rows[-1][2]:4d}", flush=True)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=15)
    if len(rows) < 3:
        return 1
    # Growth: the last third against the first third after warm-up (the first sample), to see through noise.
    third = max(1, (len(rows) - 1) // 3)
    early = [r[1] for r in rows[1 : 1 + third]]
    late = [r[1] for r in rows[-third:]]
    print(
        f"summary: {args.minutes:g} min, rss first {rows[0][1]:.1f} MB, max {max(r[1] for r in rows):.1f} MB, "
        f"early mean {sum(early) / len(early):.1f} MB, late mean {sum(late) / len(late):.1f} MB; "
        f"fds first {rows[0][2]}, last {rows[-1][2]}; daemon exit code {proc.returncode}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
