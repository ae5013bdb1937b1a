"""Face emotion accuracy by face width: the face model alone, as served, on FER2013 faces made small.

    python benchmarks/face_size_accuracy.py --fer-val ../shared/data/fer2013/val \
        --model models_tflite/face_emotion.json --model runs/face-small/export/face_emotion.json [--render other]

Each val face (every `--every`-th file of each class, sorted by name; all of them by default) is rendered at each
width as a far face reaches the model, then given to it exactly as the daemon gives it a crop of that size:
`FaceEmotionModel.classify` (its `FacePreprocess.prepare` enlarges it to the model's input; mirror averaging and
calibration as the metadata says). Width 48 is the face as stored. Renderings:

- `area` (default): area-averaged down to the width, what `training.face --small-faces` trains on (without its
  blur, noise and JPEG), so a model trained with it sees its own training transform here;
- `other`: bicubic down to the width, then JPEG at quality 25 (below `--small-faces`' 40-90): a rendering no
  training here uses, to check that a difference is not just that.

Several `--model`s run on the same faces in one run; each model after the first gets a 95 % paired bootstrap interval
for its difference from the first, per width. FER2013 val is where face checkpoints are chosen: these are
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

from edge_daemon.errors import UserError  # noqa: E402
from edge_daemon.vision.emotion import FaceEmotionModel  # noqa: E402
from training.face_data import load_folder_tree  # noqa: E402

WIDTHS = (16, 24, 32, 40, 48)
BOOTSTRAP = 2000


def load_faces(root: Path, every: int) -> tuple[list[np.ndarray], np.ndarray]:
    """Every `every`-th face of each class, in the tree's sorted order (training's own reader of the tree)."""
    tree = load_folder_tree(root)
    if tree.rejected:
        where, why = tree.rejected[0]
        raise UserError(f"{where}: {why} ({len(tree.rejected)} file(s) not read; a FER2013 val tree?)")
    labels = np.asarray(tree.labels)
    keep = np.sort(np.concatenate([np.flatnonzero(labels == k)[::every] for k in np.unique(labels)]))
    return [tree.images[i] for i in keep], labels[keep]


def render(face: np.ndarray, width: int, how: str) -> np.ndarray:
    if width == face.shape[1]:
        return face
    if how == "area":
        return cv2.resize(face, (width, width), interpolation=cv2.INTER_AREA)
    small = cv2.resize(face, (width, width), interpolation=cv2.INTER_CUBIC)
    ok, jpeg = cv2.imencode(".jpg", small, [cv2.IMWRITE_JPEG_QUALITY, 25])
    return cv2.imdecode(jpeg, cv2.IMREAD_GRAYSCALE)


def paired_interval(a: np.ndarray, b: np.ndarray, rng: np.random.Generator) -> tuple[float, float]:
    """95 % bootstrap interval of mean(b) - mean(a) over the same faces (each a 0/1 correctness)."""
    d = b.astype(float) - a.astype(float)
    idx = rng.integers(0, len(d), size=(BOOTSTRAP, len(d)))
    means = d[idx].mean(axis=1)
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--fer-val", type=Path, required=True, help="FER2013 val tree, e.g. ../shared/data/fer2013/val")
    ap.add_argument("--model", type=Path, action="append", required=True, help="a face model's .json (repeatable)")
    ap.add_argument("--every", type=int, default=1, help="every n-th face of each class (default 1: all)")
    ap.add_argument("--widths", type=int, nargs="+", default=list(WIDTHS), help="face widths in pixels, 4-48")
    ap.add_argument("--render", choices=("area", "other"), default="area", help="how a face is made small (above)")
    args = ap.parse_args()
    if args.every < 1 or not all(4 <= w <= 48 for w in args.widths):
        print("error: --every must be at least 1 and each of --widths 4 to 48 (pixels)", file=sys.stderr)
        return 2
    if not args.fer_val.is_dir():
        print(f"error: --fer-val {args.fer_val}: not a folder (FER2013 val, e.g. ../shared/data/fer2013/val)",
              file=sys.stderr)  # fmt: skip
        return 2
    try:
        models = [FaceEmotionModel(m, 1, "neutral") for m in args.model]
        faces, truth = load_faces(args.fer_val, args.every)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"{len(faces)} FER2013 val faces (1 in {args.every} of each class), rendering '{args.render}'; "
          "accuracy by face width (px):")  # fmt: skip
    print(f"{'model':44}" + "".join(f"{w:>8}" for w in args.widths))
    right: list[list[np.ndarray]] = []
    for path, model in zip(args.model, models, strict=True):
        t0, row = time.perf_counter(), []
        for w in args.widths:
            probs = [model.classify(render(f, w, args.render)) @ model.to_canonical for f in faces]
            row.append(np.argmax(np.stack(probs), axis=1) == truth)
        right.append(row)
        name = f"{path} ({model.meta.version})"
        print(f"{name[-44:]:44}" + "".join(f"{r.mean():8.3f}" for r in row) + f"   ({time.perf_counter() - t0:.0f} s)")
    rng = np.random.default_rng(0)
    for row in right[1:]:
        cells = [paired_interval(a, b, rng) for a, b in zip(right[0], row, strict=True)]
        print(f"{'  minus the first, 95 % interval':44}" + "".join(f"{lo:+.3f}..{hi:+.3f} " for lo, hi in cells))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
