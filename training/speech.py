"""Speech emotion model: speaker-independent CV, SVM baseline, final training on all speakers, int8 export.

    python -m training.speech --data ravdess=../shared/data/ravdess --folds 5 --epochs 40 \
        --run-dir runs/speech --out models_tflite/speech_emotion.tflite

Windows are `SpeechFeatures.window_s` crops that pass the daemon's voice gate, featurised with the
daemon's own `SpeechFeatures.compute`; clip accuracy averages window probabilities exactly like the
daemon's `classify speech file.wav` (gated windows at a 1 s hop, else the most speech-like window).
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import shlex
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from edge_daemon.audio import features
from edge_daemon.audio.features import SpeechFeatures, StreamNorm
from edge_daemon.errors import UserError
from edge_daemon.labels import SPEECH_LABELS
from edge_daemon.modelmeta import SPEC_ERRORS

from . import common
from .speech_data import (
    CORPORA,
    Corpus,
    augment_audio,
    clip_windows,
    default_gate,
    load_sources,
    make_split,
    pad_to,
    random_gated_crops,
    read_wav,
)

MODEL_NAME = "speech_emotion"
VERSION = "1.2.0"
AUG_KINDS = ("orig", "slow", "fast", "noise")
DATA_LICENCE = (
    "RAVDESS (Livingstone & Russo 2018, PLoS ONE 13(5): e0196391), CC BY-NC-SA 4.0: attribution, NON-COMMERCIAL "
    "use only, share-alike. A model trained on it inherits these terms: no commercial use."
)
# What the card says of each other corpus a model was trained on (RAVDESS: DATA_LICENCE above).
CORPUS_TERMS = {
    "ased": 'ASED v1 (Retta et al., "A New Amharic Speech Emotion Dataset and Classification Benchmark", ACM TALLIP '
    '2022): released for research use ("freely available"), no licence file.',
    "urdu": "URDU-Dataset (Latif et al. 2018, arXiv:1812.10411): research use only.",
    "cremad": "CREMA-D (Cao et al. 2014): Open Database License.",
    "tess": "TESS (Dupuis & Pichora-Fuller 2010): CC BY-NC-ND 4.0.",
    "savee": "SAVEE (Jackson & Haq 2014): research use.",
    "emodb": "EmoDB (Burkhardt et al. 2005): research use.",
}


def data_licence(corpora: set[str]) -> str:
    """The terms of every corpus the model saw, RAVDESS's first."""
    parts = [DATA_LICENCE] if "ravdess" in corpora else []
    return " ".join(parts + [CORPUS_TERMS[c] for c in sorted(corpora) if c in CORPUS_TERMS])


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m training.speech", description=__doc__.split("\n")[0])
    ap.add_argument(
        "--data",
        action="append",
        required=True,
        help=f"kind=path with kind in {'/'.join(CORPORA)} (repeat to merge corpora)",
    )
    ap.add_argument("--out", type=Path, default=Path("models_tflite/speech_emotion.tflite"))
    ap.add_argument("--run-dir", type=Path, default=Path("runs/speech"))
    ap.add_argument("--split", default="speaker", help="validation protocol; only 'speaker' is accepted")
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--epochs", type=int, default=40)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--crops", type=int, default=4, help="random gated crops per clip and augmentation variant")
    ap.add_argument("--window-s", type=float, default=None, help="override SpeechFeatures.window_s")
    ap.add_argument("--numcep", type=int, default=None, help="override SpeechFeatures.numcep")
    ap.add_argument("--pitch", action="store_true", help="add the voice's pitch to the MFCCs (SpeechFeatures.pitch)")
    ap.add_argument(
        "--mel",
        action="store_true",
        help="log mel bands instead of MFCCs, input to a 2-D conv net over time and frequency (SpeechFeatures.mel)",
    )
    ap.add_argument(
        "--pool",
        choices=("avg", "avgmax"),
        default="avg",
        help="how the network sums up a window over time: its average, or average and maximum (int8 MEAN, REDUCE_MAX)",
    )
    ap.add_argument(
        "--norm-memory",
        type=int,
        default=30,
        help="normalise per stream over this many voiced windows (SpeechFeatures.norm_memory); 0 = per window (CMVN)",
    )
    ap.add_argument(
        "--channel",
        action="store_true",
        help="one more waveform variant per clip: a random microphone and room (band limits, reverberation)",
    )
    ap.add_argument(
        "--balance-corpora",
        action="store_true",
        help="weight each training corpus equally in the loss (else each clip counts the same: ASED's 2,474 clips "
        "outweigh RAVDESS's 1,200)",
    )
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--skip-cv", action="store_true", help="train the shipped model only (reuses cv.json if any)")
    ap.add_argument("--cv-only", action="store_true", help="cross-validate (and SVM baseline) only")
    ap.add_argument(
        "--leave-corpus-out",
        action="append",
        default=[],
        metavar="CORPUS",
        help="instead of k-fold CV: train on every other --data corpus and test on CORPUS (repeat for several, "
        "'each' = every corpus in turn); writes loco.json in --run-dir, no model is shipped",
    )
    ap.add_argument("--no-export", action="store_true")
    ap.add_argument("--quick", action="store_true", help="smoke test: 2 epochs, 1 crop, no augmentation")
    args = ap.parse_args(argv)
    if args.numcep is not None and args.numcep < 1:
        ap.error(f"--numcep {args.numcep}: at least 1 cepstrum")
    if args.mel and (args.pitch or args.numcep is not None or args.pool != "avg"):
        ap.error("--mel hears log mel bands with its own 2-D net: --pitch, --numcep and --pool are for the MFCC net")
    if args.quick:
        args.epochs, args.crops = min(args.epochs, 2), 1
    return args


def loco_folds(corpus: Corpus, names: list[str]) -> tuple[list[str], list[np.ndarray]]:
    """Leave-one-corpus-out: for each named corpus, the indices of its clips (the held-out set); 'each' = all.

    Refused unless at least two corpora are loaded and every name is one of them (there must be something to train
    on and something to test)."""
    present = sorted({u.corpus for u in corpus.items})
    wanted = present if names == ["each"] else names
    bad = [c for c in wanted if c not in present]
    if bad or len(present) < 2:
        raise UserError(
            f"--leave-corpus-out {', '.join(bad or wanted)}: needs two or more --data corpora, and names one of them "
            f"(loaded: {', '.join(present)})"
        )
    kinds = np.asarray([u.corpus for u in corpus.items])
    return wanted, [np.flatnonzero(kinds == c) for c in wanted]


