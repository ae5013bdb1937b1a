"""Speech emotion corpora: file-name parsers, audio loading, gated windows and speaker-grouped splits.

Parsers map each corpus's naming convention onto `edge_daemon.labels.SPEECH_LABELS` (through
`normalise`) and keep the speaker id and sex, so that validation can hold out whole speakers:

- RAVDESS  `03-01-05-01-02-01-12.wav`   (EE emotion, AA actor; odd actor = male)
- CREMA-D  `1001_DFA_ANG_XX.wav`         (speaker 1001-1091; sex from VideoDemographics.csv if present)
- TESS     `OAF_back_angry.wav`          (speakers OAF/YAF, both female; `ps` = pleasant surprise)
- SAVEE    `DC_a01.wav` or `DC/a01.wav`  (a/d/f/h/n/sa/su; speakers DC/JE/JK/KL, all male)
- EmoDB    `03a01Fa.wav`                 (speaker = first two digits; 6th char W/L/E/A/F/T/N)
- URDU     `SM1_F01_A01.wav`             (S<sex><speaker>_F<file>_<A|H|N|S><index>)
- ASED     `a5-03-01-02-50.flac`         (<e><folder>-<sentence>-<repetition>-<gender>-<speaker>; FLAC)

Files whose names do not parse are collected in `Corpus.rejected` (and reported), never silently dropped.
"""

from __future__ import annotations

import csv
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from scipy.io import wavfile
from scipy.signal import butter, fftconvolve, resample_poly, sosfilt

from edge_daemon.audio.features import SAMPLE_RATE, SpeechFeatures, pcm16_to_float
from edge_daemon.audio.vad import CHUNK, Gate
from edge_daemon.labels import SPEECH_LABELS, normalise

from .common import DatasetError

AUDIO_EXTS = {".wav", ".flac"}  # FLAC: ASED is stored losslessly compressed (read through soundfile)
CORPORA = ("ravdess", "cremad", "tess", "savee", "emodb", "urdu", "ased")


@dataclass(frozen=True)
class Utterance:
    path: Path
    label: str  # one of SPEECH_LABELS
    speaker: str  # corpus-qualified ("ravdess:12") so merged corpora never share ids by accident
    sex: str  # "M", "F" or "?"
    corpus: str


@dataclass
class Corpus:
    items: list[Utterance] = field(default_factory=list)
    rejected: list[tuple[str, str]] = field(default_factory=list)

    def extend(self, other: Corpus) -> None:
        self.items += other.items
        self.rejected += other.rejected

    def summary(self) -> str:
        c = Counter(u.label for u in self.items)
        spk = {u.speaker for u in self.items}
        line = (
            f"{len(self.items)} clips, {len(spk)} speakers ({', '.join(f'{k}={c.get(k, 0)}' for k in SPEECH_LABELS)})"
        )
        if self.rejected:
            line += f"; {len(self.rejected)} files rejected, e.g. " + "; ".join(
                f"{Path(p).name}: {why}" for p, why in self.rejected[:3]
            )
        return line


def _label(name: str) -> str | None:
    lab = normalise(name)
    return lab if lab in SPEECH_LABELS else None


# ---------------------------------------------------------------- per-corpus file-name parsers
# Each returns (label, speaker, sex) or raises ValueError with the reason.

RAVDESS_EMOTIONS = {
    "01": "neutral",
    "02": "calm",
    "03": "happy",
    "04": "sad",
    "05": "angry",
    "06": "fearful",
    "07": "disgust",
    "08": "surprised",
}


def parse_ravdess(path: Path) -> tuple[str, str, str]:
    parts = path.stem.split("-")
    if len(parts) != 7 or not all(p.isdigit() and len(p) == 2 for p in parts):
        raise ValueError("not MM-VV-EE-II-SS-RR-AA")
    if parts[1] != "01":
        raise ValueError(f"vocal channel {parts[1]} is song, not speech")
    if parts[2] not in RAVDESS_EMOTIONS:
        raise ValueError(f"unknown emotion code {parts[2]}")
    actor = int(parts[6])
    return normalise(RAVDESS_EMOTIONS[parts[2]]), f"ravdess:{actor:02d}", "M" if actor % 2 else "F"


CREMAD_EMOTIONS = {"ANG": "angry", "DIS": "disgust", "FEA": "fear", "HAP": "happy", "NEU": "neutral", "SAD": "sad"}
CREMAD_RE = re.compile(r"^(\d{4})_([A-Z]{3})_([A-Z]{3})_([A-Z]{2}|X{1,2})$")


