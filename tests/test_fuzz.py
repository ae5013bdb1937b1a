"""Bad input never crashes: configs, model metadata, media files, frames and audio windows, fuzzed with hypothesis.

The contract under test is the daemon's: whatever a user can hand it ends either in a result or in a
`UserError` (one line, exit code 2), never in another exception or a traceback. Example counts are small so
the whole file stays well under a minute on a loaded two-core machine; hypothesis keeps failing examples in its
database and replays them first.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import wave
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from edge_daemon.audio.emotion import SpeechEmotionModel
from edge_daemon.audio.features import SAMPLE_RATE
from edge_daemon.capture.files import probe_video, read_wav
from edge_daemon.config import Config, iter_fields, load_config
from edge_daemon.errors import UserError
from edge_daemon.vision.detector import Face, make_detector
from edge_daemon.vision.emotion import FaceEmotionModel

from .conftest import CLIP_AUDIO, CLIP_VIDEO, MODELS, ROOT, run_cli

FAST = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
FEW = settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SHIPPED_CONFIG = yaml.safe_load((ROOT / "config.yaml").read_text())


@pytest.fixture(scope="module")
def scratch() -> Iterator[Path]:
    """One folder per module: hypothesis runs many examples inside one test call, so tmp_path would be shared anyway."""
    with tempfile.TemporaryDirectory(prefix="emotion-edge-fuzz-") as d:
        yield Path(d)


def outcome(fn: Callable[[], Any]) -> Any:
    """Run fn; a UserError is an accepted outcome (returned), anything else propagates and fails the test."""
    try:
        return fn()
    except UserError as exc:
        assert str(exc).strip() and "\n" not in str(exc).strip(), f"a UserError is one line: {exc!r}"
        return exc


# =========================================================================== config

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.just(10**400),  # more digits than a float holds
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=30),
    st.sampled_from(["", "0", "1e999", "-.inf", ".nan", "0x1F", "yes", "~", "2026-11-23", "é🙂", "a" * 300]),
)
values = st.recursive(
    scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12,
)  # fmt: skip
LEAF_PATHS = [path for path, _, _ in iter_fields()]
SECTIONS = sorted({p.rsplit(".", 1)[0] for p in LEAF_PATHS if "." in p})


def set_path(data: dict[str, Any], path: str, value: Any) -> None:
    *parents, leaf = path.split(".")
    node = data
    for key in parents:
        if not isinstance(node.get(key), dict):
            node[key] = {}
        node = node[key]
    node[leaf] = value


@st.composite
def mutated_configs(draw: st.DrawFn) -> str:
    """The shipped config.yaml, its values replaced, keys added or deleted, then maybe lines duplicated or cut."""
    data = json.loads(json.dumps(SHIPPED_CONFIG))
    data["models"]["dir"] = str(MODELS)
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["value", "value", "new key", "delete", "section"]))
        if op == "value":
            set_path(data, draw(st.sampled_from(LEAF_PATHS)), draw(values))
        elif op == "new key":
            where = draw(st.sampled_from(["", *SECTIONS]))
            set_path(data, f"{where}.{draw(st.text(min_size=1, max_size=12))}".lstrip("."), draw(values))
        elif op == "delete":
            *parents, leaf = draw(st.sampled_from(LEAF_PATHS)).split(".")
            node = data
            for key in parents:
                node = node.get(key) if isinstance(node.get(key), dict) else {}
            node.pop(leaf, None)
        else:
            set_path(data, draw(st.sampled_from(SECTIONS)), draw(values))
    text = yaml.safe_dump(data, allow_unicode=draw(st.booleans()), sort_keys=False)
    lines = text.splitlines()
    if lines and draw(st.booleans()):
        i = draw(st.integers(0, len(lines) - 1))
        how = draw(st.sampled_from(["duplicate", "truncate", "indent"]))
        if how == "duplicate":  # duplicate keys
            lines.insert(i, lines[i])
        elif how == "truncate":
            lines = lines[:i] + [lines[i][: len(lines[i]) // 2]]
        else:
            lines[i] = "  " + lines[i]
    return "\n".join(lines) + "\n"


YAML_TOKENS = [
    "camera", "mqtt", "tls", "fps", "port", "device_id", "models", "dir", "source", ":", ": ", "\n", "\n  ", "  ",
    "- ", "[", "]", "{", "}", ",", "? ", "&a ", "*a", "<<: ", "!!binary ", "!!python/object:os.system ", "!!float ",
    "!!str ", "!!set ", "|", ">", "#", "'", '"', "---\n", "...\n", "%YAML 1.1\n", "~", "null", "true", "1",
    "1e999", ".nan", "-.inf", "0x10", "9" * 40, "é", "🙂", "\t", "\x00", "\ufeff",
]  # fmt: skip
yamlish = st.lists(st.sampled_from(YAML_TOKENS) | st.text(max_size=6), max_size=40).map("".join)


def check_config_text(scratch: Path, text: str | bytes) -> None:
    path = scratch / "fuzz.yaml"
    path.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8", "surrogatepass"))
    got = outcome(lambda: load_config(path))
    if isinstance(got, Config):
        assert_within_schema(got)


def assert_within_schema(config: Config) -> None:
    """A Config that loaded honours every bound the schema declares (NaN is in no range)."""
    for path, _, f in iter_fields():
        value: Any = config
        for key in path.split("."):
            value = getattr(value, key)
        lo, hi = f.metadata["lo"], f.metadata["hi"]
        if isinstance(value, (int, float)) and not isinstance(value, bool) and lo is not None:
            assert lo <= value <= hi, f"{path} = {value!r} loaded, outside [{lo}, {hi}]"


@FAST
@given(text=yamlish)
@example(text="[a, b]: 1\n")  # a sequence as a key
@example(text="camera:\n  ? {x: 1}\n  : 2\n")  # a mapping as a key
@example(text="camera:\n  fps: " + "9" * 400 + "\n")  # an integer too large for a float
@example(text="camera:\n  width: " + "9" * 5000 + "\n")  # more digits than Python converts by default
@example(text="camera: " + "[" * 2000 + "]" * 2000 + "\n")  # deep nesting
def test_any_yamlish_text_as_config_loads_or_raises_user_error(scratch: Path, text: str) -> None:
    check_config_text(scratch, text)


@FAST
@given(text=mutated_configs())
@example(text="camera:\n  fps: .nan\n")
def test_mutated_shipped_config_loads_within_schema_or_raises_user_error(scratch: Path, text: str) -> None:
    check_config_text(scratch, text)


@FEW
@given(data=st.binary(max_size=300))
@example(data=b"\xff\xfe\x00c\x00a")  # UTF-16 BOM
@example(data=b"camera:\n  source: \xe9\n")  # Latin-1, not UTF-8
def test_arbitrary_bytes_as_config_load_or_raise_user_error(scratch: Path, data: bytes) -> None:
    check_config_text(scratch, data)


@pytest.mark.parametrize("key", ["mqtt.host", "mqtt.username", "microphone.device", "mqtt.tls.ca_file"])
def test_an_empty_value_means_null_for_a_nullable_key(scratch: Path, key: str) -> None:
    """`host:` with nothing after it is YAML's null, the same as `host: null`."""
    *sections, leaf = key.split(".")
    text = "".join(f"{'  ' * i}{s}:\n" for i, s in enumerate(sections)) + f"{'  ' * len(sections)}{leaf}:\n"
    path = scratch / "empty.yaml"
    path.write_text(text)
    config: Any = load_config(path)
    for part in key.split("."):
        config = getattr(config, part)
    assert config is None


