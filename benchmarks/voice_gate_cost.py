"""What each voice-gate variant hears and what it costs: one table, with the CPU it was measured on.

For each variant (the gate as shipped before the pre-gate, the pre-gate with several settings, a stride inside
speech), over the same audio:

- coverage: the share of a corpus's clips with at least one voiced window, each clip gated exactly as
  `emotion-edge classify speech` gates it (`gated_windows`: a fresh stream per clip, 2 s windows every second);
- CPU ms per second of audio of the gate alone on those clips (all speech), and of the whole speech path
  (gate, then MFCCs and the model on the windows it passes, as the daemon's SpeechWorker runs them) on 60 s of
  digital silence, noise, hum and music made with sox (the sounds of tests/test_vad.py), and on a "room": fan noise
  and hum for 10 minutes with speech clips in 10 % of it;
- the count of not-speech windows the gate let through (each one a wrong prediction).

    .venv/bin/python benchmarks/voice_gate_cost.py ../shared/data/ravdess ../shared/data/urdu ../shared/data/ased \
        --clips 300 --seed 0

`--clips N` gates a fixed random sample of N clips per corpus (seeded), `--clips 0` every clip. FLAC (ASED) is
read with `soundfile` if it is installed, else decoded by sox. CPU time is the process's (time.process_time, which
counts the worker threads Silero's ggml runs on), so other processes on the machine change it less than wall
time would; their cache traffic still does.
"""

from __future__ import annotations

import argparse
import random
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from edge_daemon.audio.emotion import SpeechEmotionModel, gated_windows  # noqa: E402
from edge_daemon.audio.features import SAMPLE_RATE, pcm16_to_float  # noqa: E402
from edge_daemon.audio.vad import Gate  # noqa: E402
from edge_daemon.bench import cpu_model  # noqa: E402
from edge_daemon.capture.files import read_wav  # noqa: E402

MODEL = Path(__file__).resolve().parent.parent / "models_tflite" / "speech_emotion.json"

# name -> Gate keyword arguments (the config's vad_* settings at their defaults throughout)
VARIANTS: dict[str, dict] = {
    "Silero on every chunk (before)": dict(pregate=False),
    "pre-gate, preroll 6": dict(preroll=6, rest=False),
    "pre-gate, preroll 16": dict(preroll=16, rest=False),
    "pre-gate, preroll 31": dict(preroll=31, rest=False),
    "pre-gate, preroll 16, onset 6 dB": dict(preroll=16, onset_db=6.0, rest=False),
    "pre-gate, preroll 16, stride 2": dict(preroll=16, stride=2, rest=False),
    "pre-gate, preroll 16, stride 3": dict(preroll=16, stride=3, rest=False),
    "pre-gate, preroll 16, rest": dict(preroll=16, rest=True),
    "pre-gate, preroll 8, hangover 8, rest": dict(preroll=8, hangover=8, rest=True),
    "pre-gate, preroll 8, hangover 16, rest (default)": dict(preroll=8, hangover=16, rest=True),
}

# The sounds of tests/test_vad.py, 60 s each.
NOT_SPEECH = {
    "silence": "synth 60 sine 440 vol 0",
    "fan": "synth 60 pinknoise vol 0.3",
    "traffic": "synth 60 brownnoise vol 0.3",
    "hiss": "synth 60 whitenoise vol 0.05",
    "hum": "synth 60 sine 50 sine 150 vol 0.2",
    "music": "synth 0.3 pluck C4 : synth 0.3 pluck E4 : synth 0.3 pluck G4 : synth 0.3 pluck C5 repeat 49",
}
ROOM_S, ROOM_SPEECH_SHARE = 600, 0.10


def read_clip(path: Path) -> np.ndarray:
    """Float audio in [-1, 1] at 16 kHz of a wav or flac file."""
    if path.suffix.lower() != ".flac":
        return pcm16_to_float(read_wav(path))
    try:
        import soundfile

        x, rate = soundfile.read(str(path), dtype="int16", always_2d=True)
        if rate == SAMPLE_RATE:
            return pcm16_to_float(x.mean(axis=1).astype(np.int16))
    except ImportError:
        pass
    raw = subprocess.run(
        ["sox", str(path), "-t", "raw", "-r", str(SAMPLE_RATE), "-c", "1", "-b", "16", "-e", "signed", "-"],
        check=True,
        capture_output=True,
    ).stdout
    return pcm16_to_float(np.frombuffer(raw, dtype=np.int16))


def sox_sound(effects: str, tmp: Path) -> np.ndarray:
    out = tmp / "s.wav"
    subprocess.run(["sox", "-n", "-r", str(SAMPLE_RATE), "-c", "1", "-b", "16", str(out), *effects.split()], check=True)
    return pcm16_to_float(read_wav(out))