def parse_cremad(path: Path, sexes: dict[str, str] | None = None) -> tuple[str, str, str]:
    m = CREMAD_RE.match(path.stem)
    if not m:
        raise ValueError("not SSSS_SEN_EMO_LVL")
    if m.group(3) not in CREMAD_EMOTIONS:
        raise ValueError(f"unknown emotion code {m.group(3)}")
    spk = m.group(1)
    return CREMAD_EMOTIONS[m.group(3)], f"cremad:{spk}", (sexes or {}).get(spk, "?")


TESS_EMOTIONS = {"ps": "surprise", "pleasant_surprise": "surprise", "pleasant_surprised": "surprise"}


def parse_tess(path: Path) -> tuple[str, str, str]:
    parts = path.stem.split("_")
    if len(parts) < 3 or parts[0].upper() not in ("OAF", "YAF"):
        raise ValueError("not OAF|YAF_word_emotion")
    emo = "_".join(parts[2:]).lower()
    lab = TESS_EMOTIONS.get(emo) or _label(emo)
    if lab is None:
        raise ValueError(f"unknown emotion {emo!r}")
    return lab, f"tess:{parts[0].upper()}", "F"  # both TESS speakers are women


SAVEE_PREFIX = {"a": "angry", "d": "disgust", "f": "fear", "h": "happy", "n": "neutral", "sa": "sad", "su": "surprise"}
SAVEE_SPEAKERS = ("DC", "JE", "JK", "KL")
SAVEE_RE = re.compile(r"^(?:(DC|JE|JK|KL)_)?(sa|su|a|d|f|h|n)(\d{2})$")


def parse_savee(path: Path) -> tuple[str, str, str]:
    m = SAVEE_RE.match(path.stem)
    if not m:
        raise ValueError("not [SPK_]<a|d|f|h|n|sa|su>NN")
    spk = m.group(1) or (path.parent.name.upper() if path.parent.name.upper() in SAVEE_SPEAKERS else None)
    if spk is None:
        raise ValueError("speaker neither in the name nor the folder (DC/JE/JK/KL)")
    return SAVEE_PREFIX[m.group(2)], f"savee:{spk}", "M"  # all four SAVEE speakers are men


EMODB_EMOTIONS = {"W": "angry", "L": "boredom", "E": "disgust", "A": "fear", "F": "happy", "T": "sad", "N": "neutral"}
EMODB_SEX = {
    "03": "M",
    "10": "M",
    "11": "M",
    "12": "M",
    "15": "M",
    "08": "F",
    "09": "F",
    "13": "F",
    "14": "F",
    "16": "F",
}
EMODB_RE = re.compile(r"^(\d{2})([ab]\d{2})([WLEAFTN])[a-z]$")


def parse_emodb(path: Path) -> tuple[str, str, str]:
    m = EMODB_RE.match(path.stem)
    if not m:
        raise ValueError("not SSTTTEv (e.g. 03a01Fa)")
    # boredom folds onto neutral through labels.normalise: the one place that decides it
    return normalise(EMODB_EMOTIONS[m.group(3)]), f"emodb:{m.group(1)}", EMODB_SEX.get(m.group(1), "?")


URDU_EMOTIONS = {"A": "angry", "H": "happy", "N": "neutral", "S": "sad"}
URDU_RE = re.compile(r"^S([MF])(\d+)_F(\d+)_([AHNS])(\d+)$")


def parse_urdu(path: Path) -> tuple[str, str, str]:
    """URDU-Dataset (Latif et al. 2018): `S<G><X>_F<NN>_<E><YY>`, G = speaker sex, X = speaker id."""
    m = URDU_RE.match(path.stem)
    if not m:
        raise ValueError("not S<M|F><id>_F<NN>_<A|H|N|S><YY>")
    return URDU_EMOTIONS[m.group(4)], f"urdu:{m.group(1)}{int(m.group(2))}", m.group(1)


# ASED v1 (Retta et al. 2022): the letter is the emotion, the digit its folder (n1 = 01Neutral ... a5 = 05Angry).
ASED_EMOTIONS = {"n": ("neutral", "1"), "f": ("fear", "2"), "h": ("happy", "3"), "s": ("sad", "4"), "a": ("angry", "5")}
ASED_RE = re.compile(r"^([nfhsa])([1-5])-(\d{2})-(\d{2})-(0[12])-(\d{2})$", re.IGNORECASE)
ASED_SEX = {"01": "F", "02": "M"}


