"""Shared helpers: thread/seed setup, int8 export, TFLite evaluation, reports and CLI error handling."""

from __future__ import annotations

import datetime as _dt
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np

from edge_daemon.errors import UserError

REPO = Path(__file__).resolve().parent.parent


class DatasetError(UserError):
    """A dataset path or file the user gave is unusable (reported as one line, exit code 2)."""


def setup_tf(threads: int, seed: int) -> Any:
    """Import TensorFlow quietly with fixed threads and seeds (threads must be set before any op runs)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(max(1, threads // 2))
    except RuntimeError:  # already initialised (e.g. in tests): keep what is set
        pass
    import keras

    keras.utils.set_random_seed(seed)
    return tf


def run_main(main: Callable[[list[str] | None], int], argv: list[str] | None = None) -> None:
    """Run a CLI main; user mistakes become one line on stderr and exit code 2, not a traceback."""
    try:
        code = main(argv)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    sys.exit(code)


def git_rev() -> str:
    """The commit the code came from, "-dirty" if tracked files outside models_tflite/ (which exports write) differ."""
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True
        ).stdout.strip()
        changed = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", "--", ".", ":!models_tflite"],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return f"{rev}-dirty" if changed else rev


def now_iso() -> str:
    return _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def export_int8(model: Any, representative: Iterable[np.ndarray], out_path: Path) -> Path:
    """Full-integer quantisation (int8 in and out), which tflite-runtime 2.14 on the Pi can load.

    `representative` yields single float inputs with the batch dimension; they must be real training
    inputs produced by the same preprocessing as serving, so the calibration ranges match.
    """
    import tempfile

    import tensorflow as tf

    reps = [np.asarray(x, dtype=np.float32) for x in representative]
    # A SavedModel round trip freezes the variables (a concrete function of a live Keras 3 model keeps
    # resource variables, which the calibrator cannot read).
    tmp = tempfile.mkdtemp(prefix="export_")
    model.export(tmp, format="tf_saved_model", verbose=False)
    conv = tf.lite.TFLiteConverter.from_saved_model(tmp)
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    conv.representative_dataset = lambda: ([r] for r in reps)
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    conv.inference_input_type = tf.int8
    conv.inference_output_type = tf.int8
    data = conv.convert()
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_bytes(data)
    return out_path


def tflite_predict(model_path: Path, xs: np.ndarray) -> np.ndarray:
    """Probabilities from a .tflite through the daemon's runtime, one input at a time as the daemon runs it."""
    from edge_daemon.runtime import TFLiteModel

    m = TFLiteModel(Path(model_path))
    out = [m.run(x[None].astype(np.float32))[0][0] for x in xs]
    return np.stack(out)


def time_inference(model_path: Path, x: np.ndarray, runs: int = 300) -> float:
    """Median milliseconds of one TFLiteModel.run (quantise + invoke + dequantise), single thread as on the Pi."""
    from edge_daemon.runtime import TFLiteModel

    m = TFLiteModel(Path(model_path), num_threads=1)
    xb = x[None].astype(np.float32)
    for _ in range(20):
        m.run(xb)
    ts = []
    for _ in range(runs):
        t0 = time.perf_counter()
        m.run(xb)
        ts.append(time.perf_counter() - t0)
    return float(np.median(ts) * 1000.0)


