#!/usr/bin/env bash
# Our face path against the `fer` package's on the same frames, in one run on this machine, with its CPU named:
# CPUs differ between machines (int8 dot-product instructions, AVX-512), so only a ratio from one run means much.
# Both time the same frames: the clip sampled at the config's face.rate_hz, as the daemon's face stage samples it
# (edge_daemon/capture/sampling.py).
# Usage: benchmarks/face_path_ratio.sh [VIDEO] [FRAMES]   (defaults: the bundled clip, 200 frames)
set -euo pipefail
cd "$(dirname "$0")/.."
video="${1:-tests/fixtures/av/clip.mp4}"
frames="${2:-200}"
ours=$(.venv/bin/emotion-edge bench --video "$video" --frames "$frames")
rate=$(OURS="$ours" .venv/bin/python -c 'import json, os; print(json.loads(os.environ["OURS"])["face_rate_hz"])')
peer=$(benchmarks/fer_peer.sh "$video" "$frames" "$rate" 2>/dev/null | sed -n '/^{/,/^}/p')
OURS="$ours" PEER="$peer" .venv/bin/python - <<'PY'
import json, os
flags = next((l.split(":", 1)[1].split() for l in open("/proc/cpuinfo") if l.startswith("flags")), [])
isa = ", ".join(f for f in ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "asimddp") if f in flags) or "none listed"
ours, peer = json.loads(os.environ["OURS"]), json.loads(os.environ["PEER"])
print(f"CPU: {ours['cpu']} ({os.cpu_count()} cores; {isa})")
print(f"emotion-edge face path (detect + classify one face), median: {ours['face_path_ms']:.2f} ms "
      f"(detect {ours['face_detect_ms']:.2f} + classify {ours['face_classify_ms']:.2f}), {ours['frames']} frames")
print(f"fer (Haar + mini-Xception), median:                       {peer['face_path_ms']:.2f} ms, {peer['frames']} frames")
print(f"ratio, detector on every frame (medians): ours is {peer['face_path_ms'] / ours['face_path_ms']:.1f}x faster")
print(f"as the daemon runs (face.detect_every {ours['face_detect_every']}, means): ours {ours['face_path_tracked_ms']:.2f} ms "
      f"vs fer {peer['face_path_mean_ms']:.2f} ms, {peer['face_path_mean_ms'] / ours['face_path_tracked_ms']:.1f}x faster")
print(f"peak RSS: ours {ours['peak_rss_mb']} MB, fer {peer['peak_rss_mb']} MB")
PY
