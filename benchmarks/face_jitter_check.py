"""Face models side by side on every FER2013 `val` face, as the daemon serves them, still and as a camera films them.

    git show <commit>:models_tflite/face_emotion.tflite > old/face_emotion.tflite   # and the .json beside it
    .venv/bin/python benchmarks/face_jitter_check.py --val ../shared/data/fer2013/val \
        --model old/face_emotion.json --model models_tflite/face_emotion.json

"Filmed" is `training.fusion_eval`'s frame of a still face (moved by up to 2 px, turned by up to 3 degrees, scaled by
up to 5 %, light changed by up to 8 %), drawn --repeats times with fixed seeds, the same draws for every model. Each
model runs through `FaceEmotionModel` with its own metadata (mirror averaging and all), so the figure for the
shipped model is what the daemon does. Val chose each model's checkpoint: this compares models, it is no test.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from edge_daemon.vision.emotion import FaceEmotionModel  # noqa: E402
from training.face_data import load_many  # noqa: E402
from training.fusion_eval import jitter  # noqa: E402


def accuracy(model: FaceEmotionModel, images: list[np.ndarray], truth: np.ndarray) -> float:
    return float(np.mean([model.classify(f).argmax() == t for f, t in zip(images, truth, strict=True)]))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--val", type=Path, required=True, help="FER2013 val tree (or CSV)")
    ap.add_argument("--model", type=Path, action="append", required=True, help="a face model's .json (repeatable)")
    ap.add_argument("--repeats", type=int, default=3, help="filmed draws of every face")
    args = ap.parse_args(argv)
    faces = load_many([args.val], ())
    truth = np.asarray(faces.labels)
    print(f"{len(truth)} faces from {args.val}")
    for meta in args.model:
        model = FaceEmotionModel(meta)
        still = accuracy(model, faces.images, truth)
        filmed = []
        for r in range(args.repeats):
            rng = np.random.default_rng(100 + r)
            filmed.append(accuracy(model, [jitter(f, rng) for f in faces.images], truth))
        draws = ", ".join(f"{100 * a:.1f}" for a in filmed)
        print(
            f"{meta} ({model.meta.version}): still {100 * still:.1f} %, filmed {100 * np.mean(filmed):.1f} % ({draws})"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
