"""Face emotion accuracy by face width: the face model alone, as served, on FER2013 faces made small.

    python benchmarks/face_size_accuracy.py --fer-val ../shared/data/fer2013/val \
        --model models_tflite/face_emotion.json --model runs/face-small/export/face_emotion.json

Each val face (every `--every`-th file of each class, sorted by name) is rendered at each width as a far face reaches
a webcam (area-averaged down to `width` pixels), then given to the model exactly as the daemon gives it a crop of
that size: `FaceEmotionModel.classify` (its `FacePreprocess.prepare` enlarges it to the model's input, mirror
averaging and calibration as the metadata says). Width 48 is the face as stored. Several `--model`s are run on the
same faces in one run, so their figures compare. FER2013 val is where face checkpoints are chosen: these are
development figures, not test results.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from edge_daemon.labels import CANONICAL, normalise  # noqa: E402
from edge_daemon.vision.emotion import FaceEmotionModel  # noqa: E402

WIDTHS = (16, 24, 32, 40, 48, 64)


def load_faces(root: Path, every: int) -> tuple[list[np.ndarray], list[str]]:
    faces, labels = [], []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        label = normalise(folder.name)
        if label not in CANONICAL:
            raise SystemExit(f"error: {folder}: not one of the classes {', '.join(CANONICAL)}")
        for f in sorted(folder.iterdir())[::every]:
            img = cv2.imread(str(f), cv2.IMREAD_GRAYSCALE)
            if img is None:
                raise SystemExit(f"error: {f}: not an image")
            faces.append(img)
            labels.append(label)
    return faces, labels


def render(face: np.ndarray, width: int) -> np.ndarray:
    return face if width == face.shape[1] else cv2.resize(face, (width, width), interpolation=cv2.INTER_AREA)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--fer-val", type=Path, required=True, help="FER2013 val tree, e.g. ../shared/data/fer2013/val")
    ap.add_argument("--model", type=Path, action="append", required=True, help="a face model's .json (repeatable)")
    ap.add_argument("--every", type=int, default=3, help="every n-th face of each class (default 3: a third)")
    ap.add_argument("--widths", type=int, nargs="+", default=list(WIDTHS))
    args = ap.parse_args()
    if not args.fer_val.is_dir():
        print(f"error: --fer-val {args.fer_val}: not a folder (FER2013 val, e.g. ../shared/data/fer2013/val)")
        return 2
    for m in args.model:
        if not m.is_file():
            print(f"error: --model {m}: no such file (a face model's .json, e.g. models_tflite/face_emotion.json)")
            return 2
    faces, labels = load_faces(args.fer_val, args.every)
    truth = np.array([CANONICAL.index(x) for x in labels])
    print(f"{len(faces)} FER2013 val faces (1 in {args.every} of each class); accuracy by face width (px):")
    print(f"{'model':44}" + "".join(f"{w:>8}" for w in args.widths))
    for m in args.model:
        model = FaceEmotionModel(m, 1, "neutral")
        t0, row = time.perf_counter(), []
        for w in args.widths:
            pred = np.array([int(np.argmax(model.classify(render(f, w)) @ model.to_canonical)) for f in faces])
            row.append(float(np.mean(pred == truth)))
        name = f"{m} ({model.meta.version})"
        print(f"{name[-44:]:44}" + "".join(f"{a:8.3f}" for a in row) + f"   ({time.perf_counter() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
