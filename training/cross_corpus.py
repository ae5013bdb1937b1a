"""Cross-corpus check: the shipped speech model on a corpus it never heard (other speakers, language, recording).

    python -m training.cross_corpus --data urdu=../shared/data/urdu --out runs/speech/urdu.json

Each clip is classified as `emotion-edge classify speech` does it (the daemon's voice gate, its windows, mean of
the calibrated window probabilities), each clip alone; a model that normalises per stream is also run with each
speaker's clips on one stream, as a microphone in front of that person would hear them. The prediction is the most probable of the labels the corpus has (URDU has
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
from edge_daemon.audio.features import StreamNorm
from edge_daemon.audio.vad import Gate
from edge_daemon.config import Config, load_config
from edge_daemon.labels import CANONICAL

from . import common
from .speech_data import Corpus, load_sources, read_wav


def predict(
    model: SpeechEmotionModel, corpus: Corpus, present: list[int], config: Config, one_stream_per_speaker: bool
) -> np.ndarray:
    """Per clip, the index into CANONICAL of the most probable label the corpus has; -1 for no voiced window.

    Each clip alone on a new stream (`classify speech`), or a model that normalises per stream hearing each
    speaker's clips one after another in a random order on one stream (a microphone in front of that person)."""
    pred = np.full(len(corpus.items), -1)
    order = np.random.default_rng(0).permutation(len(corpus.items))
    streams: dict[str, StreamNorm | None] = {}
    for i in order.tolist():
        u = corpus.items[i]
        stream = None
        if one_stream_per_speaker:
            if u.speaker not in streams:
                streams[u.speaker] = model.new_stream()
            stream = streams[u.speaker]
        probs, _ = model.classify_voiced(read_wav(u.path), Gate.from_config(config.speech), config.speech.hop_s, stream)
        if probs is not None:
            canon = probs @ model.to_canonical
            pred[i] = present[int(np.argmax(canon[present]))]
    return pred


def one_stream_scores(
    model: SpeechEmotionModel, corpus: Corpus, present: list[int], config: Config, truth: np.ndarray, sexes: np.ndarray
) -> dict[str, object]:
    p = predict(model, corpus, present, config, one_stream_per_speaker=True)
    return {
        "accuracy_one_stream_per_speaker": float(np.mean(p == truth)),
        "accuracy_by_sex_one_stream_per_speaker": by_sex(p, truth, sexes),
    }


def by_sex(pred: np.ndarray, truth: np.ndarray, sexes: np.ndarray) -> dict[str, float]:
    return {k: float(np.mean(pred[sexes == k] == truth[sexes == k])) for k in sorted(set(sexes.tolist()))}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m training.cross_corpus", description=__doc__.split("\n")[0])
    ap.add_argument("--data", action="append", required=True, help="kind=path, as training.speech takes it")
    ap.add_argument("--model", type=Path, default=Path("models_tflite/speech_emotion.json"))
    ap.add_argument("--out", type=Path, default=Path("runs/speech/cross_corpus.json"))
    args = ap.parse_args(argv)
    config = load_config(None)
    model = SpeechEmotionModel(args.model, calm_as=config.fusion.calm_as)
    corpus = load_sources(args.data)
    truth = np.array([CANONICAL.index(u.label if u.label != "calm" else config.fusion.calm_as) for u in corpus.items])
    present = sorted(set(truth.tolist()))
    sexes = np.array([u.sex for u in corpus.items])
    pred = predict(model, corpus, present, config, one_stream_per_speaker=False)
    labels = [CANONICAL[i] for i in present]
    rep = common.classification_report(
        np.searchsorted(present, truth),
        np.where(pred >= 0, np.searchsorted(present, np.maximum(pred, 0)), -1),
        labels,
    )
    result = {
        "corpus": corpus.summary(),
        "model": f"{model.meta.name} {model.meta.version}",
        "classes": labels,
        "chance": 1 / len(labels),
        "clips": len(truth),
        "clips_without_voiced_window": int(np.sum(pred < 0)),
        "accuracy": float(np.mean(pred == truth)),
        "accuracy_by_sex": by_sex(pred, truth, sexes),
        "clips_by_sex": dict(Counter(sexes.tolist())),
        "per_class": rep["per_class"],
        **(one_stream_scores(model, corpus, present, config, truth, sexes) if model.features.norm_memory else {}),
        "confusion": rep["confusion"],
        "command": "python -m training.cross_corpus " + " ".join(sys.argv[1:] if argv is None else argv),
    }
    common.write_json(args.out, result)
    print(json.dumps({k: v for k, v in result.items() if k not in ("per_class", "confusion")}, indent=2))
    return 0


if __name__ == "__main__":
    common.run_main(main)