def room(clips: list[np.ndarray], tmp: Path, seed: int) -> np.ndarray:
    """A quiet room: fan noise at -40 dBFS and mains hum under it, and speech clips in ROOM_SPEECH_SHARE of it."""
    rng = np.random.default_rng(seed)
    fan = sox_sound(f"synth {ROOM_S} pinknoise vol 0.01", tmp)
    hum = sox_sound(f"synth {ROOM_S} sine 50 sine 150 vol 0.003", tmp)
    x = fan[: ROOM_S * SAMPLE_RATE] + hum[: ROOM_S * SAMPLE_RATE]
    want, placed, at = ROOM_SPEECH_SHARE * len(x), 0, 5 * SAMPLE_RATE
    order = rng.permutation(len(clips))
    for i in range(10_000):  # the sample's clips in a random order, again if need be, until the share is placed
        clip = clips[order[i % len(order)]]
        if placed >= want or at + len(clip) >= len(x):
            break
        x[at : at + len(clip)] += clip
        placed += len(clip)
        at += len(clip) + int(len(clip) * (1 - ROOM_SPEECH_SHARE) / ROOM_SPEECH_SHARE * rng.uniform(0.5, 1.5))
    return np.clip(x, -1.0, 1.0).astype(np.float32)


@dataclass
class PathCost:
    ms_per_s: float  # CPU ms per second of audio, gate + features + model
    gate_ms_per_s: float
    voiced: int  # windows the gate passed
    windows: int


def speech_path(audio: np.ndarray, gate: Gate, model: SpeechEmotionModel) -> PathCost:
    """The daemon's speech path over a stream: a 2 s window every second, gated, voiced ones classified."""
    n = model.features.window_samples
    stream = model.new_stream()
    gate_s = total_s = 0.0
    voiced = windows = 0
    for start in range(0, len(audio) - n + 1, SAMPLE_RATE):
        w = audio[start : start + n]
        t0 = time.process_time()
        v = gate.voiced(w, start)
        t1 = time.process_time()
        if v:
            model.classify_window(w, stream)
            voiced += 1
        t2 = time.process_time()
        gate_s += t1 - t0
        total_s += t2 - t0
        windows += 1
    seconds = len(audio) / SAMPLE_RATE
    return PathCost(total_s * 1000 / seconds, gate_s * 1000 / seconds, voiced, windows)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("folders", nargs="+", type=Path)
    ap.add_argument("--clips", type=int, default=300, help="clips per corpus, a seeded random sample (0 = all)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--variants", default="", help="comma-separated variant numbers to run (default: all)")
    args = ap.parse_args()
    if shutil.which("sox") is None:
        sys.exit("sox is needed (apt-get install sox)")
    names = list(VARIANTS)
    if args.variants:
        names = [names[int(i)] for i in args.variants.split(",")]
    model = SpeechEmotionModel(MODEL)
    feats = model.features
    for name in names:  # load Silero and warm every path before timing
        speech_path(np.zeros(3 * SAMPLE_RATE, np.float32), Gate(**VARIANTS[name]), model)

    heard = {name: {} for name in names}
    gate_cpu = {name: 0.0 for name in names}
    silero = {name: 0 for name in names}
    audio_s, missed, sample = 0.0, {name: [] for name in names}, []
    t_start = time.time()
    for folder in args.folders:
        files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in (".wav", ".flac"))
        if args.clips and len(files) > args.clips:
            files = sorted(random.Random(args.seed).sample(files, args.clips))
        for name in names:
            heard[name][folder.name] = [0, len(files)]
        for path in files:
            audio = read_clip(path)
            audio_s += len(audio) / SAMPLE_RATE
            if len(sample) < 200:
                sample.append(audio)
            for name in names:
                gate = Gate(**VARIANTS[name])
                t0 = time.process_time()
                ok = any(g.voiced for g in gated_windows(audio, feats, gate))
                gate_cpu[name] += time.process_time() - t0
                silero[name] += gate.silero_chunks
                heard[name][folder.name][0] += ok
                if not ok:
                    missed[name].append(str(path))
        print(f"{folder}: {len(files)} clips gated ({time.time() - t_start:.0f} s so far)", file=sys.stderr)

    with tempfile.TemporaryDirectory() as tmp:
        sounds = {k: sox_sound(v, Path(tmp)) for k, v in NOT_SPEECH.items()}
        sounds["room (10 % speech)"] = room(sample, Path(tmp), args.seed)
    costs = {name: {k: speech_path(x, Gate(**VARIANTS[name]), model) for k, x in sounds.items()} for name in names}

    print(f"CPU: {cpu_model()}; {len(args.folders)} corpora, {args.clips or 'all'} clips each"
          f"{f' (random sample, seed {args.seed})' if args.clips else ''}, {audio_s:.0f} s of speech clips")  # fmt: skip
    corpora = [f.name for f in args.folders]
    head = ["variant", *[f"heard {c}" for c in corpora], "gate ms/s on clips", "Silero share"]
    head += [f"path ms/s {k}" for k in sounds] + ["not-speech windows passed"]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for name in names:
        row = [name]
        row += [f"{h}/{n}" for h, n in (heard[name][c] for c in corpora)]
        row += [f"{gate_cpu[name] * 1000 / audio_s:.1f}", f"{silero[name] / (audio_s * SAMPLE_RATE / 512):.0%}"]
        row += [f"{costs[name][k].ms_per_s:.2f}" for k in sounds]
        row += [str(sum(c.voiced for k, c in costs[name].items() if not k.startswith("room")))]
        print("| " + " | ".join(row) + " |")
    for name in names:
        for path in missed[name]:
            print(f"  {name}: not heard: {path}")
    room_key = next(k for k in sounds if k.startswith("room"))
    for name in names:
        c = costs[name][room_key]
        print(f"  {name}: room voiced {c.voiced}/{c.windows} windows, gate {c.gate_ms_per_s:.2f} ms/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
