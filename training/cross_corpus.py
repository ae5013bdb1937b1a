"""Cross-corpus check: the shipped speech model on a corpus it never heard (other speakers, language, recording).

    python -m training.cross_corpus --data urdu=../shared/data/urdu --out runs/speech/urdu.json

Each clip is classified as `emotion-edge classify speech` does it (the daemon's voice gate, its windows, mean of
the calibrated window probabilities); the prediction is the most probable of the labels the corpus has (URDU has
only angry, happy, neutral and sad; calm counts as neutral), so chance is 1 / that many. Clips with no voiced
window count as wrong and are reported.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

import numpy as np

from edge_daemon.audio.emotion import SpeechEmotionModel
from edge_daemon.config import load_config
from edge_daemon.labels import CANONICAL

from . import common
from .speech_data import load_sources, read_wav


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m training.cross_corpus", description=__doc__.split("\n")[0])
    ap.add_argument("--data", action="append", required=True, help="kind=path, as training.speech takes it")
    ap.add_argument("--model", type=Path, default=Path("models_tflite/speech_emotion.json"))
    ap.add_argument("--out", type=Path, default=Path("runs/speech/cross_corpus.json"))
    args = ap.parse_args(argv)
    config = load_config(None)
    model = SpeechEmotionModel(args.model, calm_as=config.fusion.calm_as)
    corpus = load_sources(args.data)
    present = sorted({CANONICAL.index(u.label if u.label != "calm" else config.fusion.calm_as) for u in corpus.items})
    truth, pred, sexes, silent = [], [], [], 0
    for u in corpus.items:
        probs, voiced = model.classify_voiced(read_wav(u.path), config.speech.gate(), config.speech.hop_s)
        t = CANONICAL.index(u.label if u.label != "calm" else config.fusion.calm_as)
        truth.append(t)
        sexes.append(u.sex)
        if probs is None:
            silent += 1
            pred.append(-1)
            continue
        canon = probs @ model.to_canonical
        pred.append(present[int(np.argmax(canon[present]))])
    y, p, s = np.array(truth), np.array(pred), np.array(sexes)
    labels = [CANONICAL[i] for i in present]
    rep = common.classification_report(
        np.searchsorted(present, y), np.where(p >= 0, np.searchsorted(present, np.maximum(p, 0)), -1), labels
    )
    result = {
        "corpus": corpus.summary(),
        "model": f"{model.meta.name} {model.meta.version}",
        "classes": labels,
        "chance": 1 / len(labels),
        "clips": len(y),
        "clips_without_voiced_window": silent,
        "accuracy": float(np.mean(p == y)),
        "accuracy_by_sex": {k: float(np.mean(p[s == k] == y[s == k])) for k in sorted(set(sexes))},
        "clips_by_sex": dict(Counter(sexes)),
        "per_class": rep["per_class"],
        "confusion": rep["confusion"],
        "command": "python -m training.cross_corpus " + " ".join(sys.argv[1:] if argv is None else argv),
    }
    common.write_json(args.out, result)
    print(json.dumps({k: v for k, v in result.items() if k not in ("per_class", "confusion")}, indent=2))
    return 0


if __name__ == "__main__":
    common.run_main(main)