def predict_among(probs: np.ndarray, present: list[int]) -> np.ndarray:
    """The most probable of the labels `present` (SPEECH_LABELS indices), for a corpus that has only those.

    `calm` goes to the label the daemon maps it to (`fusion.calm_as`, neutral by default) when the corpus has no
    calm, as `training.cross_corpus` scores the shipped model."""
    from edge_daemon.config import FusionConfig

    p = np.array(probs, dtype=np.float64)
    calm, calm_as = SPEECH_LABELS.index("calm"), FusionConfig().calm_as
    if calm not in present and calm_as in SPEECH_LABELS and SPEECH_LABELS.index(calm_as) in present:
        p[:, SPEECH_LABELS.index(calm_as)] += p[:, calm]
    keep = np.asarray(sorted(present))
    return keep[p[:, keep].argmax(1)]


def feature_params(args: argparse.Namespace) -> SpeechFeatures:
    kw: dict[str, Any] = {}
    if args.window_s:
        kw["window_s"] = args.window_s
    if args.numcep is not None:
        kw["numcep"] = args.numcep
    if args.pitch:
        kw["pitch"] = True
    if args.mel:
        kw["mel"], kw["deltas"] = True, False
    if args.norm_memory:
        kw["cmvn"] = False  # the raw featuriser: each training set's stream normaliser gets its own prior (with_prior)
    return SpeechFeatures(**kw)


def with_prior(feats: SpeechFeatures, args: argparse.Namespace, x: np.ndarray) -> SpeechFeatures:
    """The features a model trained on windows `x` (raw) is served with: per-stream normalisation from their
    statistics, or the per-window CMVN `feats` already has."""
    if not args.norm_memory:
        return feats
    f = x.reshape(-1, x.shape[2]).astype(np.float64)
    prior = tuple(float(v) for v in np.round(np.concatenate([f.mean(0), f.std(0)]), 6))
    return replace(feats, norm_memory=args.norm_memory, norm_prior=prior)


# A training stream is one speaker's clips (one augmentation) in a random order, cut into sessions: a new one starts
# at a clip with this probability, so that training sees normalisers that have just started as well as settled ones.
SESSION_BREAK_P = 0.05


def speaker_streams(
    win_clip: np.ndarray,
    win_group: np.ndarray,
    clips: np.ndarray,
    speakers: list[str],
    rng: np.random.Generator,
    break_p: float,
) -> list[np.ndarray]:
    """Window indices in stream order: per speaker and group (augmentation), that speaker's `clips` shuffled,
    each clip's windows in their order; cut before a clip with probability `break_p` (1.0: every clip alone)."""
    streams = []
    by_clip: dict[tuple[int, int], list[int]] = {}
    for i, (c, g) in enumerate(zip(win_clip.tolist(), win_group.tolist(), strict=True)):
        by_clip.setdefault((c, g), []).append(i)
    groups = sorted(set(win_group.tolist()))
    for spk in sorted({speakers[c] for c in clips}):
        own = np.array([c for c in clips if speakers[c] == spk])
        for g in groups:
            cur: list[int] = []
            for c in rng.permutation(own).tolist():
                if cur and rng.random() < break_p:
                    streams.append(np.array(cur))
                    cur = []
                cur += by_clip.get((c, g), [])
            if cur:
                streams.append(np.array(cur))
    return streams


def stream_normalise(feats: SpeechFeatures, x: np.ndarray, streams: list[np.ndarray]) -> np.ndarray:
    """Each stream's windows through one fresh `StreamNorm`, exactly as the daemon's microphone stream does; with
    per-window CMVN (already applied by `compute`) the windows are returned as they are."""
    if not feats.norm_memory:
        return x
    out = np.full_like(x, np.nan)  # windows outside every stream are not for this use: NaN, never stale memory
    for s in streams:
        norm = StreamNorm(feats)
        for i in s.tolist():
            out[i] = norm.push(x[i])
    return out


# Keys cv.json's feature record holds beside the metadata: training settings, not features.
CV_ONLY_KEYS = ("norm_memory", "pool")


def feature_text(feats: SpeechFeatures) -> str:
    if feats.mel:
        return f"{feats.nfilt} log mel bands"
    return f"{feats.numcep} MFCC{' + log f0 + voicing' if feats.pitch else ''}{' + deltas' if feats.deltas else ''}"


def net_text(feats: SpeechFeatures) -> str:
    return "A 2-D conv net over time and frequency" if feats.mel else "A 1-D conv net over time"


def cv_features(feats: SpeechFeatures, args: argparse.Namespace) -> dict[str, Any]:
    """What cv.json records of the features and the model's shape, to tell whether a later --skip-cv run may quote
    it. The default pooling is left out, as in the cv.json files written before --pool existed."""
    return {
        **feats.to_meta(),
        "norm_memory": args.norm_memory,
        **({"pool": args.pool} if args.pool != "avg" else {}),
    }


def features_from_cv(record: dict[str, Any], where: Path) -> SpeechFeatures:
    """The features a cv.json record describes (the inverse of cv_features, less the training settings). Refused if
    they cannot be computed today (made by an older pitch tracker): its fold models would hear other features."""
    try:
        return SpeechFeatures.from_meta({k: v for k, v in record.items() if k not in CV_ONLY_KEYS})
    except SPEC_ERRORS as e:
        raise UserError(f"{where}: {e}; run training.speech again with that --run-dir") from None


# ---------------------------------------------------------------- features


@dataclass
class Windows:
    x: np.ndarray  # (n, frames, features) float32
    clip: np.ndarray  # index into corpus.items
    aug: np.ndarray  # index into the augmentations (0 for evaluation windows)


def build_train_windows(
    corpus: Corpus, feats: SpeechFeatures, crops: int, augs: tuple[str, ...], seed: int, cache: Path
) -> Windows:
    """Gated random crops of every clip under each waveform augmentation, featurised by the daemon's code."""
    key = hashlib.sha1(
        json.dumps(
            # "aug": the cache also holds each window's augmentation (for the speaker streams); older caches do not.
            # The augmentation code is hashed too: an edit to `channel_filter` must not reuse windows made before it.
            [
                [str(u.path) for u in corpus.items],
                feats.to_meta(),
                crops,
                augs,
                seed,
                repr(default_gate()),
                "aug",
                hashlib.sha256(Path(__file__).with_name("speech_data.py").read_bytes()).hexdigest(),
            ]
        ).encode()
    ).hexdigest()[:12]
    f = cache / f"train_windows_{key}.npz"
    if f.is_file():
        d = np.load(f)
        return Windows(d["x"], d["clip"], d["aug"])
    rng = np.random.default_rng(seed)
    xs, cl, ag = [], [], []
    t0 = time.time()
    for i, u in enumerate(corpus.items):
        audio = pad_to(read_wav(u.path), feats.window_samples)
        scores = default_gate().chunk_scores(audio)
        for j, a in enumerate(augs):
            for w in random_gated_crops(augment_audio(audio, a, rng), feats, crops, rng, scores=scores):
                xs.append(feats.compute(w))
                cl.append(i)
                ag.append(j)
        if i % 200 == 0:
            print(f"  featurised {i}/{len(corpus.items)} clips, {len(xs)} windows, {time.time() - t0:.0f}s", flush=True)
    out = Windows(np.stack(xs), np.asarray(cl), np.asarray(ag))
    cache.mkdir(parents=True, exist_ok=True)
    np.savez(f, x=out.x, clip=out.clip, aug=out.aug)
    return out