CLI_CASES = {
    "binary": b"\x00\xff\xfe garbage \x80",
    "complex_key": b"[a, b]: 1\n",
    "huge_number": b"camera:\n  fps: " + b"9" * 400 + b"\n",
    "unknown_key_unicode": "camera:\n  f\u00e9s: 5\n".encode(),
    "duplicate_key": b"device_id: a\ndevice_id: b\n",
}


@pytest.mark.parametrize("name", sorted(CLI_CASES))
def test_check_on_a_fuzzed_config_exits_0_or_2_without_a_traceback(tmp_path: Path, name: str) -> None:
    cfg = tmp_path / "config.yaml"
    cfg.write_bytes(CLI_CASES[name])
    proc = run_cli("--config", str(cfg), "check", timeout=60)
    assert proc.returncode in (0, 2), f"exit {proc.returncode}\n{proc.stderr}"
    assert "Traceback" not in proc.stderr, proc.stderr


# =========================================================================== model metadata

META_FILES = {
    "face_detector": "face_detection_short_range.json",
    "face_emotion": "face_emotion.json",
    "speech_emotion": "speech_emotion.json",
}
CONSTRUCTORS: dict[str, Callable[[Path], Any]] = {
    "face_detector": lambda p: make_detector("blazeface", p),
    "face_emotion": FaceEmotionModel,
    "speech_emotion": SpeechEmotionModel,
}
# Bounded numbers only where sizes are concerned: a metadata file may say anything, but a test must not make the
# daemon allocate gigabytes on a shared machine (see the report on BlazeFace anchors).
meta_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-3, 300),
    st.sampled_from([0, -1, 1, 2, 8, 48, 128, 896, 10**20]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.sampled_from(["int8", "float32", "gray", "rgb", "weighted", "happy", "calm", "neutral", "angry", ""]),
)
meta_values = st.recursive(
    meta_scalars, lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=10,
)  # fmt: skip


