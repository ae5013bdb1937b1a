"""How many clips of a speech corpus the daemon's voice gate hears: each clip is gated exactly as
`emotion-edge classify speech` gates it (the config's `speech.*` settings, 2 s windows at the configured hop).

    .venv/bin/python benchmarks/voice_gate_coverage.py ../shared/data/ravdess ../shared/data/urdu ../shared/data/ased

Prints the clips with no voiced window and the count per folder. Reads wav and flac (ASED). What each gate setting
hears and costs, side by side: benchmarks/voice_gate_cost.py.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from voice_gate_cost import read_clip  # noqa: E402 (beside this script)

from edge_daemon.audio.emotion import gated_windows  # noqa: E402
from edge_daemon.audio.features import SpeechFeatures  # noqa: E402
from edge_daemon.audio.vad import Gate  # noqa: E402
from edge_daemon.config import load_config  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("folders", nargs="+", type=Path)
    ap.add_argument("--config", type=Path, default=None)
    args = ap.parse_args()
    config = load_config(args.config)
    feats = SpeechFeatures()
    t0 = time.time()
    for folder in args.folders:
        clips = sorted(p for p in folder.rglob("*") if p.suffix.lower() in (".wav", ".flac"))
        missed = []
        for clip in clips:
            audio = read_clip(clip)
            if not any(
                g.voiced for g in gated_windows(audio, feats, Gate.from_config(config.speech), config.speech.hop_s)
            ):
                missed.append(clip)
        for clip in missed:
            print(f"  no voiced window: {clip}")
        print(f"{folder}: {len(clips) - len(missed)} of {len(clips)} clips heard ({time.time() - t0:.0f} s so far)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
