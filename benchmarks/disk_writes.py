"""Bytes the daemon's storage writes to state_dir per day, with the history on and off, broker up.

    .venv/bin/python benchmarks/disk_writes.py [--hours 3] [--window 2] [--state-dir DIR]

Drives the real Outbox and History with synthetic events of the real size, at the default cadence compressed in
time: each event goes to the outbox held (the broker is up, it acknowledges it at once, as MQTT does within
milliseconds) and to the history; the history commits once per `history.FLUSH_EVERY_S` of simulated time, as its
writer thread does. After each simulated minute everything is synced to the disk (os.sync), so that a page written
in one minute and again in the next counts twice, as it does at real speed where the kernel writes dirty pages back
within 30 s. It reads this process's `write_bytes` from /proc/self/io (bytes sent to the block device) and prints
bytes per event and MB per day. The state_dir must be on a real block-device file system (not tmpfs) for
write_bytes to count: the default is a folder under this checkout.

Against an older checkout whose History has no `flush()`, each event is committed alone (what the writer did with
one event every 2 s), so the same command measures before and after: PYTHONPATH=OLD_CHECKOUT python ...
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path and "PYTHONPATH" not in os.environ:
    sys.path.insert(0, str(ROOT))

from edge_daemon import history as history_mod  # noqa: E402
from edge_daemon.history import History  # noqa: E402
from edge_daemon.outbox import Outbox  # noqa: E402

PROBS = {k: 0.1234 for k in ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")}


def event(i: int, start: datetime, window_s: float) -> dict[str, Any]:
    """An event of the size the daemon publishes (both modalities, their votes and probabilities)."""
    t0 = start + timedelta(seconds=i * window_s)
    iso = t0.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    end = (t0 + timedelta(seconds=window_s)).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    mod = {"label": "happy", "confidence": 0.87, "count": 10, "votes": {"happy": 9, "neutral": 1}, "probs": PROBS}
    return {
        "schema": 1, "device_id": "bench", "event_id": f"{i:08d}-6f1c-4c1e-9a59-3b2f1d0e4a7c", "emotion": "happy",
        "emoji": "😀", "confidence": 0.6812, "method": "vote", "window_start": iso, "window_end": end,
        "used": ["face", "speech"], "models": {"face_detector": "0.10.14", "face_emotion": "1.0.0"},
        "modalities": {"face": dict(mod), "speech": dict(mod)},
    }  # fmt: skip


def write_bytes() -> int:
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("write_bytes:"):
            return int(line.split()[1])
    raise RuntimeError("no write_bytes in /proc/self/io")


def run(state: Path, n: int, window_s: float, history_on: bool) -> tuple[int, dict[str, int]]:
    """Bytes written for `n` events; the history's stats."""
    box = Outbox(state)
    h = History(state) if history_on else None
    if h is not None:
        if hasattr(h, "give_way"):
            box.make_room = h.give_way
        h.start()
    batching = h is not None and hasattr(h, "flush")
    per_flush = max(1, round(getattr(history_mod, "FLUSH_EVERY_S", window_s) / window_s))
    per_minute = max(1, round(60 / window_s))
    start = datetime.now(timezone.utc) - timedelta(seconds=n * window_s)
    os.sync()
    before = write_bytes()
    for i in range(n):
        e = event(i, start, window_s)
        seq = box.append(e, hold=True)
        box.ack_many([seq])  # the broker's acknowledgement
        if h is not None:
            h.record(e)
            if batching and (i + 1) % per_flush == 0:
                h.flush()
            elif not batching:  # the earlier writer: one commit per event at this cadence
                while h.stats()["queued"]:
                    time.sleep(0.001)
        if (i + 1) % per_minute == 0:
            os.sync()
    stats: dict[str, int] = {}
    if h is not None:
        h.close()
        stats = h.stats()
    box.close()
    os.sync()
    return write_bytes() - before, stats


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hours", type=float, default=3.0, help="simulated hours of events (default 3)")
    ap.add_argument("--window", type=float, default=2.0, help="fusion.window_s (default 2, the default)")
    ap.add_argument("--state-dir", default=None, help="where the files go (default: a folder in this checkout)")
    args = ap.parse_args()
    n = int(args.hours * 3600 / args.window)
    base = Path(args.state_dir) if args.state_dir else Path(tempfile.mkdtemp(prefix=".disk-writes-", dir=ROOT))
    per_day = 86400 / args.window
    try:
        for on in (False, True):
            state = base / ("history-on" if on else "history-off")
            t0 = time.monotonic()
            written, stats = run(state, n, args.window, on)
            files = {p.name: p.stat().st_size for p in sorted(state.iterdir()) if p.is_file()}
            print(
                f"history {'on ' if on else 'off'}: {n} events ({args.hours:g} h at {args.window:g} s windows) in "
                f"{time.monotonic() - t0:.0f} s: {written} bytes, {written / n:.0f} bytes/event -> "
                f"{written / n * per_day / 1e6:.1f} MB/day"
            )
            print(f"  files: {files}")
            if stats:
                print(f"  history: {stats}")
    finally:
        if not args.state_dir:
            shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