def leaf_paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out: list[tuple[Any, ...]] = [prefix] if prefix else []
    if isinstance(node, dict):
        for k, v in node.items():
            out += leaf_paths(v, (*prefix, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += leaf_paths(v, (*prefix, i))
    return out


@st.composite
def mutated_meta(draw: st.DrawFn, original: dict[str, Any]) -> bytes:
    """A shipped metadata file with fields dropped, retyped, reshaped or relabelled; sometimes not JSON at all."""
    if draw(st.integers(0, 9)) == 0:
        text = json.dumps(original)
        cut = draw(st.integers(0, len(text)))
        return (text[:cut] + draw(st.text(max_size=5))).encode() + draw(st.binary(max_size=4))
    data = json.loads(json.dumps(original))
    # Keep the fields that make the pair loadable at all (sha256, model_file) unless a mutation picks them.
    for _ in range(draw(st.integers(1, 3))):
        paths = leaf_paths(data)
        if not paths:
            break
        path = draw(st.sampled_from(paths))
        parent: Any = data
        for key in path[:-1]:
            parent = parent[key]
        op = draw(st.sampled_from(["retype", "retype", "drop", "shape", "labels"]))
        if op == "drop":
            del parent[path[-1]]
        elif op == "shape" and isinstance(parent[path[-1]], list):
            parent[path[-1]] = draw(st.lists(st.integers(-2, 300), max_size=5))
        elif op == "labels" and "labels" in data:
            data["labels"] = draw(st.lists(meta_scalars, max_size=9))
        else:
            parent[path[-1]] = draw(meta_values)
    return json.dumps(data, allow_nan=True).encode()


@pytest.fixture(scope="module")
def model_copy(scratch: Path) -> Path:
    """The models, copied, so that a mutated `.json` sits beside its real `.tflite`."""
    folder = scratch / "models"
    folder.mkdir()
    for f in MODELS.iterdir():
        if f.suffix in (".json", ".tflite"):
            shutil.copy(f, folder / f.name)
    return folder


def check_meta(folder: Path, kind: str, content: bytes) -> None:
    path = folder / META_FILES[kind]
    original = (MODELS / META_FILES[kind]).read_bytes()
    path.write_bytes(content)
    try:
        outcome(lambda: CONSTRUCTORS[kind](path))
    finally:
        path.write_bytes(original)


def original_meta(kind: str) -> dict[str, Any]:
    return json.loads((MODELS / META_FILES[kind]).read_text())


@FEW
@given(data=st.data())
def test_mutated_face_detector_metadata_loads_or_raises_user_error(model_copy: Path, data: st.DataObject) -> None:
    check_meta(model_copy, "face_detector", data.draw(mutated_meta(original_meta("face_detector"))))


@FEW
@given(data=st.data())
def test_mutated_face_emotion_metadata_loads_or_raises_user_error(model_copy: Path, data: st.DataObject) -> None:
    check_meta(model_copy, "face_emotion", data.draw(mutated_meta(original_meta("face_emotion"))))


@FEW
@given(data=st.data())
def test_mutated_speech_emotion_metadata_loads_or_raises_user_error(model_copy: Path, data: st.DataObject) -> None:
    check_meta(model_copy, "speech_emotion", data.draw(mutated_meta(original_meta("speech_emotion"))))


def with_preprocess(kind: str, *path_and_value: Any) -> bytes:
    data = original_meta(kind)
    *keys, value = path_and_value
    node = data["preprocess"]
    for k in keys[:-1]:
        node = node[k]
    node[keys[-1]] = value
    return json.dumps(data, allow_nan=True).encode()


# Hand-picked mutations each of which once ended in something other than a UserError.
META_CASES = {
    "face size []": ("face_emotion", "size", []),
    "face size [inf, 48]": ("face_emotion", "size", [math.inf, 48]),
    "speech window_s '2'": ("speech_emotion", "window_s", "2"),
    "speech winstep 0": ("speech_emotion", "winstep", 0),
    "speech numcep null": ("speech_emotion", "numcep", None),
    "speech norm_prior []": ("speech_emotion", "norm_prior", []),
    "speech norm_prior [1e300] * 120": ("speech_emotion", "norm_prior", [1e300] * 120),
    "speech norm_prior {}": ("speech_emotion", "norm_prior", {}),
    "speech norm_memory 2.5": ("speech_emotion", "norm_memory", 2.5),
    "speech norm_memory 10**400": ("speech_emotion", "norm_memory", 10**400),  # once loaded, then failed per window
    "speech norm_prior [true] * 120": ("speech_emotion", "norm_prior", [True] * 120),
    "speech norm_prior ['1'] * 120": ("speech_emotion", "norm_prior", ["1"] * 120),
    "speech norm_prior_weight 0": ("speech_emotion", "norm_prior_weight", 0),
    "speech pitch 'yes'": ("speech_emotion", "pitch", "yes"),
    "speech pitch true": ("speech_emotion", "pitch", True),  # columns the model's input and prior do not have
    "detector input_size [128]": ("face_detector", "input", "input_size", [128]),
    "detector input_range [1.0]": ("face_detector", "input", "input_range", [1.0]),
    "detector strides [0, 16, 16, 16]": ("face_detector", "anchors", "strides", [0, 16, 16, 16]),
    "detector strides [-8, 16, 16, 16]": ("face_detector", "anchors", "strides", [-8, 16, 16, 16]),
    "detector aspect_ratios [-1.0]": ("face_detector", "anchors", "aspect_ratios", [-1.0]),
}


@pytest.mark.parametrize("case", list(META_CASES))
def test_invalid_preprocess_field_raises_user_error(model_copy: Path, case: str) -> None:
    kind, *path_and_value = META_CASES[case]
    path = model_copy / META_FILES[kind]
    original = path.read_bytes()
    path.write_bytes(with_preprocess(kind, *path_and_value))
    try:
        with pytest.raises(UserError):
            CONSTRUCTORS[kind](path)
    finally:
        path.write_bytes(original)


# =========================================================================== files the daemon reads


def wav_excerpt(wav: bytes, data_bytes: int) -> bytes:
    """The clip's own 44-byte header with its sizes cut down to the first `data_bytes` of samples: a short,
    valid copy, so that failing examples stay readable."""
    assert wav[36:40] == b"data", "the fixture has a canonical 44-byte header"
    header = bytearray(wav[:44])
    struct.pack_into("<I", header, 4, 36 + data_bytes)
    struct.pack_into("<I", header, 40, data_bytes)
    return bytes(header) + wav[44 : 44 + data_bytes]


CLIP_WAV_BYTES = wav_excerpt(CLIP_AUDIO.read_bytes(), 6400)  # 0.2 s
CLIP_MP4_BYTES = CLIP_VIDEO.read_bytes()


@st.composite
def corrupted(draw: st.DrawFn, original: bytes, header: int) -> bytes:
    """Truncated, overwritten (header-heavy), spliced with junk, or entirely random."""
    how = draw(st.sampled_from(["truncate", "flip", "flip", "splice", "random"]))
    if how == "random":
        return draw(st.binary(max_size=2000))
    data = bytearray(original)
    if how == "truncate":
        return bytes(data[: draw(st.integers(0, len(data)))])
    if how == "splice":
        at = draw(st.integers(0, len(data)))
        return bytes(data[:at]) + draw(st.binary(min_size=1, max_size=64)) + bytes(data[at:])
    for _ in range(draw(st.integers(1, 8))):
        at = draw(st.integers(0, header - 1) | st.integers(0, len(data) - 1))
        data[at] = draw(st.integers(0, 255))
    return bytes(data)


def sane_rate(wav: bytes) -> bool:
    """A canonical 44-byte header whose sample rate (bytes 24-28) is at most 192 kHz; see the absurd-rate test."""
    return len(wav) < 28 or wav[:4] != b"RIFF" or struct.unpack_from("<I", wav, 24)[0] <= 192_000


FMT_CHUNK_PAST_THE_END = CLIP_WAV_BYTES[:16] + (0xE0000010).to_bytes(4, "little") + CLIP_WAV_BYTES[20:]


@FAST
@given(data=corrupted(CLIP_WAV_BYTES, header=44).filter(sane_rate))
@example(data=FMT_CHUNK_PAST_THE_END)  # a 'fmt ' chunk that claims 3.7 GB: RuntimeError from the wave module
@example(data=CLIP_WAV_BYTES[:44])  # a header and no samples
def test_corrupted_wav_reads_as_int16_mono_or_raises_user_error(scratch: Path, data: bytes) -> None:
    path = scratch / "fuzz.wav"
    path.write_bytes(data)
    got = outcome(lambda: read_wav(path))
    if not isinstance(got, UserError):
        assert got.dtype == np.int16 and got.ndim == 1


def test_wav_claiming_an_absurd_sample_rate_raises_user_error_without_exhausting_memory(tmp_path: Path) -> None:
    """100,000,007 Hz in the header: refuse it (UserError) or resample it, within a 4 GiB address space and 30 s."""
    path = tmp_path / "absurd.wav"
    path.write_bytes(wav_bytes(np.zeros((1000, 1), np.int16), rate=100_000_007, width=2))
    code = (
        "import resource, sys\n"
        "resource.setrlimit(resource.RLIMIT_AS, (4 << 30, resource.RLIM_INFINITY))\n"
        "from edge_daemon.capture.files import read_wav\n"
        "from edge_daemon.errors import UserError\n"
        "try:\n"
        "    read_wav(sys.argv[1])\n"
        "except UserError:\n"
        "    pass\n"
        "print('done')\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=30, cwd=ROOT,
        env={**os.environ, "OPENBLAS_NUM_THREADS": "1"},
    )  # fmt: skip
    assert proc.returncode == 0 and "done" in proc.stdout, proc.stderr[-2000:]


@FEW
@given(data=corrupted(CLIP_MP4_BYTES, header=2048))
def test_corrupted_video_probes_to_a_frame_rate_or_raises_user_error(scratch: Path, data: bytes) -> None:
    path = scratch / "fuzz.mp4"
    path.write_bytes(data)
    got = outcome(lambda: probe_video(path))
    if not isinstance(got, UserError):
        assert isinstance(got, float) and got > 0 and math.isfinite(got)


def wav_bytes(samples: np.ndarray, rate: int, width: int) -> bytes:
    """A canonical PCM wav (frames × channels) written by hand, so any rate fits in the header."""
    channels = samples.shape[1]
    body = samples.astype({1: "<u1", 2: "<i2", 4: "<i4"}[width]).tobytes()
    fmt = struct.pack("<HHIIHH", 1, channels, rate, (rate * channels * width) & 0xFFFFFFFF, channels * width, width * 8)
    return (
        b"RIFF" + struct.pack("<I", 36 + len(body)) + b"WAVE" + b"fmt " + struct.pack("<I", 16) + fmt
        + b"data" + struct.pack("<I", len(body)) + body
    )  # fmt: skip


@FEW
@given(
    rate=st.sampled_from([8000, 11025, 16000, 22050, 44100, 48000]),
    channels=st.integers(1, 6),
    width=st.sampled_from([1, 2, 4]),
    frames=st.integers(0, 30000),
)
@example(rate=44100, channels=2, width=2, frames=44100)
@example(rate=8000, channels=6, width=1, frames=1)
def test_wav_of_any_common_rate_channels_and_width_becomes_16khz_mono_int16(
    scratch: Path, rate: int, channels: int, width: int, frames: int
) -> None:
    # A 440 Hz tone at half of full scale on every channel: down-mixing and rescaling must keep that level.
    t = np.arange(frames) / rate
    tone = 0.5 * np.sin(2 * np.pi * 440 * t)
    full = {1: 127, 2: 32767, 4: 2**31 - 1}[width]
    pcm = np.round(tone * full) + (128 if width == 1 else 0)
    path = scratch / "format.wav"
    with wave.open(str(path), "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(width)
        w.setframerate(rate)
        w.writeframes(np.repeat(pcm[:, None], channels, axis=1).astype({1: "<u1", 2: "<i2", 4: "<i4"}[width]).tobytes())
    x = read_wav(path)
    assert x.dtype == np.int16 and x.ndim == 1
    assert len(x) == math.ceil(frames * SAMPLE_RATE / rate)
    if frames >= rate // 10:  # at least 100 ms: the level is measurable away from the resampler's edges
        middle = x[len(x) // 4 : 3 * len(x) // 4].astype(np.float64)
        assert np.max(np.abs(middle)) == pytest.approx(0.5 * 32767, rel=0.05)


# =========================================================================== frames


@pytest.fixture(scope="module")
def detector() -> Any:
    return make_detector("blazeface", MODELS / "face_detection_short_range.json")


@pytest.fixture(scope="module")
def face_model() -> FaceEmotionModel:
    return FaceEmotionModel(MODELS / "face_emotion.json")


ODD_SHAPES = [
    (1, 1),
    (3, 1000),
    (0, 0),
    (0, 5, 3),
    (7, 0, 3),
    (1, 1, 3),
    (5, 7, 1),
    (9, 4, 4),
    (2, 2, 1),
    (1080, 1920, 3),
]
frame_shapes = st.sampled_from(ODD_SHAPES) | st.tuples(
    st.integers(0, 700), st.integers(0, 700), st.sampled_from([None, 1, 3, 4])
).map(lambda s: s[:2] if s[2] is None else s)


@FEW
@given(shape=frame_shapes, seed=st.integers(0, 2**32 - 1), fill=st.sampled_from(["noise", "zeros", "255"]))
def test_detector_returns_a_list_of_faces_for_any_uint8_frame(
    detector: Any, shape: tuple[int, ...], seed: int, fill: str
) -> None:
    rng = np.random.default_rng(seed)
    frame = {
        "noise": lambda: rng.integers(0, 256, shape, dtype=np.uint8),
        "zeros": lambda: np.zeros(shape, np.uint8),
        "255": lambda: np.full(shape, 255, np.uint8),
    }[fill]()
    faces = detector.detect(frame)
    assert isinstance(faces, list) and all(isinstance(f, Face) for f in faces)
    assert all(all(math.isfinite(v) for v in f.box) and 0 <= f.score <= 1 for f in faces)


@FEW
@given(
    frame_shape=st.tuples(st.integers(1, 240), st.integers(1, 320), st.sampled_from([None, 1, 3])),
    box=st.tuples(st.floats(-2, 3), st.floats(-2, 3), st.floats(0, 4), st.floats(0, 4)),
    seed=st.integers(0, 2**32 - 1),
)
@example(frame_shape=(1, 1, 3), box=(0.0, 0.0, 0.0, 0.0), seed=0)  # an empty box on a one-pixel frame
@example(frame_shape=(120, 160, 3), box=(-2.0, -2.0, 0.01, 0.01), seed=0)  # tiny, far outside
@example(frame_shape=(120, 160, None), box=(-0.5, -0.5, 4.0, 4.0), seed=0)  # four times the frame
def test_face_crop_of_any_box_classifies_to_probabilities_summing_to_one(
    face_model: FaceEmotionModel, frame_shape: tuple[Any, ...], box: tuple[float, ...], seed: int
) -> None:
    h, w, c = frame_shape
    frame = np.random.default_rng(seed).integers(0, 256, (h, w) if c is None else (h, w, c), dtype=np.uint8)
    # box in units of the frame's size: x, y relative to the width/height, sizes relative to the longer side
    side = max(h, w)
    pixels = (box[0] * w, box[1] * h, box[2] * side, box[3] * side)
    crop = face_model.pre.crop(frame, pixels)
    assert crop.size > 0 and crop.shape[0] == crop.shape[1]
    probs = face_model.classify(crop)
    assert probs.shape == (len(face_model.labels),) and np.all(np.isfinite(probs)) and np.all(probs >= 0)
    assert probs.sum() == pytest.approx(1.0, abs=0.05)


# =========================================================================== audio windows


@pytest.fixture(scope="module")
def speech_model() -> SpeechEmotionModel:
    return SpeechEmotionModel(MODELS / "speech_emotion.json")


@st.composite
def audio_windows(draw: st.DrawFn, n: int) -> np.ndarray:
    kind = draw(st.sampled_from(["silence", "clipped", "square", "noise", "extreme", "dc", "impulse"]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    big = np.float32(draw(st.sampled_from([1.0, 1e3, 1e30, 3.4e38])))
    if kind == "silence":
        return np.zeros(n, np.float32)
    if kind == "clipped":
        return np.clip(rng.normal(0, 10, n), -1, 1).astype(np.float32)
    if kind == "square":
        return np.where(np.arange(n) % draw(st.integers(2, 400)) < 1, big, -big).astype(np.float32)
    if kind == "noise":
        return rng.uniform(-1, 1, n).astype(np.float32)
    if kind == "dc":
        return np.full(n, draw(st.sampled_from([-1.0, 1.0, 1e-30, 3.4e38])), np.float32)
    if kind == "impulse":
        x = np.zeros(n, np.float32)
        x[draw(st.integers(0, n - 1))] = big
        return x
    return (rng.uniform(-1, 1, n) * big).astype(np.float32)  # extreme, finite


@FEW
@given(data=st.data())
def test_speech_window_of_any_finite_audio_gives_finite_features_and_probabilities(
    speech_model: SpeechEmotionModel, data: st.DataObject
) -> None:
    features = speech_model.features
    audio = data.draw(audio_windows(features.window_samples))
    feat = features.compute(audio)
    assert feat.shape == (features.num_frames, features.num_features) and np.all(np.isfinite(feat))
    probs = speech_model.classify_window(audio)
    assert np.all(np.isfinite(probs)) and probs.sum() == pytest.approx(1.0, abs=0.05)


WRONG_SHAPES: dict[str, Callable[[int], tuple[int, ...]]] = {
    "empty": lambda n: (0,),
    "one sample": lambda n: (1,),
    "one short": lambda n: (n - 1,),
    "one long": lambda n: (n + 1,),
    "twice": lambda n: (2 * n,),
    "column": lambda n: (n, 1),
    "row": lambda n: (1, n),
    "stereo halves": lambda n: (2, n // 2),
}


@pytest.mark.parametrize("shape", list(WRONG_SHAPES))
def test_speech_features_of_a_wrong_length_window_raise_value_error(
    speech_model: SpeechEmotionModel, shape: str
) -> None:
    features = speech_model.features
    with pytest.raises(ValueError):
        features.compute(np.zeros(WRONG_SHAPES[shape](features.window_samples), np.float32))
