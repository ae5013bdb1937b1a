"""The shipped models: they load, agree with their metadata, refuse mismatches clearly, and agree across runtimes."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge_daemon.audio.emotion import SpeechEmotionModel
from edge_daemon.audio.features import pcm16_to_float
from edge_daemon.capture.files import read_wav
from edge_daemon.errors import UserError
from edge_daemon.modelmeta import load_model
from edge_daemon.vision.emotion import FaceEmotionModel

from .conftest import CLIP_AUDIO, CLIP_VIDEO, MODELS, ROOT, assert_clean_error, run_cli, write_config

EMOTION_MODELS = ["face_emotion", "speech_emotion"]


@pytest.mark.parametrize("name", ["face_detection_short_range", *EMOTION_MODELS])
def test_shipped_model_has_metadata_card_and_fits_a_pi(name: str) -> None:
    meta, model = load_model(MODELS / f"{name}.json")
    assert (MODELS / f"{name}.md").is_file(), "every model ships with its model card"
    assert meta.model_path.stat().st_size < 3_000_000
    if name in EMOTION_MODELS:
        assert meta.model_path.stat().st_size <= 2_000_000
        assert (
            model.inputs[0].dtype == "int8" and model.outputs[0].dtype == "int8"
        )  # full-integer: loads on tflite-runtime too


def clip_faces() -> list[np.ndarray]:
    """Face crops from the fixture video (one per second), as the daemon cuts them."""
    from edge_daemon.vision.detector import make_detector

    det = make_detector("blazeface", MODELS / "face_detection_short_range.json")
    face = FaceEmotionModel(MODELS / "face_emotion.json")
    cap = cv2.VideoCapture(str(CLIP_VIDEO))
    crops = []
    i = 0
    while True:
        ok, img = cap.read()
        if not ok:
            break
        if i % 10 == 5:
            found = det.detect(img)
            assert found, f"frame {i} of the fixture has a face"
            crops.append(face.pre.crop(img, found[0].box))
        i += 1
    return crops


def clip_speech_windows(model: SpeechEmotionModel) -> list[np.ndarray]:
    x = pcm16_to_float(read_wav(CLIP_AUDIO))
    n = model.features.window_samples
    return [x[s : s + n] for s in range(0, len(x) - n + 1, 16000)]


def test_same_top1_on_tflite_runtime_214_with_numpy_1(tmp_path: Path) -> None:
    compat = os.environ.get("EMOTION_EDGE_COMPAT_PYTHON")
    if not compat:
        pytest.skip("set by scripts/test.sh, which builds the tflite-runtime 2.14 environment")
    face = FaceEmotionModel(MODELS / "face_emotion.json")
    speech = SpeechEmotionModel(MODELS / "speech_emotion.json")
    crops = clip_faces()
    windows = clip_speech_windows(speech)
    inputs = tmp_path / "inputs.npz"
    # Face crops of varying size do not stack: hand over the model-sized uint8 images, which prepare() leaves as they are.
    h, w = face.pre.size
    np.savez(
        inputs,
        faces=np.stack([cv2.resize(face.pre._to_color(c), (w, h), interpolation=cv2.INTER_AREA) for c in crops]),
        speech=np.stack(windows),
    )
    data = np.load(inputs)
    mine = {
        "face": [int(np.argmax(face.classify(x))) for x in data["faces"]],
        "speech": [int(np.argmax(speech.classify_window(x))) for x in data["speech"]],
    }
    out = subprocess.run(
        [compat, str(ROOT / "tests" / "compat_top1.py"), str(MODELS), str(inputs)],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    theirs = json.loads(out.stdout.strip().splitlines()[-1])
    assert theirs["runtime"] == "tflite-runtime" and theirs["numpy"].startswith("1.")
    assert theirs["face"] == mine["face"] and theirs["speech"] == mine["speech"]


# ---------------------------------------------------------------------------- mismatches are refused clearly


@pytest.fixture
def models_copy(tmp_path: Path) -> Path:
    dst = tmp_path / "models"
    shutil.copytree(MODELS, dst)
    return dst


def edit_meta(path: Path, **changes: object) -> None:
    meta = json.loads(path.read_text())
    meta.update(changes)
    path.write_text(json.dumps(meta))


def classify(tmp_path: Path, models: Path, modality: str = "face") -> subprocess.CompletedProcess[str]:
    cfg = write_config(tmp_path / "config.yaml", models={"dir": str(models)})
    target = str(CLIP_AUDIO) if modality == "speech" else str(tmp_path)
    if modality == "face":
        cap = cv2.VideoCapture(str(CLIP_VIDEO))
        ok, img = cap.read()
        cv2.imwrite(str(tmp_path / "frame.png"), img)
    return run_cli("--config", str(cfg), "classify", modality, target)


def test_corrupt_model_file(tmp_path: Path, models_copy: Path) -> None:
    (models_copy / "face_emotion.tflite").write_bytes(b"\x00" * 5000)
    meta = json.loads((models_copy / "face_emotion.json").read_text())
    import hashlib

    edit_meta(models_copy / "face_emotion.json", sha256=hashlib.sha256(b"\x00" * 5000).hexdigest())
    assert meta["model_file"] == "face_emotion.tflite"
    assert_clean_error(classify(tmp_path, models_copy), "face_emotion.tflite", "not a loadable TFLite model")


def test_model_changed_without_its_metadata(tmp_path: Path, models_copy: Path) -> None:
    with open(models_copy / "speech_emotion.tflite", "ab") as f:
        f.write(b"\x00")
    assert_clean_error(classify(tmp_path, models_copy, "speech"), "speech_emotion.tflite", "sha256", "does not match")


def test_missing_model_file(tmp_path: Path, models_copy: Path) -> None:
    (models_copy / "face_emotion.tflite").unlink()
    assert_clean_error(classify(tmp_path, models_copy), "face_emotion.tflite not found")


def test_missing_metadata(tmp_path: Path, models_copy: Path) -> None:
    (models_copy / "face_emotion.json").unlink()
    assert_clean_error(classify(tmp_path, models_copy), "face_emotion.json", "not found")


def test_labels_that_do_not_match_the_outputs(tmp_path: Path, models_copy: Path) -> None:
    edit_meta(models_copy / "face_emotion.json", labels=["happy", "sad"])
    assert_clean_error(classify(tmp_path, models_copy), "face_emotion.json", "2 labels", "outputs")


def test_input_shape_that_does_not_match_the_model(tmp_path: Path, models_copy: Path) -> None:
    meta = json.loads((models_copy / "speech_emotion.json").read_text())
    meta["preprocess"]["window_s"] = meta["preprocess"]["window_s"] + 1.0
    (models_copy / "speech_emotion.json").write_text(json.dumps(meta))
    assert_clean_error(classify(tmp_path, models_copy, "speech"), "speech_emotion.json", "the model takes")


def test_unknown_label_in_metadata(tmp_path: Path, models_copy: Path) -> None:
    meta = json.loads((models_copy / "face_emotion.json").read_text())
    edit_meta(models_copy / "face_emotion.json", labels=["bored", *meta["labels"][1:]])
    assert_clean_error(classify(tmp_path, models_copy), "face_emotion.json", "bored")


def test_metadata_of_the_wrong_kind(tmp_path: Path, models_copy: Path) -> None:
    shutil.copy(models_copy / "speech_emotion.json", models_copy / "face_emotion.json")
    with pytest.raises(UserError, match="needs a face_emotion model"):
        FaceEmotionModel(models_copy / "face_emotion.json")
