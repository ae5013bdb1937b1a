"""How far the face path sees: share of faces found and emotion accuracy per face width, and false faces on frames
with no face, for our detectors beside the `fer` package's Haar path, on the same frames, in one run.

    .venv/bin/python benchmarks/face_distance.py --fer-val ../shared/data/fer2013/val [--peer] [--out runs/dist.json]

Frames are 640x480 (or --size), built here from data we have, never from a test set:
- `photo`: the astronaut portrait that ships with scikit-image (public domain, NASA), a face with its hair, neck and
  shoulders, scaled so that the face is W px wide, mirrored, dimmed or made grey at random, at a random place on a
  face-free background. Label: happy. One person, many placements: it measures reach, not accuracy.
- `fer2013`: FER2013 PublicTest faces (`val`, the split model checkpoints are chosen on, so accuracy here is not a test
  figure), 30 per class, 48x48 grey crops scaled to W px and pasted. FER2013's crops are tight (no hair or chin
  outline), which BlazeFace, trained on whole heads, finds far less often than faces with their context.
- `pair`: two astronaut faces side by side, W px each: found when both are.
- face-free: crops of scikit-image's other photographs (a cat, coffee, a rocket, bricks, grass, gravel, coins, text,
  the Hubble deep field, ...), noise (a screen showing snow), stripes and checkerboards.

A face is found when a detected box's centre lies inside the true face square and its width is within 0.5-2x. The
whole-pipeline accuracy counts a missed face as wrong (as a person in the room would see it); the row "emotion model
given the true box" is the face model alone on the same scaled faces, what a perfect detector would leave it. With --peer the same
frames go through `fer`'s FER(mtcnn=False).detect_emotions in .venv-fer (benchmarks/fer_peer.sh builds it).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
WIDTHS = (24, 32, 40, 48, 64, 96, 160)
# The astronaut's head and shoulders (x0, y0, x1, y1 of the 512x512 photo), and the face in that crop (x, y, width: short-
# range BlazeFace's box on the photo, 176, 81, 95): a crop, so that two people side by side do not paste over each other.
ASTRONAUT_CROP = (116, 11, 331, 300)
ASTRONAUT_FACE = (60, 70, 95)
FREE_IMAGES = (
    "chelsea", "coffee", "rocket", "brick", "grass", "gravel", "coins", "text", "page", "hubble_deep_field",
    "horse", "moon", "clock", "immunohistochemistry", "retina", "logo", "colorwheel", "motorcycle",
)  # fmt: skip
TRUE_BOX = "emotion model given the true box"
CLASSES = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")


# ---- frames (numpy and OpenCV only: the peer's environment rebuilds the same frames from the same plan) -------------


def build_frame(item: dict, size: tuple[int, int], cache: dict) -> np.ndarray:
    """One frame of the plan: a background with zero, one or two faces pasted in."""

    def img(path: str, flags: int = cv2.IMREAD_COLOR) -> np.ndarray:
        if (path, flags) not in cache:
            cache[(path, flags)] = cv2.imread(path, flags)
        return cache[(path, flags)]

    w, h = size
    bg = img(item["bg"])
    rng = np.random.default_rng(item["seed"])
    kind = item["kind"]
    if kind == "noise":
        frame = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        return cv2.GaussianBlur(frame, (0, 0), float(rng.uniform(0.3, 2.0)))
    if kind == "pattern":
        period = int(rng.integers(6, 60))
        yy, xx = np.mgrid[0:h, 0:w]
        grid = ((xx // period + (yy // period) * int(rng.integers(0, 2))) % 2) * 255
        return cv2.cvtColor(grid.astype(np.uint8), cv2.COLOR_GRAY2BGR)
    # a random crop of the background, scaled to the frame
    scale = float(rng.uniform(1.0, 2.0))
    big = cv2.resize(bg, (int(w * scale), int(h * scale)), interpolation=cv2.INTER_LINEAR)
    x0, y0 = int(rng.integers(0, big.shape[1] - w + 1)), int(rng.integers(0, big.shape[0] - h + 1))
    frame = np.ascontiguousarray(big[y0 : y0 + h, x0 : x0 + w])
    for face in item.get("faces", []):
        _paste(frame, face, img)
    return frame


def _paste(frame: np.ndarray, face: dict, img) -> None:
    src = img(face["src"], cv2.IMREAD_GRAYSCALE if face["grey"] else cv2.IMREAD_COLOR)
    if src.ndim == 2:
        src = cv2.cvtColor(src, cv2.COLOR_GRAY2BGR)
    k = face["k"]  # source pixels -> frame pixels
    interp = cv2.INTER_AREA if k < 1 else cv2.INTER_LINEAR
    patch = cv2.resize(src, (max(1, round(src.shape[1] * k)), max(1, round(src.shape[0] * k))), interpolation=interp)
    if face["flip"]:
        patch = cv2.flip(patch, 1)
    patch = np.clip(patch.astype(np.float32) * face["gain"], 0, 255).astype(np.uint8)
    x, y = face["at"]  # may be negative: a portrait whose top or left lies outside the frame
    fh, fw = frame.shape[:2]
    x0, y0 = max(0, x), max(0, y)
    x1, y1 = min(fw, x + patch.shape[1]), min(fh, y + patch.shape[0])
    if x1 > x0 and y1 > y0:
        frame[y0:y1, x0:x1] = patch[y0 - y : y1 - y, x0 - x : x1 - x]


def hit(box: tuple[float, ...], true: tuple[float, ...]) -> bool:
    cx, cy = box[0] + box[2] / 2, box[1] + box[3] / 2
    x, y, w, h = true
    return x <= cx <= x + w and y <= cy <= y + h and 0.5 <= box[2] / w <= 2.0


def make_plan(args: argparse.Namespace, tmp: Path) -> list[dict]:
    import skimage.data

    rng = np.random.default_rng(0)
    w, h = args.size
    backgrounds = []
    for name in FREE_IMAGES:
        try:
            a = getattr(skimage.data, name)()
        except Exception:  # noqa: BLE001 - an image that would need a download: skip it
            continue
        a = a[..., :3] if a.ndim == 3 else np.stack([a] * 3, axis=-1)
        if a.dtype != np.uint8:
            a = a.astype(np.float64)
            a = (255 * (a - a.min()) / max(1e-9, float(a.max() - a.min()))).astype(np.uint8)
        p = tmp / f"bg_{name}.png"
        cv2.imwrite(str(p), cv2.cvtColor(np.ascontiguousarray(a), cv2.COLOR_RGB2BGR))
        backgrounds.append(str(p))
    astro = tmp / "astronaut.png"
    x0, y0, x1, y1 = ASTRONAUT_CROP
    cv2.imwrite(str(astro), cv2.cvtColor(skimage.data.astronaut()[y0:y1, x0:x1], cv2.COLOR_RGB2BGR))
    fer = []
    val = Path(args.fer_val)
    for label in CLASSES:
        files = sorted((val / label).glob("*"))
        picks = rng.choice(len(files), size=min(args.per_class, len(files)), replace=False)
        fer += [(str(files[i]), label) for i in sorted(picks)]

    def place(size_px: float) -> tuple[int, int]:
        return int(rng.integers(0, max(1, w - int(size_px)))), int(rng.integers(0, max(1, h - int(size_px))))

    def astronaut(width: int, at: tuple[int, int] | None = None) -> tuple[dict, tuple[float, ...]]:
        fx, fy, fw = ASTRONAUT_FACE
        k = width / fw
        # keep the face inside the frame: the portrait is placed so that the face square is
        ax, ay = at or place(width)
        face = {"src": str(astro), "k": k, "at": (int(ax - fx * k), int(ay - fy * k)), "grey": bool(rng.random() < 0.2)}
        face.update(flip=False, gain=float(rng.uniform(0.6, 1.1)))  # (mirroring would move the face off its square)
        return face, (ax, ay, width, width)

    plan: list[dict] = []
    seed = 0
    for width in WIDTHS:
        for _ in range(args.photos):
            face, true = astronaut(width)
            seed += 1
            plan.append({"set": "photo", "width": width, "label": "happy", "bg": backgrounds[seed % len(backgrounds)],
                         "seed": seed, "kind": "scene", "faces": [face], "true": [true]})  # fmt: skip
        for path, label in fer:
            at = place(width)
            seed += 1
            face = {"src": path, "k": width / 48, "at": at, "grey": True, "flip": False, "gain": 1.0}
            plan.append({"set": "fer2013", "width": width, "label": label, "bg": backgrounds[seed % len(backgrounds)],
                         "seed": seed, "kind": "scene", "faces": [face], "true": [(*at, width, width)]})  # fmt: skip
        if width * 5.5 < w:
            for _ in range(args.photos // 2):
                y = int(rng.integers(0, h - width))
                x0 = int(rng.integers(0, w - int(width * 4.0)))
                x1 = x0 + int(width * rng.uniform(2.3, 2.8))  # shoulder to shoulder, as people sit on a sofa
                f0, t0 = astronaut(width, (x0, y))
                f1, t1 = astronaut(width, (x1, y))
                seed += 1
                plan.append({"set": "pair", "width": width, "label": "happy", "bg": backgrounds[seed % len(backgrounds)],
                             "seed": seed, "kind": "scene", "faces": [f0, f1], "true": [t0, t1]})  # fmt: skip
    for i in range(args.free):
        seed += 1
        kind = "noise" if i % 10 == 8 else "pattern" if i % 10 == 9 else "scene"
        plan.append({"set": "free", "width": 0, "label": "", "bg": backgrounds[i % len(backgrounds)], "seed": seed,
                     "kind": kind, "faces": [], "true": []})  # fmt: skip
    return plan


# ---- detectors -------------------------------------------------------------------------------------------------------


def ours(size: tuple[int, int]) -> dict:
    sys.path.insert(0, str(ROOT))
    from edge_daemon.config import Config
    from edge_daemon.models import load_face_model
    from edge_daemon.vision.detector import make_detector

    config = Config()
    model = load_face_model(config)
    models = ROOT / "models_tflite"
    full = models / "face_detection_full_range_sparse.json"
    detectors = {
        "short-range": make_detector(
            "blazeface", models / "face_detection_short_range.json", min_face_px=8, max_faces=8
        ),
        "full-range": make_detector("blazeface", full, min_face_px=8, max_faces=8),
        "full-range, 2 tiles (default)": make_detector("blazeface", full, min_face_px=8, max_faces=8, tiles=2),
        "haar (ours)": make_detector("haar", None, min_face_px=20, max_faces=8),
    }

    def classify(frame: np.ndarray, box: tuple[float, ...]) -> str:
        from edge_daemon.labels import CANONICAL

        probs = model.classify(model.pre.crop(frame, box)) @ model.to_canonical
        return CANONICAL[int(np.argmax(probs))]

    runners = {
        name: (lambda f, d=d: [(face.box, face.score) for face in d.detect(f)], classify)
        for name, d in detectors.items()
    }
    runners[TRUE_BOX] = (None, classify)  # the emotion model alone: what a perfect detector would leave it
    return runners


def peer() -> dict:
    from fer.fer import FER

    detector = FER(mtcnn=False)

    def run(frame: np.ndarray):
        found = detector.detect_emotions(frame)
        return [(tuple(float(v) for v in f["box"]), max(f["emotions"], key=f["emotions"].get)) for f in found]

    return {"fer (Haar + mini-Xception)": run}


def evaluate(plan: list[dict], size: tuple[int, int], is_peer: bool) -> dict:
    cache: dict = {}
    frames = [(item, build_frame(item, size, cache)) for item in plan]
    if is_peer:
        runners = {name: (run, None) for name, run in peer().items()}
    else:
        runners = ours(size)
    out: dict = {}
    for name, (detect, classify) in runners.items():
        rows, times = [], []
        for item, frame in frames:
            t0 = time.perf_counter()
            found = [(true, 1.0) for true in item["true"]] if detect is None else detect(frame)
            times.append(time.perf_counter() - t0)
            hits, right = [], []
            for true in item["true"]:
                match = next((f for f in found if hit(f[0], true)), None)
                hits.append(match is not None)
                if match is None:
                    right.append(False)
                elif classify is None:
                    right.append(match[1] == item["label"])
                else:
                    right.append(classify(frame, match[0]) == item["label"])
            rows.append({"set": item["set"], "width": item["width"], "found": hits, "right": right,
                         "false": len(found) - sum(hits)})  # fmt: skip
        out[name] = {"rows": rows, "ms": 1000 * statistics.median(times)}
    return out


def summarise(results: dict, widths: tuple[int, ...]) -> list[str]:
    lines = []
    for set_name, what in (("photo", "found"), ("pair", "found"), ("fer2013", "found"), ("fer2013", "right")):
        title = {"found": "share of faces found", "right": "whole-pipeline accuracy (a missed face counts as wrong)"}
        lines.append(f"\n{set_name}: {title[what]}, by face width (px)")
        lines.append(f"{'':32}" + "".join(f"{w:>7}" for w in widths))
        for name, res in results.items():
            if name == TRUE_BOX and what == "found":
                continue
            cells = []
            for w in widths:
                rows = [r for r in res["rows"] if r["set"] == set_name and r["width"] == w]
                if not rows:
                    cells.append(f"{'-':>7}")
                    continue
                if set_name == "pair" and what == "found":
                    v = statistics.fmean(all(r["found"]) for r in rows)
                else:
                    v = statistics.fmean(x for r in rows for x in r[what])
                cells.append(f"{v:7.2f}")
            lines.append(f"{name:32}" + "".join(cells))
    lines.append("\nface-free frames: false faces per 1000 frames; median ms per frame (all frames)")
    for name, res in results.items():
        if name == TRUE_BOX:
            continue
        free = [r for r in res["rows"] if r["set"] == "free"]
        fp = 1000 * sum(r["false"] for r in free) / max(1, len(free))
        lines.append(f"{name:32}{fp:8.1f} false /1000 {res['ms']:8.2f} ms")
    return lines


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--fer-val", required=True, help="FER2013 val tree, e.g. ../shared/data/fer2013/val")
    ap.add_argument("--per-class", type=int, default=30, help="FER2013 faces per class (default 30)")
    ap.add_argument("--photos", type=int, default=30, help="photo placements per width (default 30)")
    ap.add_argument("--free", type=int, default=1000, help="face-free frames (default 1000)")
    ap.add_argument("--size", type=int, nargs=2, default=(640, 480), metavar=("W", "H"))
    ap.add_argument(
        "--peer", action="store_true", help="also run the fer package (needs benchmarks/fer_peer.sh's venv)"
    )
    ap.add_argument("--out", help="write the per-frame results as JSON here")
    ap.add_argument("--_peer-plan", dest="peer_plan", help=argparse.SUPPRESS)
    args = ap.parse_args()
    size = tuple(args.size)
    if args.peer_plan:  # inside .venv-fer
        plan = json.loads(Path(args.peer_plan).read_text())
        print(json.dumps(evaluate(plan, size, is_peer=True)))
        return 0
    if not Path(args.fer_val).is_dir():
        print(f"error: --fer-val {args.fer_val}: not a folder (FER2013 val, e.g. ../shared/data/fer2013/val)")
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        plan = make_plan(args, Path(tmp))
        results = evaluate(plan, size, is_peer=False)
        if args.peer:
            py = ROOT / ".venv-fer" / "bin" / "python"
            if not py.exists():
                print("error: --peer needs .venv-fer: run benchmarks/fer_peer.sh once to build it")
                return 2
            plan_file = Path(tmp) / "plan.json"
            plan_file.write_text(json.dumps(plan))
            cmd = [
                str(py),
                __file__,
                "--fer-val",
                args.fer_val,
                "--size",
                *map(str, size),
                "--_peer-plan",
                str(plan_file),
            ]
            env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
            done = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True)
            results.update(json.loads(done.stdout.strip().splitlines()[-1]))
    cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")), "?")
    print(f"CPU: {cpu} ({os.cpu_count()} cores, {platform.machine()}); frames {size[0]}x{size[1]}")
    print("\n".join(summarise(results, WIDTHS)))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
