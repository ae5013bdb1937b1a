"""The whole daemon's peak memory and CPU share, from outside, as a user would see them.

    .venv/bin/python benchmarks/daemon_cost.py                 # fast replay: peak RSS (5 runs)
    .venv/bin/python benchmarks/daemon_cost.py --realtime      # real-time replay: CPU share in the steady state
    .venv/bin/python benchmarks/daemon_cost.py --runs 3 -- --config my.yaml   # extra arguments go to `replay`

Runs `emotion-edge replay` of the bundled clip (tests/fixtures/av) with no broker, as a child process, and reads
/proc/PID/stat and /proc/PID/status every 20 ms: peak RSS is the kernel's high-water mark of the child (ru_maxrss,
what `/usr/bin/time -v` prints), split into anonymous memory and mapped files at the sample where RSS peaked; the
steady-state CPU share is the child's user+system time between `--from` and `--to` seconds after it started,
over that span (start-up, model loading and the end of the clip excluded). With `--runs N` it prints each run and
the median. The CPU model is printed beside the figures: they only compare within one machine.

Before each run the shared libraries of the Python environment are dropped from the page cache (posix_fadvise
DONTNEED on each `.so`: no root needed, nothing else is touched), unless `--warm`. RSS counts the library pages a
process maps, and a recent kernel maps a whole large folio of a cached file at once: libraries that pip had just
written (cached in large folios) made the same replay measure 174 MB instead of 129 MB on kernel 6.18, and an
"upgraded" venv measure more than a fresh one. Read back from disk, they measure what a booted device measures.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CLIP = ROOT / "tests" / "fixtures" / "av"
TICK = os.sysconf("SC_CLK_TCK")


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


def _cpu_s(pid: int) -> float | None:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / TICK  # utime, stime (fields 14 and 15 of stat)


def _rss_kb(pid: int) -> dict[str, int]:
    out = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, val = line.partition(":")
            if key in ("VmRSS", "RssAnon", "RssFile", "RssShmem"):
                out[key] = int(val.split()[0])
    except OSError:
        pass
    return out


def drop_cached_libraries(prefix: Path) -> int:
    """Drop every shared library under `prefix` (the venv) from the page cache; returns how many."""
    n = 0
    for path in prefix.rglob("*.so*"):
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            continue
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            n += 1
        finally:
            os.close(fd)
    return n


def run_once(exe: str, realtime: bool, t_from: float, t_to: float, extra: list[str]) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as state:
        cmd = [exe, "replay", "--video", str(CLIP / "clip.mp4"), "--audio", str(CLIP / "clip.wav"), "--no-mqtt",
               "--state-dir", state, *(["--realtime"] if realtime else []), *extra]  # fmt: skip
        start = time.monotonic()
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        peak: dict[str, int] = {}
        cpu_from = cpu_to = None
        usage = None
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                proc.returncode = os.waitstatus_to_exitcode(status)
                break
            now = time.monotonic() - start
            rss = _rss_kb(proc.pid)
            if rss.get("VmRSS", 0) > peak.get("VmRSS", 0):
                peak = rss
            if cpu_from is None and now >= t_from:
                cpu_from = (now, _cpu_s(proc.pid))
            if cpu_to is None and now >= t_to:
                cpu_to = (now, _cpu_s(proc.pid))
            time.sleep(0.02)
        err = proc.stderr.read() if proc.stderr else ""
        wall = time.monotonic() - start
    if proc.returncode not in (0, None):
        sys.exit(f"replay failed ({proc.returncode}):\n{err[-2000:]}")
    result = {"wall_s": wall, "rss_peak_sampled_mb": peak.get("VmRSS", 0) / 1024,
              "anon_mb": peak.get("RssAnon", 0) / 1024, "file_mb": peak.get("RssFile", 0) / 1024}  # fmt: skip
    if usage is not None:
        result["maxrss_mb"] = usage.ru_maxrss / 1024
    if realtime and cpu_from and cpu_to and cpu_from[1] is not None and cpu_to[1] is not None:
        result["steady_cpu_s"] = cpu_to[1] - cpu_from[1]
        result["steady_wall_s"] = cpu_to[0] - cpu_from[0]
        result["steady_pct"] = 100 * result["steady_cpu_s"] / result["steady_wall_s"]
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--exe", default=str(Path(sys.executable).parent / "emotion-edge"))
    ap.add_argument("--realtime", action="store_true")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--from", dest="t_from", type=float, default=5.0, help="steady state starts (s after start)")
    ap.add_argument("--to", dest="t_to", type=float, default=17.0, help="steady state ends (s after start)")
    ap.add_argument("--warm", action="store_true", help="leave the libraries in the page cache as they are")
    ap.add_argument("extra", nargs="*", help="more arguments for `emotion-edge replay` (after --)")
    args = ap.parse_args()
    print(f"CPU: {cpu_model()}, {os.cpu_count()} cores; {'real-time' if args.realtime else 'fast'} replay; {args.exe}")
    rows = []
    for i in range(args.runs):
        if not args.warm:
            drop_cached_libraries(Path(sys.prefix))
        r = run_once(args.exe, args.realtime, args.t_from, args.t_to, args.extra)
        rows.append(r)
        print(f"run {i + 1}: " + ", ".join(f"{k} {v:.2f}" for k, v in r.items()), flush=True)
    keys = rows[0].keys()
    print("median: " + ", ".join(f"{k} {statistics.median(r[k] for r in rows):.2f}" for k in keys))


if __name__ == "__main__":
    main()
