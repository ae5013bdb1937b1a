"""Choose and check the fusion defaults on audio-visual clips made from data the models never trained on.

    python -m training.fusion_eval --fer-val ../shared/data/fer2013/val --ravdess ../shared/data/ravdess \
        --speech-cv runs/speech --out runs/fusion

Each clip pairs one RAVDESS utterance with one FER2013 `val` face of the same emotion (calm counts as
neutral): the face is "filmed" at `face.rate_hz` frames a second for the length of the utterance, each frame a
slightly moved, scaled and lit copy, classified by the shipped face model exactly as `classify face --no-detect`
does; the voice goes through the daemon's voice gate and sliding windows and is classified by the speech model of
the cross-validation fold that never heard that actor (`runs/speech/fold<k>.tflite`, from `training.speech`).
Predictions are stamped in stream time and fused per window by the daemon's own `FusionRule`.

Honest use of the clips: actors of folds 1-3 (and half of the faces) choose the method, the modality weights and
`min_confidence`; actors of folds 4-5 (and the other faces) report the result. Faces and voices come from different
people, so face and voice disagree only as often as the two models do, not as often as a real person's face and
voice may: a known limit of a set built from separate corpora.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from edge_daemon.audio.emotion import gated_windows
from edge_daemon.audio.features import SpeechFeatures
from edge_daemon.audio.vad import Gate
from edge_daemon.config import Config, load_config
from edge_daemon.errors import UserError
from edge_daemon.fusion import FusionRule, Prediction
from edge_daemon.labels import CANONICAL, SPEECH_LABELS, UNCERTAIN, canonical_matrix, normalise
from edge_daemon.models import load_face_model
from edge_daemon.runtime import TFLiteModel

from . import common
from .face_data import load_many
from .speech import features_from_cv
from .speech_data import Corpus, load_corpus, read_wav

TUNE_FOLDS = (0, 1, 2)  # indices into cv.json's folds; the rest report


@dataclass
class Clip:
    truth: int  # index into CANONICAL
    fold: int
    windows: list[list[Prediction]]  # per fusion window


def jitter(face: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One video frame of a still face: moved by up to 2 px, scaled by ±5 %, light changed by ±8 %."""
    h, w = face.shape[:2]
    s = rng.uniform(0.95, 1.05)
    m = cv2.getRotationMatrix2D((w / 2, h / 2), rng.uniform(-3, 3), s)
    m[:, 2] += rng.uniform(-2, 2, 2)
    out = cv2.warpAffine(face, m, (w, h), borderMode=cv2.BORDER_REPLICATE)
    return np.clip(out.astype(np.float32) * rng.uniform(0.92, 1.08), 0, 255).astype(np.uint8)