def parse_ased(path: Path) -> tuple[str, str, str]:
    """ASED: `<e><f>-<sentence>-<repetition>-<gender>-<speaker>`; the speaker is its NUMBER alone.

    The sex returned is this file's gender code; `load_corpus` replaces it with the speaker's majority code, because
    five speaker numbers (09, 15, 21, 23, 25) have one clip under the other code (a slip in the names, not a second
    person: grouping by number keeps each voice on one side of a split). One file is `S4-...` (upper case)."""
    m = ASED_RE.match(path.stem)
    if not m:
        raise ValueError("not <n|f|h|s|a><1-5>-SS-RR-GG-PP (e.g. a5-03-01-02-50)")
    label, folder = ASED_EMOTIONS[m.group(1).lower()]
    if m.group(2) != folder:
        raise ValueError(f"emotion {m.group(1)!r} with folder digit {m.group(2)} (expected {folder})")
    in_folder = re.match(r"^0([1-5])", path.parent.name)
    if in_folder and in_folder.group(1) != folder:
        raise ValueError(f"a {label} clip in folder {path.parent.name}: the name and the folder disagree")
    return label, f"ased:{m.group(6)}", ASED_SEX[m.group(5)]


def majority_sex(items: list[Utterance]) -> list[Utterance]:
    """Each speaker's clips under the sex most of them carry (ASED's names slip for five speakers)."""
    votes: dict[str, Counter[str]] = {}
    for u in items:
        votes.setdefault(u.speaker, Counter())[u.sex] += 1
    sex = {spk: c.most_common(1)[0][0] for spk, c in votes.items()}
    return [replace(u, sex=sex[u.speaker]) for u in items]


def _cremad_sexes(root: Path) -> dict[str, str]:
    """CREMA-D keeps sex in VideoDemographics.csv (ActorID,Age,Sex,...); used when it sits in or above root."""
    for cand in (root / "VideoDemographics.csv", root.parent / "VideoDemographics.csv"):
        if cand.is_file():
            with open(cand, newline="", encoding="utf-8") as f:
                return {r["ActorID"]: ("M" if r["Sex"].lower().startswith("m") else "F") for r in csv.DictReader(f)}
    return {}


def load_corpus(kind: str, root: Path) -> Corpus:
    """Every audio file (.wav, .flac) under `root` parsed with `kind`'s convention."""
    root = Path(root)
    if kind not in CORPORA:
        raise DatasetError(f"unknown corpus kind {kind!r}; known: {', '.join(CORPORA)}")
    if not root.is_dir():
        raise DatasetError(f"{root}: {kind} folder not found")
    files = sorted(p for p in root.rglob("*") if p.is_file())
    sexes = _cremad_sexes(root) if kind == "cremad" else None
    out = Corpus()
    for p in files:
        if p.suffix.lower() not in AUDIO_EXTS:
            if p.suffix.lower() not in (".csv", ".txt", ".md"):
                out.rejected.append((str(p), "not a .wav or .flac file"))
            continue
        try:
            if kind == "ravdess":
                lab, spk, sex = parse_ravdess(p)
            elif kind == "cremad":
                lab, spk, sex = parse_cremad(p, sexes)
            elif kind == "tess":
                lab, spk, sex = parse_tess(p)
            elif kind == "savee":
                lab, spk, sex = parse_savee(p)
            elif kind == "urdu":
                lab, spk, sex = parse_urdu(p)
            elif kind == "ased":
                lab, spk, sex = parse_ased(p)
            else:
                lab, spk, sex = parse_emodb(p)
        except ValueError as exc:
            out.rejected.append((str(p), str(exc)))
            continue
        if lab not in SPEECH_LABELS:
            out.rejected.append((str(p), f"label {lab!r} not in SPEECH_LABELS"))
            continue
        out.items.append(Utterance(p, lab, spk, sex, kind))
    if kind == "ased":
        out.items = majority_sex(out.items)
    if not out.items:
        raise DatasetError(f"{root}: no {kind} clips found ({len(out.rejected)} files with unparsable names)")
    return out


def parse_source(spec: str) -> tuple[str, Path]:
    """`kind=path` (e.g. `ravdess=/data/ravdess`); a bare path means RAVDESS."""
    if "=" in spec:
        kind, path = spec.split("=", 1)
        return kind.strip().lower(), Path(path)
    return "ravdess", Path(spec)


def load_sources(specs: list[str]) -> Corpus:
    out = Corpus()
    for s in specs:
        out.extend(load_corpus(*parse_source(s)))
    return out


# ---------------------------------------------------------------- splits