def uar(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Unweighted average recall: the mean of per-class recall over the classes that occur in `y_true`.

    How speech emotion is reported in the field: a class with few clips counts as much as a common one, so a model
    that always says the majority class scores 1 / (number of classes), whatever the accuracy. Classes absent from
    `y_true` are left out (their recall is undefined), so a corpus with 5 of the 8 labels is scored on its 5."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    classes = np.unique(y_true)
    if not len(classes):
        return 0.0
    return float(np.mean([np.mean(y_pred[y_true == c] == c) for c in classes]))


def scores(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float | int]:
    """Accuracy, UAR and the number of items, the figures every speech report gives side by side."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    acc = float(np.mean(y_true == y_pred)) if len(y_true) else 0.0
    return {"accuracy": acc, "uar": uar(y_true, y_pred), "clips": int(len(y_true))}


def group_scores(y_true: np.ndarray, y_pred: np.ndarray, groups: np.ndarray) -> dict[str, dict[str, float | int]]:
    """`scores` within each group (a corpus, a sex), keyed by the group in sorted order."""
    groups = np.asarray(groups)
    return {
        str(g): scores(np.asarray(y_true)[groups == g], np.asarray(y_pred)[groups == g])
        for g in sorted(set(groups.tolist()))
    }


def classification_report(y_true: np.ndarray, y_pred: np.ndarray, labels: list[str]) -> dict[str, Any]:
    """Accuracy, UAR, per-class precision/recall/F1/support and the confusion matrix (rows = truth)."""
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

    idx = list(range(len(labels)))
    p, r, f, s = precision_recall_fscore_support(y_true, y_pred, labels=idx, zero_division=0)
    cm = confusion_matrix(y_true, y_pred, labels=idx)
    return {
        "accuracy": float(np.mean(y_true == y_pred)) if len(y_true) else 0.0,
        "uar": uar(y_true, y_pred),
        "macro_f1": float(np.mean(f)),
        "per_class": {
            lab: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]), "support": int(s[i])}
            for i, lab in enumerate(labels)
        },
        "confusion": cm.tolist(),
    }


def plot_confusion(cm: np.ndarray | list, labels: list[str], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cm = np.asarray(cm, dtype=float)
    norm = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(6.5, 5.5))
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    for i in range(len(labels)):
        for j in range(len(labels)):
            ax.text(
                j,
                i,
                f"{int(cm[i, j])}",
                ha="center",
                va="center",
                fontsize=7,
                color="white" if norm[i, j] > 0.5 else "black",
            )
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_curves(history: dict[str, list[float]], path: Path, title: str) -> None:
    """Loss and accuracy per epoch (train and val) from a Keras-style history dict."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, key in zip(axes, ("loss", "accuracy"), strict=True):
        for k in (key, f"val_{key}"):
            if history.get(k):
                ax.plot(range(1, len(history[k]) + 1), history[k], label=k)
        ax.set_xlabel("epoch")
        ax.set_title(key)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_json(path: Path, obj: Any) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(obj, indent=2) + "\n", encoding="utf-8")


EU_AI_ACT_NOTICE = (
    "**EU AI Act notice.** Since 2 February 2025, Article 5(1)(f) of Regulation (EU) 2024/1689 prohibits placing on "
    "the market, putting into service or using AI systems that infer the emotions of natural persons in the areas of "
    "workplace and education institutions, except where the use is intended for medical or safety reasons. Do not "
    "deploy this model for those purposes in the EU. Elsewhere, emotion inference is also a high-risk or sensitive "
    "use: tell people it is running, do not use its output to make decisions about individuals."
)


def expected_calibration_error(probs: np.ndarray, y: np.ndarray, bins: int = 15) -> float:
    """ECE: |accuracy - confidence| of the top label, averaged over equal-width confidence bins by their size."""
    conf, pred = probs.max(1), probs.argmax(1)
    edges = np.linspace(0, 1, bins + 1)
    ece = 0.0
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        m = (conf > lo) & (conf <= hi)
        if m.any():
            ece += m.mean() * abs(float(np.mean(pred[m] == y[m])) - float(conf[m].mean()))
    return float(ece)


def apply_temperature(probs: np.ndarray, t: float) -> np.ndarray:
    """What `ModelMeta.calibrate` does (the same function), on a batch."""
    from edge_daemon.modelmeta import temperature_scale

    return temperature_scale(probs, t).astype(np.float64)


def fit_temperature(probs: np.ndarray, y: np.ndarray) -> float:
    """The temperature that minimises the negative log-likelihood of the true labels (Guo et al. 2017)."""
    from scipy.optimize import minimize_scalar

    def nll(log_t: float) -> float:
        q = apply_temperature(probs, float(np.exp(log_t)))
        return float(-np.mean(np.log(np.maximum(q[np.arange(len(y)), y], 1e-7))))

    return float(np.exp(minimize_scalar(nll, bounds=(np.log(0.05), np.log(20)), method="bounded").x))


def calibration_report(probs: np.ndarray, y: np.ndarray, seed: int = 0) -> dict[str, float]:
    """Temperature fitted on all of (probs, y) for shipping; ECE before and after measured honestly by 2-fold
    cross-fitting (the temperature applied to each half was fitted on the other half)."""
    rng = np.random.default_rng(seed)
    idx = rng.permutation(len(y))
    halves = (idx[: len(y) // 2], idx[len(y) // 2 :])
    after = np.empty_like(probs, dtype=np.float64)
    for a, b in (halves, halves[::-1]):
        after[b] = apply_temperature(probs[b], fit_temperature(probs[a], y[a]))
    return {
        "temperature": fit_temperature(probs, y),
        "ece_before": expected_calibration_error(probs, y),
        "ece_after_crossfit": expected_calibration_error(after, y),
    }
