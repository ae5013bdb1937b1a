"""What following faces between detections (`face.detect_every`) changes: labels, boxes and time, on clips.

    .venv/bin/python benchmarks/tracking_check.py --every 5 --fer-val ../shared/data/fer2013/val --clips 300

Each clip is analysed twice by the daemon's own face path (`FaceTracker` around the configured detector, the
shipped face model, `face.rate_hz` frames a second): once with the detector on every frame, once with it on every
`--every`-th. Two kinds of clip:

- videos (default: the bundled `tests/fixtures/av/clip.mp4`, a moving face with two cuts to other people): how
  often the two runs give the same label and how far their boxes differ;
- moving FER2013 `val` faces (`--fer-val`): each face, 160-220 px (then growing or shrinking a little, 147-227 px),
  glides across a shaded 640x480 wall at up to 3/8 of its width per analysed frame, for `--frames` frames; then the
  clip cuts to the next face. Those faces are labelled, so both runs are also scored against the truth (a frame
  with no face found counts as wrong).

Prints the CPU, per-frame accuracy/agreement and the mean face-finding time per frame of each run.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from edge_daemon.bench import cpu_model  # noqa: E402
from edge_daemon.capture.sampling import sampled_frames  # noqa: E402
from edge_daemon.config import load_config  # noqa: E402
from edge_daemon.labels import CANONICAL  # noqa: E402
from edge_daemon.models import load_detector, load_face_model  # noqa: E402
from edge_daemon.vision.detector import box_iou  # noqa: E402
from edge_daemon.vision.tracking import FaceTracker  # noqa: E402
from training.face_data import load_many  # noqa: E402

W, H = 640, 480


def moving_faces(faces: list[np.ndarray], frames: int, seed: int) -> Iterator[np.ndarray]:
    """`frames` frames per face, each face gliding over one textured background; a cut between faces."""
    rng = np.random.default_rng(seed)
    # A wall with soft shading: high-contrast blobs make BlazeFace see 500-px "faces", which is not what this measures.
    noise = cv2.resize(rng.uniform(95, 125, (12, 16)).astype(np.uint8), (W, H), interpolation=cv2.INTER_CUBIC)
    background = cv2.cvtColor(noise, cv2.COLOR_GRAY2BGR)
    for face in faces:
        # FER2013 crops are tight: a quarter of the face mirrored around it gives the detector's box (grown by the
        # face model's crop margin) face-like surroundings instead of the background; 160-220 px faces are ones
        # BlazeFace short-range finds in a 640x480 frame (below ~110 px it misses most FER faces, tracked or not).
        face = cv2.copyMakeBorder(face, *[face.shape[0] // 4] * 4, cv2.BORDER_REFLECT)
        size = rng.uniform(160, 220) * 1.5
        x, y = rng.uniform(0, W - size * 1.2), rng.uniform(0, H - size * 1.2)
        speed = rng.uniform(0, 0.25) * size
        angle = rng.uniform(0, 2 * np.pi)
        grow = rng.uniform(-0.02, 0.02)
        for _ in range(frames):
            s = int(round(size))
            canvas = background.copy()
            img = cv2.resize(face, (s, s), interpolation=cv2.INTER_CUBIC)
            img = cv2.cvtColor(img, cv2.COLOR_GRAY2BGR) if img.ndim == 2 else img
            xi, yi = int(x), int(y)
            canvas[yi : yi + s, xi : xi + s] = img
            yield canvas
            x, y = x + speed * np.cos(angle), y + speed * np.sin(angle)
            if not 0 <= x <= W - s * 1.1:  # bounce off the frame's edges
                angle = np.pi - angle
                x = float(np.clip(x, 0, W - s * 1.1))
            if not 0 <= y <= H - s * 1.1:
                angle = -angle
                y = float(np.clip(y, 0, H - s * 1.1))
            size = float(np.clip(size * (1 + grow), 220, 340))


def analyse(frames: Iterator[np.ndarray], tracker: FaceTracker, model) -> tuple[list, float, int]:
    """Per frame: (label index or None, box or None); the mean ms per frame spent finding faces; detector runs."""
    out, spent, runs = [], 0.0, 0
    for img in frames:
        t0 = time.perf_counter()
        found = tracker.detect(img)
        spent += time.perf_counter() - t0
        runs += tracker.detected
        if not found:
            out.append((None, None))
            continue
        probs = model.classify(model.pre.crop(img, found[0].box)) @ model.to_canonical
        out.append((int(np.argmax(probs)), found[0].box))
    return out, 1000 * spent / max(1, len(out)), runs


def compare(name: str, frames: Callable[[], Iterator], every: int, detector, model, truth: list[int] | None) -> None:
    """`frames()` yields the clip afresh for each run (a 3,000-frame clip would not fit in memory twice)."""
    full, ms_full, _ = analyse(frames(), FaceTracker(detector, 1), model)
    tracked, ms_tracked, runs = analyse(frames(), FaceTracker(detector, every), model)
    n = len(full)
    same = sum(a[0] == b[0] for a, b in zip(full, tracked, strict=True))
    ious = [box_iou(a[1], b[1]) for a, b in zip(full, tracked, strict=True) if a[1] and b[1]]
    print(f"\n{name}: {n} analysed frames")
    print(f"  detector runs: {n} every frame, {runs} with detect_every {every}")
    print(f"  face finding, mean per frame: {ms_full:.2f} ms every frame, {ms_tracked:.2f} ms tracked")
    print(f"  same label in both runs: {same}/{n} ({100 * same / n:.1f} %)")
    missed = [sum(r[0] is None for r in run) for run in (full, tracked)]
    print(f"  frames with no face found: {missed[0]} every frame, {missed[1]} tracked")
    if ious:
        print(f"  box IoU tracked vs detected: mean {np.mean(ious):.3f}, 5th percentile {np.percentile(ious, 5):.3f}")
    if truth is not None:
        for label, run in (("every frame", full), (f"detect_every {every}", tracked)):
            right = sum(r[0] == t for r, t in zip(run, truth, strict=True))
            print(f"  accuracy vs truth, {label}: {right}/{len(truth)} ({100 * right / len(truth):.2f} %)")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", type=Path, default=Path("config.yaml"))
    ap.add_argument("--every", type=int, default=5, help="detect_every to compare with detecting every frame")
    ap.add_argument("--video", type=Path, action="append", help="video clips (default: the bundled fixture)")
    ap.add_argument("--fer-val", type=Path, help="FER2013 val folder: labelled moving-face clips")
    ap.add_argument("--clips", type=int, default=300, help="FER val faces to film (a random draw, --seed)")
    ap.add_argument("--frames", type=int, default=10, help="analysed frames per FER face")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    config = load_config(args.config)
    detector, model = load_detector(config), load_face_model(config)
    print(f"CPU: {cpu_model()}; face.rate_hz {config.face.rate_hz}; detector {config.face.detector}")
    for video in args.video or [Path("tests/fixtures/av/clip.mp4")]:
        compare(
            str(video),
            lambda v=video: sampled_frames(v, config.face.rate_hz, size=(W, H)),
            args.every,
            detector,
            model,
            None,
        )
    if args.fer_val:
        fs = load_many([args.fer_val], ())
        rng = np.random.default_rng(args.seed)
        pick = rng.permutation(len(fs.labels))[: args.clips]
        faces = [fs.images[i] for i in pick]
        truth = [fs.labels[i] for i in pick for _ in range(args.frames)]
        print(f"(FER val labels are indices into {list(CANONICAL)})")
        compare(
            f"{args.fer_val}: {len(faces)} moving faces",
            lambda: moving_faces(faces, args.frames, args.seed),
            args.every,
            detector,
            model,
            truth,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