def grouped_folds(speakers: list[str], k: int) -> list[np.ndarray]:
    """k folds of whole speakers (deterministic): within each corpus (the id's prefix, "ravdess:" ...), fold i holds
    that corpus's sorted speakers with index % k == i.

    Dealing each corpus out on its own gives every fold its share of every corpus, and keeps a corpus's folds the
    same whichever corpora are merged with it: RAVDESS actors 01-20 with k=5 make the same 5 folds of 4 actors
    (alternating male/female) alone or beside ASED, so CV figures stay comparable. If that would leave a fold
    empty (only corpora with fewer than k speakers), all speakers are dealt out together instead.
    """
    uniq = sorted(set(speakers))
    if len(uniq) < k:
        raise DatasetError(f"{len(uniq)} speakers cannot make {k} speaker-independent folds")
    by_corpus: dict[str, list[str]] = {}
    for s in uniq:
        by_corpus.setdefault(s.split(":", 1)[0] if ":" in s else "", []).append(s)
    fold_of = {s: i % k for group in by_corpus.values() for i, s in enumerate(group)}
    if len(set(fold_of.values())) < k:
        fold_of = {s: i % k for i, s in enumerate(uniq)}
    spk = np.asarray(speakers)
    return [np.flatnonzero(np.vectorize(fold_of.get)(spk) == i) for i in range(k)]


def make_split(protocol: str, speakers: list[str], k: int = 5) -> list[np.ndarray]:
    """Validation folds. Only speaker-grouped protocols are allowed for speech corpora."""
    if protocol != "speaker":
        raise DatasetError(
            f"split protocol {protocol!r} refused: speech corpora repeat the same sentences by the same voices, "
            "so a random clip split measures speaker memory, not emotion; use whole speakers held out ('speaker')"
        )
    return grouped_folds(speakers, k)


# ---------------------------------------------------------------- audio and windows


def _read_flac(path: Path) -> tuple[int, np.ndarray]:
    """FLAC samples as int16 (what the WAVs they were made from hold), through soundfile (the `train` extra)."""
    try:
        import soundfile
    except ImportError:
        raise DatasetError(
            f"{path}: reading FLAC needs the soundfile package (pip install -e '.[train]'), or convert the corpus "
            "with `sox in.flac out.wav`"
        ) from None
    try:
        a, sr = soundfile.read(str(path), dtype="int16", always_2d=False)
    except (RuntimeError, OSError) as exc:  # soundfile.LibsndfileError is a RuntimeError
        raise DatasetError(f"{path}: unreadable FLAC ({exc})") from None
    return int(sr), a


