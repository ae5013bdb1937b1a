"""The shipped speech model normalises per stream: the daemon's microphone worker carries one normaliser from
window to window, exactly as `classify_window` with a stream does, hands a copy to a replacement thread, and starts
afresh with a reloaded model."""

from __future__ import annotations

import queue
import threading
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from edge_daemon.audio.emotion import SpeechEmotionModel
from edge_daemon.audio.features import pcm16_to_float
from edge_daemon.audio.vad import Gate
from edge_daemon.capture.buffers import AudioRing
from edge_daemon.capture.files import read_wav
from edge_daemon.config import SpeechConfig
from edge_daemon.pipeline import SpeechWorker, Timings

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "models_tflite" / "speech_emotion.json"
VOICES = sorted((ROOT / "tests" / "fixtures" / "speech").glob("*.wav"))


def run_worker(model: SpeechEmotionModel, pcm: np.ndarray) -> tuple[SpeechWorker, list[np.ndarray]]:
    ring = AudioRing(len(pcm) + 16_000, lossless=True)
    ring.write(pcm)
    ring.close()
    out: queue.Queue = queue.Queue()
    s = SpeechConfig()
    worker = SpeechWorker(ring, model, Gate.from_config(s), s.hop_s, out=out, stop=threading.Event(), timings=Timings())
    worker.loop()  # in this thread: it returns at the end of the closed ring
    preds = []
    while not out.empty():
        preds.append(out.get().probs)
    return worker, preds


def test_the_microphone_worker_carries_one_normaliser_across_its_windows() -> None:
    model = SpeechEmotionModel(MODEL)
    assert model.features.norm_memory > 0 and not model.features.cmvn  # the shipped model normalises per stream
    pcm = np.concatenate([read_wav(v) for v in VOICES * 3])  # two voices, three times over: one microphone
    worker, preds = run_worker(model, pcm)
    assert worker.voiced >= 6 and len(preds) == worker.voiced
    assert worker.stream is not None
    assert worker.stream.weight == min(model.features.norm_prior_weight + worker.voiced, model.features.norm_memory)
    # The same windows through classify_window with one carried stream give the same answers, in the same order ...
    audio, gate, n = pcm16_to_float(pcm), Gate.from_config(SpeechConfig()), model.features.window_samples
    stream, again, cold = model.new_stream(), [], []
    for start in range(0, len(audio) - n + 1, 16_000):
        w = audio[start : start + n]
        if gate.voiced(w, start):
            again.append(model.classify_window(w, stream) @ model.to_canonical)
            cold.append(model.classify_window(w) @ model.to_canonical)
    assert len(preds) - len(again) in (0, 1)  # the worker may add one window flush with the end of the input
    assert np.allclose(np.stack(again), np.stack(preds[: len(again)]), atol=1e-6)
    # ... and differ from windows heard each on a new stream: the worker did not start afresh every time.
    assert not np.allclose(np.stack(cold)[3:], np.stack(preds[: len(again)])[3:], atol=1e-3)


def test_a_replacement_worker_keeps_a_copy_of_the_voice_and_a_reloaded_model_starts_afresh() -> None:
    model = SpeechEmotionModel(MODEL)
    old, _ = run_worker(model, read_wav(VOICES[0]))
    assert old.stream is not None and old.stream.weight > model.features.norm_prior_weight
    new = SpeechWorker(AudioRing(16_000), model, Gate.from_config(SpeechConfig()), 1.0, out=queue.Queue(),
                       stop=threading.Event(), timings=Timings())  # fmt: skip
    new.carry_over(old)  # the supervisor replacing a hung thread
    assert new.stream is not None and new.stream is not old.stream  # a copy: the retired thread cannot touch it
    assert np.array_equal(new.stream.mean, old.stream.mean) and new.stream.weight == old.stream.weight
    new.replace_models(SpeechEmotionModel(MODEL))  # `emotion-edge reload`, taken up at the top of the next loop
    new._take_pending()
    assert new.stream is not None and new.stream.weight == model.features.norm_prior_weight


def test_a_stream_of_another_models_features_is_refused() -> None:
    model = SpeechEmotionModel(MODEL)
    other = replace(model.features, norm_memory=model.features.norm_memory + 1).stream()
    audio = pcm16_to_float(read_wav(VOICES[0]))[: model.features.window_samples]
    with pytest.raises(ValueError, match="other features"):
        model.classify_window(audio, other)
