"""Model metadata: the `.json` beside every `.tflite`, which tells the daemon everything it needs to run the model.

Schema (version 1)::

    {
      "schema": 1,
      "kind": "face_detector" | "face_emotion" | "speech_emotion",
      "name": "face_emotion", "version": "1.0.0",
      "model_file": "face_emotion.tflite", "sha256": "<hex of model_file>",
      "labels": ["angry", ...],                 # emotion models: one per output, in output order
      "input":  {"shape": [1, 48, 48, 1], "dtype": "int8", "scale": 0.0039, "zero_point": -128},
      "output": {"shape": [1, 7], "dtype": "int8", "scale": 0.0039, "zero_point": -128},
      "preprocess": {...},   # face_emotion: edge_daemon.vision.preprocess.FacePreprocess
                             # speech_emotion: edge_daemon.audio.features.SpeechFeatures
                             # face_detector: edge_daemon.vision.detector.BlazeFaceSpec
      "training": {...}, "metrics": {...}, "licence": "...", "source": "..."   # provenance, free form
    }

`write_meta` (used by training's export) derives input/output and sha256 from
the model file itself, so the two cannot disagree; `load_model` checks that
they still agree before the daemon runs anything.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .errors import UserError
from .runtime import TensorSpec, TFLiteModel

SCHEMA = 1
KINDS = ("face_detector", "face_emotion", "speech_emotion")
# What a malformed `preprocess` value can raise while it is parsed; callers turn these into one UserError line.
SPEC_ERRORS = (KeyError, TypeError, ValueError, IndexError, OverflowError, ZeroDivisionError)


@dataclass(frozen=True)
class ModelMeta:
    json_path: Path
    model_path: Path
    kind: str
    name: str
    version: str
    sha256: str
    labels: tuple[str, ...]
    preprocess: dict[str, Any]
    raw: dict[str, Any]
    temperature: float = 1.0  # `calibration.temperature`: probabilities are sharpened (<1) or softened (>1) by it

    def calibrate(self, probs: Any) -> Any:
        """Temperature scaling of probabilities (softmax(log p / T)), as fitted on validation data by training."""
        return probs if self.temperature == 1.0 else temperature_scale(probs, self.temperature)


def temperature_scale(probs: Any, temperature: float) -> np.ndarray:
    """softmax(log p / T) over the last axis, computed on probabilities (zeros stay zero); training fits T with it."""
    q = np.power(np.asarray(probs, dtype=np.float64), 1.0 / temperature)
    total = q.sum(axis=-1, keepdims=True)
    return np.where(total > 0, q / np.where(total > 0, total, 1.0), probs).astype(np.float32)


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 16), b""):
            h.update(block)
    return h.hexdigest()


def load_meta(json_path: Path, expect_kind: str | None = None) -> ModelMeta:
    """Read and check a metadata file; every problem names the file and the field."""
    json_path = Path(json_path)
    try:
        raw = json.loads(json_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{json_path}: model metadata not found; check the models section of the config") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"{json_path}: model metadata is not valid JSON ({exc})") from None
    if not isinstance(raw, dict):
        raise UserError(f"{json_path}: model metadata must be a JSON object")

    def field(name: str, kind: type | tuple[type, ...]) -> Any:
        if name not in raw:
            raise UserError(f"{json_path}: field '{name}' is missing")
        value = raw[name]
        if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
            raise UserError(f"{json_path}: field '{name}' has the wrong type ({type(value).__name__})")
        return value

    if field("schema", int) != SCHEMA:
        raise UserError(f"{json_path}: field 'schema' is {raw['schema']}, this daemon reads schema {SCHEMA}")
    kind = field("kind", str)
    if kind not in KINDS:
        raise UserError(f"{json_path}: field 'kind' is {kind!r}; expected one of {', '.join(KINDS)}")
    if expect_kind and kind != expect_kind:
        raise UserError(f"{json_path}: field 'kind' is {kind!r}, but this slot needs a {expect_kind} model")
    labels: tuple[str, ...] = ()
    if kind != "face_detector":
        labels = tuple(field("labels", list))
        if not labels or not all(isinstance(v, str) and v for v in labels):
            raise UserError(f"{json_path}: field 'labels' must be a non-empty list of names")
    model_file = field("model_file", str)
    for section in ("input", "output"):
        field(section, dict)
    temperature = 1.0
    if "calibration" in raw:
        cal = field("calibration", dict)
        temperature = cal.get("temperature", 1.0)
        if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not 0.05 <= temperature <= 20:
            raise UserError(f"{json_path}: field 'calibration.temperature' must be a number from 0.05 to 20")
    return ModelMeta(
        json_path=json_path,
        model_path=json_path.parent / model_file,
        kind=kind,
        name=field("name", str),
        version=field("version", str),
        sha256=field("sha256", str),
        labels=labels,
        preprocess=field("preprocess", dict),
        raw=raw,
        temperature=float(temperature),
    )


def load_model(json_path: Path, expect_kind: str | None = None, num_threads: int = 1) -> tuple[ModelMeta, TFLiteModel]:
    """Load metadata and model, and refuse the pair if they disagree."""
    meta = load_meta(json_path, expect_kind)
    if not meta.model_path.is_file():
        raise UserError(f"{meta.json_path}: model file {meta.model_path} not found (field 'model_file')")
    digest = sha256_of(meta.model_path)
    if digest != meta.sha256:
        raise UserError(
            f"{meta.model_path}: sha256 {digest[:12]}… does not match {meta.json_path.name} ({meta.sha256[:12]}…); "
            "the model and its metadata come from different exports: copy both again"
        )
    model = TFLiteModel(meta.model_path, num_threads=num_threads)
    _check_tensor(meta, "input", model.inputs[0])
    _check_tensor(meta, "output", model.outputs[0])
    if meta.labels and model.outputs[0].shape[-1] != len(meta.labels):
        raise UserError(
            f"{meta.json_path}: {len(meta.labels)} labels but the model has {model.outputs[0].shape[-1]} outputs"
        )
    return meta, model


def _check_tensor(meta: ModelMeta, section: str, spec: TensorSpec) -> None:
    want = meta.raw[section]
    got = _tensor_meta(spec)
    for key in ("shape", "dtype"):
        if key in want and want[key] != got[key]:
            raise UserError(
                f"{meta.json_path}: field '{section}.{key}' says {want[key]} but the model has {got[key]}; "
                "export the model and metadata together"
            )


def _tensor_meta(spec: TensorSpec) -> dict[str, Any]:
    return {"shape": list(spec.shape), "dtype": spec.dtype, "scale": spec.scale, "zero_point": spec.zero_point}


def write_meta(model_path: Path, kind: str, name: str, version: str, preprocess: dict[str, Any], **extra: Any) -> Path:
    """Write `<model>.json` beside a `.tflite`, reading shapes, quantisation and sha256 from the file itself."""
    model_path = Path(model_path)
    model = TFLiteModel(model_path)
    meta = {
        "schema": SCHEMA,
        "kind": kind,
        "name": name,
        "version": version,
        "model_file": model_path.name,
        "sha256": sha256_of(model_path),
        "input": _tensor_meta(model.inputs[0]),
        "output": _tensor_meta(model.outputs[0]),
        "preprocess": preprocess,
        **extra,
    }
    json_path = model_path.with_suffix(".json")
    json_path.write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    return json_path