def read_wav(path: Path) -> np.ndarray:
    """Mono float32 in [-1, 1] at SAMPLE_RATE (down-mixed and resampled if needed); WAV or FLAC."""
    path = Path(path)
    if path.suffix.lower() == ".flac":
        sr, a = _read_flac(path)
    else:
        try:
            sr, a = wavfile.read(str(path))
        except (ValueError, OSError) as exc:
            raise DatasetError(f"{path}: unreadable WAV ({exc})") from None
    if a.dtype == np.int16:
        a = pcm16_to_float(a)
    elif a.dtype == np.int32:
        a = a.astype(np.float32) / 2**31
    elif a.dtype == np.uint8:
        a = (a.astype(np.float32) - 128) / 128
    a = a.astype(np.float32)
    if a.ndim == 2:
        a = a.mean(axis=1)
    if sr != SAMPLE_RATE:
        g = np.gcd(sr, SAMPLE_RATE)
        a = resample_poly(a, SAMPLE_RATE // g, sr // g).astype(np.float32)
    return a


def default_gate() -> Gate:
    """The daemon's voice gate with its default settings (`speech.vad_*`)."""
    from edge_daemon.config import SpeechConfig

    return Gate.from_config(SpeechConfig())


def pad_to(audio: np.ndarray, n: int) -> np.ndarray:
    """Clips shorter than one window are centred in silence, as the daemon's `clip_windows` does."""
    if len(audio) >= n:
        return audio
    pad = n - len(audio)
    return np.pad(audio, (pad // 2, pad - pad // 2))


def clip_windows(audio: np.ndarray, feats: SpeechFeatures, hop_s: float | None = None) -> list[np.ndarray]:
    """The windows the daemon classifies for a whole clip (its own function, with its default gate and hop)."""
    from edge_daemon.audio.emotion import clip_windows as daemon_clip_windows
    from edge_daemon.config import SpeechConfig

    return daemon_clip_windows(audio, feats, default_gate(), SpeechConfig().hop_s if hop_s is None else hop_s)


def random_gated_crops(
    audio: np.ndarray,
    feats: SpeechFeatures,
    n_crops: int,
    rng: np.random.Generator,
    tries: int = 6,
    scores: np.ndarray | None = None,
) -> Iterator[np.ndarray]:
    """Random `window_s` crops that pass the gate (training windows, as the daemon would select them).

    `scores`: the gate's chunk scores of the clip this audio was made from (a speed variant is stretched onto
    them), so that each clip is scored once rather than once per augmented copy."""
    n = feats.window_samples
    audio = pad_to(audio, n)
    gate = default_gate()
    if scores is None:
        scores = gate.chunk_scores(audio)  # the clip as one stream, as the daemon hears its microphone
    stretch = len(scores) * CHUNK / max(1, len(audio))  # 1.0 unless this is a speed variant of the scored clip
    got = 0
    for _ in range(n_crops * tries):
        s = int(rng.integers(0, len(audio) - n + 1))
        w = audio[s : s + n]
        if gate.enough(gate.window_scores(scores, int(s * stretch), int(n * stretch))):
            got += 1
            yield w
            if got >= n_crops:
                return
    if got == 0:  # same fallback as the daemon's evaluation: the most speech-like window
        yield clip_windows(audio, feats)[0]


def room_response(rng: np.random.Generator, sr: int = SAMPLE_RATE) -> np.ndarray:
    """A synthetic room impulse response: the direct sound, then exponentially decaying noise (reverberation time
    RT60 0.15-0.8 s) at a direct-to-reverberant ratio of -3 to +12 dB, a living room to a hall (no measured responses
    are available here, and decaying noise is the standard stand-in for a diffuse late tail)."""
    rt60 = float(rng.uniform(0.15, 0.8))
    t = np.arange(int(rt60 * sr)) / sr
    tail = rng.standard_normal(len(t)) * np.exp(-6.9 * t / rt60)  # -60 dB at rt60
    tail[: int(0.002 * sr)] = 0.0  # the first reflections arrive after the direct sound
    drr_db = float(rng.uniform(-3, 12))
    tail *= np.sqrt(1.0 / (np.sum(tail**2) * 10 ** (drr_db / 10)))
    tail[0] = 1.0
    return tail


def channel_filter(audio: np.ndarray, rng: np.random.Generator, sr: int = SAMPLE_RATE) -> np.ndarray:
    """A microphone and its room: a random high-pass (80-400 Hz, small and far microphones lose the low end) and/or
    low-pass (3-7 kHz, cheap capsules, band-limited links), and a room response; at least one of them."""
    y = audio.astype(np.float64)
    hp, lp, room = (rng.random(3) < (0.5, 0.5, 0.7)).tolist()
    if not (hp or lp or room):
        room = True
    if hp:
        y = sosfilt(butter(2, float(rng.uniform(80, 400)), "highpass", fs=sr, output="sos"), y)
    if lp:
        y = sosfilt(butter(4, float(rng.uniform(3000, 7000)), "lowpass", fs=sr, output="sos"), y)
    if room:
        y = fftconvolve(y, room_response(rng, sr))[: len(y)]
    rms_in = np.sqrt(np.mean(audio.astype(np.float64) ** 2)) + 1e-12
    y *= rms_in / (np.sqrt(np.mean(y**2)) + 1e-12)  # same level: the gate and the normaliser see the channel only
    return np.clip(y, -1, 1).astype(np.float32)


def augment_audio(audio: np.ndarray, kind: str, rng: np.random.Generator) -> np.ndarray:
    """Waveform augmentation: speed/pitch by resampling (±10 %), additive noise at 10-30 dB SNR, a random channel
    (`channel_filter`; same length, so the clip's gate scores still line up)."""
    if kind == "channel":
        return channel_filter(audio, rng)
    if kind == "orig":
        return audio
    if kind in ("slow", "fast"):
        up, down = (10, 9) if kind == "slow" else (9, 10)  # slow: 10/9 longer, lower pitch
        return resample_poly(audio, up, down).astype(np.float32)
    if kind == "noise":
        p = float(np.mean(audio.astype(np.float64) ** 2)) + 1e-12
        snr_db = float(rng.uniform(10, 30))
        noise = rng.standard_normal(len(audio)) * np.sqrt(p / 10 ** (snr_db / 10))
        return np.clip(audio + noise, -1, 1).astype(np.float32)
    raise ValueError(kind)