def build_eval_windows(corpus: Corpus, feats: SpeechFeatures, cache: Path) -> Windows:
    """The windows the daemon would classify for each whole clip (1 s hop, gated, most speech-like window as fallback)."""
    key = hashlib.sha1(
        json.dumps(
            [[str(u.path) for u in corpus.items], feats.to_meta(), repr(default_gate()), "daemon-clip-windows"]
        ).encode()
    ).hexdigest()[:12]
    f = cache / f"eval_windows_{key}.npz"
    if f.is_file():
        d = np.load(f)
        return Windows(d["x"], d["clip"], np.zeros(len(d["clip"]), int))
    xs, cl = [], []
    for i, u in enumerate(corpus.items):
        for w in clip_windows(read_wav(u.path), feats):
            xs.append(feats.compute(w))
            cl.append(i)
    out = Windows(np.stack(xs), np.asarray(cl), np.zeros(len(cl), int))
    cache.mkdir(parents=True, exist_ok=True)
    np.savez(f, x=out.x, clip=out.clip)
    return out


def group_accuracy(pred: np.ndarray, truth: np.ndarray, groups: np.ndarray) -> dict[str, float]:
    """Accuracy within each group (a sex, a speaker), keyed by the group in sorted order."""
    return {str(g): float(np.mean(pred[groups == g] == truth[groups == g])) for g in sorted(set(groups.tolist()))}


def clip_probs(win_probs: np.ndarray, clip_idx: np.ndarray, clips: np.ndarray) -> np.ndarray:
    """Mean window probability per clip, in the order of `clips`."""
    return np.stack([win_probs[clip_idx == c].mean(axis=0) for c in clips])


def clip_stats_features(corpus: Corpus, feats: SpeechFeatures) -> np.ndarray:
    """Classic baseline input: mean and std over the whole clip of MFCC+deltas (no per-window CMVN)."""
    # The classic baseline: MFCCs and deltas only, whatever the network hears
    raw = replace(feats, cmvn=False, norm_memory=0, norm_prior=(), pitch=False, mel=False, deltas=True)
    rows = []
    for u in corpus.items:
        a = read_wav(u.path)
        n = raw.window_samples
        a = np.pad(a, (0, (-len(a)) % n))  # compute() takes whole windows; stats pool over all of them
        f = np.concatenate([raw.compute(a[s : s + n]) for s in range(0, len(a), n)])
        rows.append(np.concatenate([f.mean(0), f.std(0)]))
    return np.stack(rows)


# ---------------------------------------------------------------- model


def build_model(input_shape: tuple[int, int], n_classes: int, pool: str = "avg", mel: bool = False) -> Any:
    """1-D conv net over time (features as channels): small, int8-friendly, ~0.2 M params. With `mel` (log mel bands
    in, `SpeechFeatures.mel`) a 2-D conv net over time and frequency instead; the same head on both."""
    import keras
    from keras import layers

    inp = keras.Input(shape=input_shape, name="mfcc")  # the name every exported model has, mel bands or not
    x = _conv2d_body(layers, inp) if mel else _conv1d_body(layers, inp, pool)
    x = layers.Dropout(0.4)(x)
    x = layers.Dense(64, activation="relu")(x)
    x = layers.Dropout(0.3)(x)
    out = layers.Dense(n_classes, activation="softmax", name="probs")(x)
    return keras.Model(inp, out, name="speech_cnn2d_mel" if mel else "speech_cnn1d")


def _conv1d_body(layers: Any, x: Any, pool: str) -> Any:
    for ch, k in ((64, 5), (96, 5), (128, 3), (160, 3)):
        x = layers.Conv1D(ch, k, padding="same", use_bias=False)(x)
        x = layers.BatchNormalization()(x)
        x = layers.ReLU()(x)
        x = layers.MaxPooling1D(2)(x)
        x = layers.Dropout(0.15)(x)
    if pool == "avgmax":  # also the strongest moment of each learned pattern (a pitch peak, a burst)
        return layers.Concatenate()([layers.GlobalAveragePooling1D()(x), layers.GlobalMaxPooling1D()(x)])
    return layers.GlobalAveragePooling1D()(x)


def _conv2d_body(layers: Any, inp: Any) -> Any:
    """Time x mel bands as an image: 3x3 convolutions, each layer halving both axes, so a pattern learnt on one voice
    is found a few bands up or down on another (the point of `SpeechFeatures.mel`). The input stays (frames, bands),
    reshaped inside, so the daemon feeds it as it feeds the 1-D net."""
    x = layers.Reshape((*inp.shape[1:], 1))(inp)
    for i, ch in enumerate((16, 32, 64, 96)):
        # The first layer strides instead of pooling: at full resolution the map is large and the work is memory-bound
        x = layers.Conv2D(ch, 3, strides=1 if i else 2, padding="same", use_bias=False)(x)
        x = layers.BatchNormalization()(x)
        x = layers.ReLU()(x)
        if i:
            x = layers.MaxPooling2D(2)(x)
        x = layers.Dropout(0.15)(x)
    return layers.GlobalAveragePooling2D()(x)


def spec_augment(tf: Any, x: Any, seed: int) -> Any:
    """SpecAugment on a batch: one time mask (≤ 20 frames) and one feature-band mask (≤ 8 columns), set to 0 = the
    normalised mean."""
    b, t, f = tf.shape(x)[0], tf.shape(x)[1], tf.shape(x)[2]

    def mask(length: Any, width: int) -> Any:
        w = tf.random.uniform([b, 1], 0, width + 1, dtype=tf.int32)
        s = tf.random.uniform([b, 1], 0, length, dtype=tf.int32)
        r = tf.range(length)[None, :]
        return tf.cast((r >= s) & (r < s + w), x.dtype)

    mt = mask(t, 20)[:, :, None]
    mf = mask(f, 8)[:, None, :]
    return x * (1 - mt) * (1 - mf)


