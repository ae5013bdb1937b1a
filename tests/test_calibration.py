"""Confidence that means something: the temperature in a model's metadata is applied wherever the model runs, and
`classify face` reads every image format the training loader reads."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge_daemon.errors import UserError
from edge_daemon.labels import CANONICAL
from edge_daemon.vision.emotion import FaceEmotionModel
from edge_daemon.vision.preprocess import IMAGE_SUFFIXES
from training.face_data import load_folder_tree

from .conftest import ROOT, run_cli, write_config
from .test_cli import frame_at, lines

MODELS = ROOT / "models_tflite"


def _face_model_with(tmp_path: Path, calibration: object) -> Path:
    for suffix in (".json", ".tflite"):
        shutil.copy(MODELS / f"face_emotion{suffix}", tmp_path / f"face_emotion{suffix}")
    meta_path = tmp_path / "face_emotion.json"
    meta = json.loads(meta_path.read_text())
    meta["calibration"] = calibration
    meta_path.write_text(json.dumps(meta))
    return meta_path


def test_the_temperature_in_the_metadata_softens_the_probabilities(tmp_path: Path) -> None:
    crop = cv2.cvtColor(frame_at(3.0)[60:300, 240:420], cv2.COLOR_BGR2GRAY)  # the smiling astronaut
    cold = FaceEmotionModel(_face_model_with(tmp_path, {"temperature": 1.0}))
    p1 = cold.classify(crop)
    hot = FaceEmotionModel(_face_model_with(tmp_path, {"temperature": 3.0}))
    p3 = hot.classify(crop)
    assert int(np.argmax(p1)) == int(np.argmax(p3))  # scaling never changes the label
    assert abs(float(p3.sum()) - 1) < 1e-4 and float(p3.max()) < float(p1.max())
    expected = p1.astype(np.float64) ** (1 / 3)
    np.testing.assert_allclose(p3, expected / expected.sum(), atol=1e-5)


@pytest.mark.parametrize("bad", [{"temperature": "warm"}, {"temperature": 0}, {"temperature": True}, "hot"])
def test_a_bad_temperature_is_refused_naming_the_file_and_field(tmp_path: Path, bad: object) -> None:
    meta = _face_model_with(tmp_path, bad)
    with pytest.raises(UserError, match=r"face_emotion\.json: field 'calibration"):
        FaceEmotionModel(meta)


def test_the_shipped_models_carry_a_fitted_temperature() -> None:
    for name in ("face_emotion", "speech_emotion"):
        t = json.loads((MODELS / f"{name}.json").read_text())["calibration"]["temperature"]
        assert 0.2 < t < 5 and t != 1.0, f"{name}: temperature {t}"


def test_classify_face_reads_every_format_training_reads(tmp_path: Path) -> None:
    crop = frame_at(3.0)[60:300, 240:420]
    for suffix in sorted(IMAGE_SUFFIXES):  # .pgm holds only gray, .ppm only colour
        img = cv2.cvtColor(crop, cv2.COLOR_BGR2GRAY) if suffix == ".pgm" else crop
        assert cv2.imwrite(str(tmp_path / f"face{suffix}"), img), suffix
    proc = run_cli(
        "--config", str(write_config(tmp_path / "config.yaml")), "classify", "face", "--no-detect", str(tmp_path)
    )
    assert proc.returncode == 0, proc.stderr
    out = {Path(r["path"]).suffix: r.get("label") for r in lines(proc.stdout)}
    assert set(out) == set(IMAGE_SUFFIXES) and set(out.values()) <= set(CANONICAL), out
    # and training's loader takes the same files (a folder per class)
    (tmp_path / "tree" / "happy").mkdir(parents=True)
    for f in tmp_path.glob("face.*"):
        shutil.copy(f, tmp_path / "tree" / "happy" / f.name)
    assert len(load_folder_tree(tmp_path / "tree").images) == len(IMAGE_SUFFIXES)


def test_mirror_averaging_in_the_metadata_is_what_the_daemon_computes(tmp_path: Path) -> None:
    crop = cv2.cvtColor(frame_at(3.0)[60:300, 240:420], cv2.COLOR_BGR2GRAY)
    meta_path = _face_model_with(tmp_path, {"temperature": 1.0})
    meta = json.loads(meta_path.read_text())
    meta["preprocess"]["hflip_average"] = False
    meta_path.write_text(json.dumps(meta))
    single = FaceEmotionModel(meta_path)
    expected = (single.classify(crop) + single.classify(crop[:, ::-1])) / 2
    meta["preprocess"]["hflip_average"] = True
    meta_path.write_text(json.dumps(meta))
    np.testing.assert_allclose(FaceEmotionModel(meta_path).classify(crop), expected, atol=1e-6)
    # hflip_below: only faces whose first pass is less sure than this get the mirror (top of 7 classes is >= 1/7)
    meta["preprocess"]["hflip_below"] = 0.1
    meta_path.write_text(json.dumps(meta))
    np.testing.assert_allclose(FaceEmotionModel(meta_path).classify(crop), single.classify(crop), atol=1e-6)
    meta["preprocess"]["hflip_below"] = 1.0
    meta_path.write_text(json.dumps(meta))
    np.testing.assert_allclose(FaceEmotionModel(meta_path).classify(crop), expected, atol=1e-6)
    for bad in (0.0, 1.5, True):
        meta["preprocess"]["hflip_below"] = bad
        meta_path.write_text(json.dumps(meta))
        with pytest.raises(UserError, match="preprocess"):
            FaceEmotionModel(meta_path)
    meta["preprocess"]["hflip_below"] = 1.0
    meta["preprocess"]["hflip_average"] = "yes"
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(UserError, match="preprocess"):
        FaceEmotionModel(meta_path)