def build_clips(args: argparse.Namespace, config: Config) -> list[Clip]:
    cv = json.loads((args.speech_cv / "cv.json").read_text())
    temperature = float(cv.get("calibration", {}).get("temperature", 1.0))
    fold_of = {spk: k for k, f in enumerate(cv["folds"]) for spk in f["held_out_speakers"]}
    feats = features_from_cv(cv["features"], args.speech_cv / "cv.json")
    corpus = load_corpus("ravdess", args.ravdess)
    speech, windows_of = speech_predictions(args, config, corpus, cv, fold_of, feats, temperature)
    face_model = load_face_model(config)
    faces = load_many([args.fer_val], ())
    by_class: dict[int, list[np.ndarray]] = {}
    rng = np.random.default_rng(args.seed)
    order = rng.permutation(len(faces.labels))
    for i in order:
        by_class.setdefault(faces.labels[i], []).append(faces.images[i])
    # Half of each class's faces for tuning clips, the other half for reported clips.
    halves = {c: (v[: len(v) // 2], v[len(v) // 2 :]) for c, v in by_class.items()}
    w, rate = config.fusion.window_s, config.face.rate_hz
    clips = []
    t0 = time.time()
    for n, u in enumerate(corpus.items):
        fold = fold_of[u.speaker]
        truth = CANONICAL.index(normalise(u.label) if u.label != "calm" else config.fusion.calm_as)
        n_windows = windows_of[n]
        preds = list(speech[n])
        pool = halves[truth][0 if fold in TUNE_FOLDS else 1]
        face = pool[int(rng.integers(len(pool)))]
        for k in range(int(n_windows * w * rate)):
            p = face_model.classify(jitter(face, rng)) @ face_model.to_canonical
            preds.append(Prediction("face", (k + 0.5) / rate, p.astype(np.float32)))
        windows = [[p for p in preds if i * w <= p.t < (i + 1) * w] for i in range(n_windows)]
        clips.append(Clip(truth, fold, windows))
        if n % 200 == 0:
            print(f"  {n}/{len(corpus.items)} clips, {time.time() - t0:.0f}s", flush=True)
    return clips


def in_windows(audio: np.ndarray, window_s: float, rate: int) -> tuple[np.ndarray, int]:
    """The clip padded with silence to whole fusion windows, and how many windows that is."""
    n = max(1, int(np.ceil(len(audio) / (window_s * rate))))
    return np.pad(audio, (0, int(n * window_s * rate) - len(audio))), n


def speech_predictions(
    args: argparse.Namespace,
    config: Config,
    corpus: Corpus,
    cv: dict,
    fold_of: dict[str, int],
    feats: SpeechFeatures,
    temperature: float,
) -> tuple[list[list[Prediction]], list[int]]:
    """Per clip, the speech predictions of the fold model that never heard its actor, in the clip's stream time,
    and the clip's number of fusion windows.

    A model that normalises per stream hears each actor's clips one after another in a random order on one stream,
    as training.speech reported it (in file order the stream would hear all of one emotion, then the next)."""
    to_canon = canonical_matrix(SPEECH_LABELS, config.fusion.calm_as)
    gate = Gate.from_config(config.speech)
    rng = np.random.default_rng(args.seed + 1)
    out: list[list[Prediction]] = [[] for _ in corpus.items]
    n_windows = [0] * len(corpus.items)
    w = config.fusion.window_s
    for k in range(len(cv["folds"])):
        model = TFLiteModel(args.speech_cv / f"fold{k + 1}.tflite")
        spec = args.speech_cv / f"fold{k + 1}.features.json"  # the fold's own normalisation prior, if it has one
        if cv["features"].get("norm_memory") and not spec.is_file():
            raise UserError(f"{spec} is missing: the fold models normalise per stream and need their prior; "
                            "run training.speech again with this --run-dir")  # fmt: skip
        fold_feats = SpeechFeatures.from_meta(json.loads(spec.read_text())) if spec.is_file() else feats
        for spk in sorted({s for s, f in fold_of.items() if f == k}):
            stream = fold_feats.stream()
            for n in rng.permutation([i for i, u in enumerate(corpus.items) if u.speaker == spk]).tolist():
                audio, n_windows[n] = in_windows(read_wav(corpus.items[n].path), w, feats.sample_rate)
                for g in gated_windows(audio, fold_feats, gate, config.speech.hop_s):
                    if g.voiced:
                        x = fold_feats.compute(g.audio)
                        x = stream.push(x) if stream is not None else x
                        p = model.run(x.reshape(model.inputs[0].shape))[0][0]
                        p = common.apply_temperature(p[None], temperature)[0]
                        t = (g.start + feats.window_samples / 2) / feats.sample_rate
                        out[n].append(Prediction("speech", t, (p @ to_canon).astype(np.float32)))
    return out, n_windows


def score(clips: list[Clip], rule: FusionRule, only: str | None = None) -> dict[str, float]:
    """Accuracy over every window (a window without an answer or with `uncertain` counts as wrong), the share of
    `uncertain` windows, and the accuracy of the windows that got a label."""
    right = uncertain = total = labelled = 0
    for c in clips:
        for preds in c.windows:
            total += 1
            mine = [p for p in preds if only is None or p.modality == only]
            if not mine:
                continue
            emotion, *_ = rule.fuse(mine)
            if emotion == UNCERTAIN:
                uncertain += 1
                continue
            labelled += 1
            right += emotion == CANONICAL[c.truth]
    return {
        "accuracy": right / max(1, total),
        "uncertain_share": uncertain / max(1, total),
        "accuracy_when_labelled": right / max(1, labelled),
        "windows": total,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m training.fusion_eval", description=__doc__.split("\n")[0])
    ap.add_argument("--fer-val", type=Path, required=True)
    ap.add_argument("--ravdess", type=Path, required=True)
    ap.add_argument("--speech-cv", type=Path, default=Path("runs/speech"))
    ap.add_argument("--config", type=Path, default=None, help="daemon config (default: the built-in defaults)")
    ap.add_argument("--out", type=Path, default=Path("runs/fusion"))
    ap.add_argument("--max-uncertain", type=float, default=0.10, help="largest acceptable share of uncertain windows")
    ap.add_argument("--seed", type=int, default=1234)
    args = ap.parse_args(argv)
    if not (args.speech_cv / "cv.json").is_file():
        raise common.DatasetError(f"{args.speech_cv}/cv.json not found: run `python -m training.speech` first")
    config = load_config(args.config)
    t0 = time.time()
    clips = build_clips(args, config)
    tune = [c for c in clips if c.fold in TUNE_FOLDS]
    test = [c for c in clips if c.fold not in TUNE_FOLDS]
    print(f"{len(tune)} tuning clips, {len(test)} reported clips ({time.time() - t0:.0f}s)", flush=True)

    # 1. method and weights, with no confidence threshold.
    grid = []
    for method, fw, sw in itertools.product(("vote", "average", "product"), (0.5, 1.0, 1.5, 2.0), (0.5, 1.0, 1.5, 2.0)):
        if fw == sw and fw != 1.0:
            continue  # equal weights are all the same rule
        r = score(tune, FusionRule(method, fw, sw, 0.0))
        grid.append({"method": method, "face_weight": fw, "speech_weight": sw, **r})
    best = max(grid, key=lambda g: (g["accuracy"], g["method"] == "vote"))  # ties: keep the design's vote
    # 2. min_confidence: the largest threshold whose uncertain share stays within --max-uncertain on the tuning clips.
    thresholds = [round(x, 2) for x in np.arange(0.0, 0.61, 0.05)]
    curve = []
    for th in thresholds:
        r = score(tune, FusionRule(best["method"], best["face_weight"], best["speech_weight"], th))
        curve.append({"min_confidence": th, **r})
    chosen = max(c["min_confidence"] for c in curve if c["uncertain_share"] <= args.max_uncertain)
    rule = FusionRule(best["method"], best["face_weight"], best["speech_weight"], chosen)
    design = FusionRule("vote", 1.0, 1.0, chosen)
    report = {
        "chosen": {"method": rule.method, "face_weight": rule.face_weight, "speech_weight": rule.speech_weight},
        "min_confidence": chosen,
        "tuning_grid": grid,
        "tuning_min_confidence_curve": curve,
        "reported": {
            "fused (chosen rule)": score(test, rule),
            "fused (vote, equal weights)": score(test, design),
            "face alone": score(test, rule, only="face"),
            "speech alone": score(test, rule, only="speech"),
            "fused (chosen rule, min_confidence 0)": score(
                test, FusionRule(rule.method, rule.face_weight, rule.speech_weight, 0.0)
            ),
            # every window labelled: the modalities alone and fused, with no `uncertain` to tell them apart
            "face alone (min_confidence 0)": score(test, FusionRule(rule.method, 1.0, 1.0, 0.0), only="face"),
            "speech alone (min_confidence 0)": score(test, FusionRule(rule.method, 1.0, 1.0, 0.0), only="speech"),
        },
        "clips": {"tuning": len(tune), "reported": len(test)},
        "command": "python -m training.fusion_eval " + " ".join(sys.argv[1:] if argv is None else argv),
        "minutes": round((time.time() - t0) / 60, 1),
    }
    common.write_json(args.out / "fusion.json", report)
    print(json.dumps({"chosen": report["chosen"], "min_confidence": chosen, **report["reported"]}, indent=2))
    return 0


if __name__ == "__main__":
    common.run_main(main)