def fit(
    args: argparse.Namespace,
    xw: np.ndarray,
    yw: np.ndarray,
    weights: np.ndarray,
    val: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None,
    log_prefix: str,
) -> tuple[Any, dict]:
    """Train for exactly args.epochs (cosine LR); optionally track clip-level val accuracy each epoch."""
    tf = common.setup_tf(args.threads, args.seed)
    import keras

    n = len(SPEECH_LABELS)
    model = build_model(xw.shape[1:], n, args.pool, mel=args.mel)
    ds = (
        tf.data.Dataset.from_tensor_slices(
            (xw, keras.utils.to_categorical(yw, n).astype(np.float32), weights.astype(np.float32))
        )
        .shuffle(len(xw), seed=args.seed, reshuffle_each_iteration=True)
        .batch(args.batch)
        .map(lambda a, b, w: (spec_augment(tf, a, args.seed), b, w), num_parallel_calls=tf.data.AUTOTUNE)
        .prefetch(2)
    )
    steps = args.epochs * int(np.ceil(len(xw) / args.batch))
    lr = keras.optimizers.schedules.CosineDecay(
        args.lr * 0.1, steps, warmup_target=args.lr, warmup_steps=max(1, steps // 20)
    )
    model.compile(
        optimizer=keras.optimizers.AdamW(lr, weight_decay=1e-3),
        loss=keras.losses.CategoricalCrossentropy(label_smoothing=0.1),
        metrics=["accuracy"],
    )
    hist: dict[str, list[float]] = {"loss": [], "accuracy": [], "val_clip_accuracy": []}

    class ClipEval(keras.callbacks.Callback):
        def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
            hist["loss"].append(float(logs["loss"]))
            hist["accuracy"].append(float(logs["accuracy"]))
            msg = f"{log_prefix} epoch {epoch + 1}/{args.epochs} loss {logs['loss']:.3f} acc {logs['accuracy']:.3f}"
            if val is not None:
                xe, ce, clips, yc = val
                p = clip_probs(self.model.predict(xe, batch_size=512, verbose=0), ce, clips)
                hist["val_clip_accuracy"].append(float(np.mean(p.argmax(1) == yc)))
                msg += f" val_clip_acc {hist['val_clip_accuracy'][-1]:.3f}"
            print(msg, flush=True)

    model.fit(ds, epochs=args.epochs, callbacks=[ClipEval()], verbose=0)
    return model, hist


def class_weights(y: np.ndarray, n: int) -> np.ndarray:
    """Inverse frequency per class index (RAVDESS has half as many neutral clips as the others)."""
    c = np.bincount(y, minlength=n).astype(float)
    return np.where(c > 0, c.sum() / (n * np.maximum(c, 1)), 0.0)


def window_weights(y: np.ndarray, corpora: np.ndarray, n: int, balance_corpora: bool) -> np.ndarray:
    """Each training window's weight in the loss, mean 1. Plain: its class's inverse frequency over the whole set.
    With `balance_corpora`: every corpus weighs the same, and within a corpus each of its classes does (so the
    largest corpus does not set what "angry" sounds like; a class that only one corpus has, RAVDESS's calm, weighs
    what that corpus's other classes weigh). Stage 2b (training/README.md) ran with an earlier version that multiplied
    corpus weights onto the plain class weights, which balanced neither."""
    if not balance_corpora:
        w = class_weights(y, n)[y]
        return w / w.mean()
    corpus = np.unique(corpora, return_inverse=True)[1]
    cell = corpus * n + y  # one count per (corpus, class)
    counts = np.bincount(cell, minlength=(corpus.max() + 1) * n)
    classes_in = (counts.reshape(-1, n) > 0).sum(axis=1)  # how many classes each corpus has
    w = 1.0 / (len(classes_in) * classes_in[corpus] * counts[cell])  # each cell's share, spread over its windows
    return w / w.mean()


def export(model: Any, xw: np.ndarray, path: Path, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    idx = rng.permutation(len(xw))[:400]
    return common.export_int8(model, (xw[i : i + 1] for i in idx), path)


# ---------------------------------------------------------------- main


def fold_key(args: argparse.Namespace, corpus: Corpus, feats: SpeechFeatures, loco: list[str] | None) -> str:
    """What a finished fold depends on: the clips, the features, the split and the training recipe. A run stopped
    part-way (a session's end, a reboot) takes the folds whose key matches from `<fold>.result.json` and trains
    only the rest; anything else changed trains every fold again."""
    code = [Path(__file__).parent / n for n in ("speech.py", "speech_data.py", "common.py")]
    code += [Path(features.__file__), Path(features.__file__).with_name("vad.py")]
    recipe = {
        # the code that trains and scores (any edit retrains: a cv.json never mixes two versions' folds)
        "code": {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in code},
        "clips": [
            (u.corpus, u.speaker, u.label, f"{u.path.parent.name}/{u.path.name}", u.path.stat().st_size)
            for u in corpus.items
        ],
        "features": cv_features(feats, args),
        "loco": loco,
        **{
            k: getattr(args, k)
            for k in ("folds", "split", "epochs", "crops", "seed", "batch", "lr", "quick", "channel", "balance_corpora")
            if hasattr(args, k)
        },
    }
    return hashlib.sha256(json.dumps(recipe, sort_keys=True, default=str).encode()).hexdigest()


def load_fold(path: Path, key: str) -> dict[str, Any] | None:
    try:
        done = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return done if isinstance(done, dict) and done.get("key") == key else None


def cross_validate(
    args: argparse.Namespace,
    corpus: Corpus,
    y_clip: np.ndarray,
    tw: Windows,
    ew: Windows,
    feats: SpeechFeatures,
    loco: list[str] | None = None,
) -> dict[str, Any]:
    """Speaker-grouped k-fold CV (`loco` None), or leave-one-corpus-out with one fold per corpus named in `loco`.

    In k-fold CV a clip's prediction is the most probable of all 8 labels, as the daemon serves it; held out whole,
    a corpus is scored on its own labels (ASED's 5; `predict_among`), since the network cannot know which of the
    8 a corpus it never heard lacks, and only on those the training corpora taught (RAVDESS held out from a model
    trained on ASED alone: its calm, disgust and surprise clips are counted as `clips_not_scored`)."""
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import SVC

    speakers = [u.speaker for u in corpus.items]
    sexes = np.asarray([u.sex for u in corpus.items])
    kinds = np.asarray([u.corpus for u in corpus.items])
    folds = loco_folds(corpus, loco)[1] if loco else make_split(args.split, speakers, args.folds)
    n = len(SPEECH_LABELS)
    stats = clip_stats_features(corpus, feats)
    res: dict[str, Any] = {"folds": [], "svm_folds": []}
    all_true, all_pred = [], []
    oof_win: list[np.ndarray] = []  # held-out window probabilities (int8), for the temperature
    oof_win_y: list[np.ndarray] = []
    scored: list[np.ndarray] = []  # each fold's clips that were scored (all of them, but in leave-one-corpus-out)
    key = fold_key(args, corpus, feats, loco)
    for k, val_clips in enumerate(folds):
        name = f"loco-{loco[k]}" if loco else f"fold{k + 1}"  # fold<k> files are the CV's, which fusion_eval reads
        done = load_fold(args.run_dir / f"{name}.result.json", key)
        if done is not None:  # finished by an earlier, interrupted run of the same recipe on the same clips
            res["folds"].append(done["fold"])
            res["svm_folds"].append(done["svm"])
            all_true.append(np.asarray(done["truth"]))
            all_pred.append(np.asarray(done["pred"]))
            scored.append(np.asarray(done["scored"], dtype=int))
            oof_win.append(np.frombuffer(base64.b64decode(done["window_probs"]), np.float32).reshape(-1, n))
            oof_win_y.append(np.asarray(done["window_truth"], dtype=int))
            print(f"{name}: taken from {name}.result.json (an earlier run of this recipe)", flush=True)
            continue
        val_set = set(val_clips.tolist())
        train_clips = np.array([i for i in range(len(corpus.items)) if i not in val_set])
        held = sorted({speakers[i] for i in val_clips})
        assert not set(held) & {speakers[i] for i in train_clips}  # speaker-independent by construction
        unscored = 0
        if loco:  # a corpus held out whole is scored on the classes the other corpora taught (and it has)
            taught = np.isin(y_clip[val_clips], np.unique(y_clip[train_clips]))
            unscored, val_clips = int(np.sum(~taught)), val_clips[taught]
        scored.append(val_clips)
        tr = np.isin(tw.clip, train_clips)
        ev = np.isin(ew.clip, val_clips)
        yw = y_clip[tw.clip[tr]]
        fold_feats = with_prior(feats, args, tw.x[tr & (tw.aug == 0)])  # statistics of the fold's training speakers
        rng = np.random.default_rng(args.seed + k)
        xtr = stream_normalise(
            fold_feats, tw.x, speaker_streams(tw.clip, tw.aug, train_clips, speakers, rng, SESSION_BREAK_P)
        )
        # Held out as the daemon would hear them: each actor's clips one after another in a random order on one
        # stream (the number reported), and each clip alone on a new stream (what `classify speech file.wav` does).
        xev = stream_normalise(fold_feats, ew.x, speaker_streams(ew.clip, ew.aug, val_clips, speakers, rng, 0.0))
        xev_alone = stream_normalise(fold_feats, ew.x, speaker_streams(ew.clip, ew.aug, val_clips, speakers, rng, 1.0))
        model, hist = fit(
            args,
            xtr[tr],
            yw,
            window_weights(yw, kinds[tw.clip[tr]], n, args.balance_corpora),
            (xev[ev], ew.clip[ev], val_clips, y_clip[val_clips]),
            f"fold {k + 1}",
        )
        tfl = export(model, xtr[tr], args.run_dir / f"{name}.tflite", args.seed)
        if fold_feats.norm_memory:
            common.write_json(args.run_dir / f"{name}.features.json", fold_feats.to_meta())
        pw = common.tflite_predict(tfl, xev[ev])
        oof_win.append(pw)
        oof_win_y.append(y_clip[ew.clip[ev]])
        pq = clip_probs(pw, ew.clip[ev], val_clips)
        yt = y_clip[val_clips]
        present = sorted(set(yt.tolist())) if loco else list(range(n))
        pred = predict_among(pq, present)
        alone = predict_among(clip_probs(common.tflite_predict(tfl, xev_alone[ev]), ew.clip[ev], val_clips), present)
        sex_acc = group_accuracy(pred, yt, sexes[val_clips])
        spk_acc = group_accuracy(pred, yt, np.asarray(speakers)[val_clips])
        res["folds"].append(
            {
                "held_out_speakers": held,
                "clip_accuracy_float_final_epoch": hist["val_clip_accuracy"][-1],
                **(
                    {
                        "held_out_corpus": loco[k],
                        "scored_on": [SPEECH_LABELS[i] for i in present],
                        "clips_not_scored": unscored,  # of classes no training corpus has
                    }
                    if loco
                    else {}
                ),
                "clip_accuracy_int8": float(np.mean(pred == yt)),
                "clip_uar_int8": common.uar(yt, pred),
                "clip_accuracy_int8_each_clip_alone": float(np.mean(alone == yt)),
                "clip_uar_int8_each_clip_alone": common.uar(yt, alone),
                "by_corpus_int8": common.group_scores(yt, pred, kinds[val_clips]),
                "by_sex_int8": common.group_scores(yt, pred, sexes[val_clips]),
                "clip_accuracy_by_sex_int8": sex_acc,
                "clip_accuracy_by_speaker_int8": spk_acc,  # ten voices a sex: a group figure hides a wide spread
                "val_clip_accuracy_curve": hist["val_clip_accuracy"],
                "train_loss_curve": hist["loss"],
            }
        )
        all_true.append(yt)
        all_pred.append(pred)
        svm = make_pipeline(StandardScaler(), SVC(C=10, gamma="scale"))
        svm.fit(stats[train_clips], y_clip[train_clips])
        dv = svm.decision_function(stats[val_clips])  # one-vs-rest scores over the classes it was trained on
        svm_keep = np.isin(svm.classes_, present)
        res["svm_folds"].append(float(np.mean(svm.classes_[svm_keep][dv[:, svm_keep].argmax(1)] == yt)))
        print(
            f"fold {k + 1} held out {loco[k] if loco else held}: int8 clip acc {res['folds'][-1]['clip_accuracy_int8']:.3f} "
            f"UAR {res['folds'][-1]['clip_uar_int8']:.3f} "
            f"(each clip alone {res['folds'][-1]['clip_accuracy_int8_each_clip_alone']:.3f}), "
            f"SVM {res['svm_folds'][-1]:.3f}",
            flush=True,
        )
        common.write_json(
            args.run_dir / f"{name}.result.json",
            {
                "key": key,
                "fold": res["folds"][-1],
                "svm": res["svm_folds"][-1],
                "truth": yt.tolist(),
                "pred": pred.tolist(),
                "scored": val_clips.tolist(),
                "window_probs": base64.b64encode(pw.astype(np.float32).tobytes()).decode(),  # exact: the temperature
                "window_truth": oof_win_y[-1].tolist(),
            },
        )
    accs = [f["clip_accuracy_int8"] for f in res["folds"]]
    alone_accs = [f["clip_accuracy_int8_each_clip_alone"] for f in res["folds"]]
    yt, yp = np.concatenate(all_true), np.concatenate(all_pred)
    rep = common.classification_report(yt, yp, list(SPEECH_LABELS))
    sexes_all = np.concatenate([sexes[f] for f in scored])
    by_sex = group_accuracy(yp, yt, sexes_all)
    kinds_all = np.concatenate([kinds[f] for f in scored])
    protocol = (
        f"leave-one-corpus-out ({', '.join(loco)} held out in turn; each scored on its own labels), "
        if loco
        else f"{args.folds}-fold grouped by speaker (whole speakers held out, each corpus dealt across the folds), "
    )
    res.update(
        {
            "protocol": protocol + f"fixed {args.epochs} epochs (no early stopping on the held-out fold)",
            # UAR = mean per-class recall; pooled over all folds' clips (each clip predicted by the model that
            # never heard its speaker), and per fold for the spread
            "clip_uar_int8_pooled": common.uar(yt, yp),
            "clip_uar_int8_mean": float(np.mean([f["clip_uar_int8"] for f in res["folds"]])),
            "clip_uar_int8_std": float(np.std([f["clip_uar_int8"] for f in res["folds"]])),
            "clip_accuracy_int8_pooled": float(np.mean(yt == yp)),
            "pooled_by_corpus_int8": common.group_scores(yt, yp, kinds_all),
            "pooled_by_sex_int8": common.group_scores(yt, yp, sexes_all),
            # the sex gap within each corpus (the ship rule's RAVDESS gap), keyed "ravdess:F" ...
            "pooled_by_corpus_sex_int8": common.group_scores(
                yt, yp, np.char.add(np.char.add(kinds_all, ":"), sexes_all)
            ),
            "clip_accuracy_int8_mean": float(np.mean(accs)),
            "clip_accuracy_int8_std": float(np.std(accs)),
            "clip_accuracy_int8_each_clip_alone_mean": float(np.mean(alone_accs)),
            "clip_accuracy_int8_each_clip_alone_std": float(np.std(alone_accs)),
            "svm_mean": float(np.mean(res["svm_folds"])),
            "svm_std": float(np.std(res["svm_folds"])),
            "pooled_report_int8": rep,
            "accuracy_by_sex_int8": by_sex,
            "speaker_sex": dict(sorted(zip(speakers, sexes.tolist(), strict=True))),
            "sex_gap_points": (abs(by_sex.get("M", 0) - by_sex.get("F", 0)) * 100) if len(by_sex) > 1 else None,
            # Temperature fitted on held-out windows of every fold (speakers the fold's model never heard); the
            # ECE "after" is cross-fitted. The shipped model (all speakers) takes this temperature.
            **(
                {}  # the held-out corpora are scored on fewer labels: a temperature over all 8 would mean nothing
                if loco
                else {
                    "calibration": common.calibration_report(
                        np.concatenate(oof_win), np.concatenate(oof_win_y), args.seed
                    )
                }
            ),
        }
    )
    common.plot_confusion(
        rep["confusion"],
        list(SPEECH_LABELS),
        args.run_dir / f"{'loco' if loco else 'cv'}_confusion_int8.png",
        f"speech int8, pooled {'leave-one-corpus-out' if loco else 'speaker-independent CV'}",
    )
    curves = np.mean([f["val_clip_accuracy_curve"] for f in res["folds"]], axis=0)
    common.plot_curves(
        {
            "loss": np.mean([f["train_loss_curve"] for f in res["folds"]], axis=0).tolist(),
            "val_accuracy": curves.tolist(),
        },
        args.run_dir / f"{'loco' if loco else 'cv'}_curves.png",
        "speech CV: mean train loss / mean val clip accuracy (float)",
    )
    return res


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    feats = feature_params(args)
    corpus = load_sources(args.data)
    print(f"data: {corpus.summary()}", flush=True)
    # refuse bad protocols before any work
    loco = loco_folds(corpus, args.leave_corpus_out)[0] if args.leave_corpus_out else None
    make_split(args.split, [u.speaker for u in corpus.items], args.folds)
    args.run_dir.mkdir(parents=True, exist_ok=True)
    cache = args.run_dir / "cache"
    y_clip = np.asarray([SPEECH_LABELS.index(u.label) for u in corpus.items])
    augs = ("orig",) if args.quick else AUG_KINDS + (("channel",) if args.channel else ())
    t0 = time.time()
    tw = build_train_windows(corpus, feats, args.crops, augs, args.seed, cache)
    ew = build_eval_windows(corpus, feats, cache)
    print(f"{len(tw.x)} training windows, {len(ew.x)} evaluation windows ({time.time() - t0:.0f}s)", flush=True)

    if loco:
        res = cross_validate(args, corpus, y_clip, tw, ew, feats, loco)
        res["command"] = "python -m training.speech " + shlex.join(argv)
        res["features"] = cv_features(feats, args)
        common.write_json(args.run_dir / "loco.json", res)
        print(score_table(res), flush=True)
        return 0

    cv_path = args.run_dir / "cv.json"
    cv = None
    if not args.skip_cv:
        cv = cross_validate(args, corpus, y_clip, tw, ew, feats)
        cv["command"] = "python -m training.speech " + shlex.join(argv)
        cv["features"] = cv_features(feats, args)
        common.write_json(cv_path, cv)
        print(
            f"CV int8 clip accuracy {cv['clip_accuracy_int8_mean']:.3f} ± {cv['clip_accuracy_int8_std']:.3f}; "
            f"SVM {cv['svm_mean']:.3f} ± {cv['svm_std']:.3f}; by sex {cv['accuracy_by_sex_int8']}",
            flush=True,
        )
        print(score_table(cv), flush=True)
    elif cv_path.is_file():
        cv = json.loads(cv_path.read_text())
        if cv.get("features") != cv_features(feats, args):
            print("warning: cv.json was made with other feature parameters; not quoting it", flush=True)
            cv = None
    if args.cv_only:
        return 0

    # The shipped model: all speakers, same recipe and epoch count as the CV folds.
    yw = y_clip[tw.clip]
    speakers = [u.speaker for u in corpus.items]
    served = with_prior(feats, args, tw.x[tw.aug == 0])
    rng = np.random.default_rng(args.seed)
    xtr = stream_normalise(
        served, tw.x, speaker_streams(tw.clip, tw.aug, np.arange(len(corpus.items)), speakers, rng, SESSION_BREAK_P)
    )
    kinds = np.asarray([u.corpus for u in corpus.items])
    weights = window_weights(yw, kinds[tw.clip], len(SPEECH_LABELS), args.balance_corpora)
    model, hist = fit(args, xtr, yw, weights, None, "final")
    tfl = export(model, xtr, args.run_dir / "speech_emotion.tflite", args.seed)
    common.plot_curves(
        {"loss": hist["loss"], "accuracy": hist["accuracy"]},
        args.run_dir / "final_curves.png",
        "speech final model (all training speakers)",
    )
    ms_model = common.time_inference(tfl, xtr[0])
    win = np.zeros(feats.window_samples, np.float32)
    win[:] = np.random.default_rng(0).standard_normal(len(win)) * 0.05
    t = time.perf_counter()
    norm = served.stream()
    for _ in range(30):
        x = served.compute(win)
        if norm:
            norm.push(x)
    ms_feat = (time.perf_counter() - t) / 30 * 1000
    metrics: dict[str, Any] = {
        "model_bytes": tfl.stat().st_size,
        "params": int(model.count_params()),
        "inference_ms_median": ms_model,
        "features_ms_per_window": ms_feat,
        # the daemon classifies one window per ~1 s hop, so per second of audio = one window's work
        "ms_per_second_of_audio": ms_feat + ms_model,
        "train_accuracy_final_epoch_float": hist["accuracy"][-1],
    }
    if cv:
        metrics.update(
            {
                k: cv.get(k)
                for k in (
                    "clip_accuracy_int8_mean",
                    "clip_accuracy_int8_std",
                    "clip_accuracy_int8_each_clip_alone_mean",
                    "clip_accuracy_int8_each_clip_alone_std",
                    "svm_mean",
                    "svm_std",
                    "accuracy_by_sex_int8",
                    "sex_gap_points",
                    "protocol",
                    "clip_uar_int8_pooled",
                    "clip_uar_int8_mean",
                    "clip_uar_int8_std",
                    "clip_accuracy_int8_pooled",
                    "pooled_by_corpus_int8",
                    "pooled_by_sex_int8",
                    "pooled_by_corpus_sex_int8",
                )
                if k in cv  # cv.json files from before UAR was recorded lack the UAR keys
            }
        )
        if "clip_uar_int8_pooled" in cv:
            metrics["scores_table_cv_int8"] = score_table(cv)
        metrics["per_fold_int8"] = [f["clip_accuracy_int8"] for f in cv["folds"]]
        metrics["cv_command"] = cv.get("command")
        metrics["held_out_speakers_per_fold"] = [f["held_out_speakers"] for f in cv["folds"]]
        metrics["per_class_cv_int8"] = cv["pooled_report_int8"]["per_class"]
        by_speaker = {k: v for f in cv["folds"] for k, v in f.get("clip_accuracy_by_speaker_int8", {}).items()}
        if by_speaker:  # cv.json files from before 2026-12-02 do not have it
            metrics["accuracy_by_speaker_int8"] = by_speaker
            metrics["speaker_sex"] = cv["speaker_sex"]
        if "calibration" in cv:
            metrics["temperature"] = cv["calibration"]["temperature"]
            metrics["ece_window_int8_before"] = cv["calibration"]["ece_before"]
            metrics["ece_window_int8_after_crossfit"] = cv["calibration"]["ece_after_crossfit"]
    common.write_json(args.run_dir / "report.json", metrics)
    print(json.dumps({k: v for k, v in metrics.items() if not isinstance(v, dict)}, indent=2), flush=True)
    if args.no_export:
        return 0
    from edge_daemon.modelmeta import load_model, write_meta

    out = args.out
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(tfl.read_bytes())
    training = {
        "data": corpus.summary(),
        "split_protocol": (cv or {}).get("protocol", "no CV run for this export")
        + "; shipped model trained on all listed speakers (RAVDESS actors 21-24 never seen: held back)",
        "command": "python -m training.speech " + shlex.join(argv),
        "date": common.now_iso(),
        "git": common.git_rev(),
        "seed": args.seed,
        "epochs": args.epochs,
        "windows": f"{feats.window_s} s random crops ({args.crops} per clip per variant) that the daemon's voice gate "
        f"passes ({default_gate()})",
        "augmentation": "speed/pitch ±10 % by resampling, noise 10-30 dB SNR, "
        + ("a random microphone and room (band limits, synthetic reverberation), " if args.channel else "")
        + "SpecAugment time+feature masks"
        + (
            "; each corpus, and each class within a corpus, weighted equally in the loss"
            if args.balance_corpora
            else ""
        ),
        "quantisation": "full int8 (in/out int8), 400 real training windows for calibration",
    }
    write_meta(
        out,
        "speech_emotion",
        MODEL_NAME,
        VERSION,
        served.to_meta(),
        labels=list(SPEECH_LABELS),
        training=training,
        metrics=metrics,
        **(
            {"calibration": {"temperature": round(metrics["temperature"], 4), "fitted_on": "held-out CV windows"}}
            if "temperature" in metrics
            else {}
        ),
        licence="model weights: CC BY-NC-SA 4.0 (inherited from RAVDESS)",
        data_licence=data_licence({u.corpus for u in corpus.items}),
    )
    load_model(out.with_suffix(".json"), expect_kind="speech_emotion")
    corpora = {u.corpus for u in corpus.items}
    out.with_suffix(".md").write_text(model_card(metrics, training, served, corpora), encoding="utf-8")
    print(f"exported {out} ({metrics['model_bytes'] / 1024:.0f} KiB) + .json + .md", flush=True)
    return 0


def score_table(res: dict[str, Any]) -> str:
    """Accuracy and UAR (int8, clips) pooled over all folds, per corpus, per sex and per fold, as printed and carded."""

    def row(name: str, sc: dict[str, Any]) -> str:
        return f"| {name} | {sc['accuracy']:.3f} | {sc['uar']:.3f} | {sc['clips']} |"

    pooled = {"accuracy": res["clip_accuracy_int8_pooled"], "uar": res["clip_uar_int8_pooled"]}
    pooled["clips"] = sum(v["clips"] for v in res["pooled_by_sex_int8"].values())
    rows = [row("all folds, pooled", pooled)]
    rows += [row(f"corpus {c}", sc) for c, sc in res["pooled_by_corpus_int8"].items()]
    rows += [row(f"sex {g}", sc) for g, sc in res["pooled_by_sex_int8"].items()]
    if len(res["pooled_by_corpus_int8"]) > 1:
        rows += [row(f"corpus:sex {g}", sc) for g, sc in res.get("pooled_by_corpus_sex_int8", {}).items()]
    for k, f in enumerate(res["folds"]):
        name = f"held out: {f['held_out_corpus']}" if "held_out_corpus" in f else f"fold {k + 1}"
        fold = {"accuracy": f["clip_accuracy_int8"], "uar": f["clip_uar_int8"]}
        rows.append(row(name, {**fold, "clips": sum(v["clips"] for v in f["by_sex_int8"].values())}))
    return "\n".join([f"{res['protocol']}:", "| set | accuracy | UAR | clips |", "|---|---|---|---|", *rows])


def norm_text(feats: SpeechFeatures) -> str:
    if feats.norm_memory:
        return f"normalised per stream over its last {feats.norm_memory} voiced windows, from the training statistics"
    return "per-window CMVN" if feats.cmvn else "not normalised"


def stream_text(m: dict[str, Any], feats: SpeechFeatures) -> str:
    if not feats.norm_memory or m.get("clip_accuracy_int8_each_clip_alone_mean") is None:
        return ""
    return f"""
Each held-out actor's clips are heard one after another, in a random order, on one stream, whose normaliser starts
from the training statistics and settles on the actor's voice (the figures below). RAVDESS actors speak every
emotion equally often, so that stream hears a mix of moods: the case the normaliser is made for.
Each clip alone on a new stream, as `emotion-edge classify speech file.wav` hears it (the
normaliser has only the clip's own few windows to learn the voice from), scores
**{m["clip_accuracy_int8_each_clip_alone_mean"]:.3f} ± {m["clip_accuracy_int8_each_clip_alone_std"]:.3f}**.
"""


def stream_limits(feats: SpeechFeatures) -> str:
    if not feats.norm_memory:
        return ""
    return (
        "- The stream's normaliser learns what this voice usually sounds like from what it heard last (about "
        f"{feats.norm_memory} voiced windows, an exponential average). Someone who has been angry for that long becomes "
        "their own baseline, and a room of several voices gives their mix; the first windows of a new voice lean on "
        'the training statistics (see "each clip alone"). A corpus whose speakers each keep to one emotion (URDU, '
        "in `python -m training.cross_corpus`) scores lower with one stream per speaker than clip by clip.\n"
    )


def uar_text(m: dict[str, Any]) -> str:
    """The UAR table (mean per-class recall beside accuracy, pooled, per corpus, per sex, per fold), if recorded."""
    if "scores_table_cv_int8" not in m:
        return ""
    return (
        f"Unweighted average recall (UAR, the mean of per-class recall) over all folds: "
        f"**{m['clip_uar_int8_pooled']:.3f}** pooled, {m['clip_uar_int8_mean']:.3f} ± {m['clip_uar_int8_std']:.3f} "
        f"by fold (int8, clips).\n\n{m['scores_table_cv_int8']}\n"
    )


def speaker_spread(m: dict[str, Any]) -> str:
    """The range of per-actor accuracy within each sex, if the CV recorded it."""
    by, sex = m.get("accuracy_by_speaker_int8"), m.get("speaker_sex", {})
    if not by:
        return ""
    groups: dict[str, list[float]] = {}
    for spk, acc in by.items():
        groups.setdefault(sex.get(spk, "?"), []).append(acc)
    parts = [f"{g} {min(v):.2f}-{max(v):.2f}" for g, v in sorted(groups.items())]
    return f" Per actor: {', '.join(parts)} (every actor's figure is in report.json)."


def model_card(
    m: dict[str, Any],
    t: dict[str, Any],
    feats: SpeechFeatures,
    corpora: frozenset[str] | set[str] = frozenset({"ravdess"}),
) -> str:
    if "per_fold_int8" in m:
        folds = ", ".join(f"{a:.3f}" for a in m["per_fold_int8"])
        pc = "\n".join(
            f"| {k} | {v['precision']:.3f} | {v['recall']:.3f} | {v['f1']:.3f} | {v['support']} |"
            for k, v in m["per_class_cv_int8"].items()
        )
        res = f"""CV command: `{m.get("cv_command")}`.
Protocol: {m["protocol"]}. Clip accuracy = mean of window probabilities over the clip's gated
1 s-hop windows (as the daemon's `classify speech file.wav` averages them), int8 model through `edge_daemon.runtime`.
{stream_text(m, feats)}
| model | mean ± std clip accuracy (8 classes, chance 12.5 %) |
|---|---|
| **this CNN, int8** | **{m["clip_accuracy_int8_mean"]:.3f} ± {m["clip_accuracy_int8_std"]:.3f}** (folds: {folds}) |
| baseline: MFCC mean/std + RBF SVM, same folds | {m["svm_mean"]:.3f} ± {m["svm_std"]:.3f} |

{uar_text(m)}
Accuracy by speaker sex (pooled over folds, int8): {", ".join(f"{k} {v:.3f}" for k, v in m["accuracy_by_sex_int8"].items())}; gap
{m["sex_gap_points"]:.1f} points.{speaker_spread(m)}

Calibration: temperature {m.get("temperature", 1.0):.3f}, fitted on the held-out windows of all folds; expected
calibration error per window {m.get("ece_window_int8_before", float("nan")):.3f} before and
{m.get("ece_window_int8_after_crossfit", float("nan")):.3f} after (cross-fitted halves).

| class | precision | recall | F1 | support |
|---|---|---|---|---|
{pc}
"""
    else:
        res = "No cross-validation was run for this export: no speaker-independent accuracy is claimed.\n"
    return f"""# speech_emotion — speech emotion classifier (int8 TFLite)

Eight classes, output order = `edge_daemon.labels.SPEECH_LABELS`: {", ".join(SPEECH_LABELS)}
(`calm` maps to neutral in the daemon). Input: one {feats.window_s} s window at {feats.sample_rate} Hz →
`SpeechFeatures` ({feature_text(feats)}, {norm_text(feats)}) = {feats.num_frames}×{feats.num_features},
int8 in and out.

## Data and licence
- {t["data"]}
- {data_licence(set(corpora))}
- Split: {t["split_protocol"]}.

## How it was made
`{t["command"]}` (git {t["git"]}, {t["date"]}, seed {t["seed"]}). {net_text(feats)}, {m["params"]:,} parameters,
{t["epochs"]} epochs. Windows: {t["windows"]}. Augmentation: {t["augmentation"]}. {t["quantisation"]}.

## Speaker-independent results ({", ".join(sorted(corpora))})
{res}
Size {m["model_bytes"] / 1024:.0f} KiB. Per window (= per second of audio at the daemon's 1 s hop):
features {m["features_ms_per_window"]:.1f} ms + model {m["inference_ms_median"]:.2f} ms =
{m["ms_per_second_of_audio"]:.1f} ms on this x86 dev box, 1 thread (not measured on a Pi; expect several times slower there).

## Known failure modes
- RAVDESS is acted North-American English, two fixed sentences, studio audio. Spontaneous speech,
  other languages, far-field microphones, reverberation and background talk will score much lower.
- calm/neutral and fear/surprise/happy are easily confused; 24 professional actors are not a population.
- Accuracy differs by speaker sex (gap above; measured on 10 + 10 actors, so a rough estimate):
  check it on your own users before relying on it.
- It classifies how speech sounds, not what a person feels.
{stream_limits(feats)}
## Intended use
Non-commercial (licence), on-device, opt-in. {common.EU_AI_ACT_NOTICE}
"""


if __name__ == "__main__":
    common.run_main(main)
