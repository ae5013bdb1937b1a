"""Face detector: real BlazeFace model, real photo (skimage's public-domain NASA astronaut portrait), no mocks."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
from skimage import data as skdata

from edge_daemon.errors import UserError
from edge_daemon.modelmeta import sha256_of
from edge_daemon.vision.detector import BlazeFaceSpec, Face, box_iou, make_detector

META = Path(__file__).resolve().parents[1] / "models_tflite" / "face_detection_short_range.json"

# Eileen Collins' face in skimage.data.astronaut() (512x512), as mediapipe 0.10.14 reports it
# (mp.solutions.face_detection.FaceDetection(model_selection=0), box converted to pixels): x, y, w, h and score.
MEDIAPIPE_BOX = (177.565, 82.871, 95.344, 95.344)
MEDIAPIPE_SCORE = 0.92174
# detector.py removes MediaPipe's half-pixel bias of 0.5 / k - 0.5 px, k = 128 / 512 for this image.
HALF_PIXEL_BIAS = 0.5 / (128 / 512) - 0.5


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    return cv2.cvtColor(skdata.astronaut(), cv2.COLOR_RGB2BGR)


@pytest.fixture(scope="module")
def blazeface():
    return make_detector("blazeface", META, min_face_px=20, max_faces=3)


def test_astronaut_one_face_matches_mediapipe(blazeface, astronaut: np.ndarray) -> None:
    faces = blazeface.detect(astronaut)
    assert len(faces) == 1
    face = faces[0]
    assert face.score > 0.7
    assert face.score == pytest.approx(MEDIAPIPE_SCORE, abs=1e-3)
    want = (MEDIAPIPE_BOX[0] - HALF_PIXEL_BIAS, MEDIAPIPE_BOX[1] - HALF_PIXEL_BIAS, *MEDIAPIPE_BOX[2:])
    assert face.box == pytest.approx(want, abs=0.5)
    assert face.area == pytest.approx(face.box[2] * face.box[3])
    assert blazeface.meta.version == "0.10.14"  # what the daemon reports as the detector version


def test_camera_frame_matches_mediapipe(blazeface, astronaut: np.ndarray) -> None:
    # 640x480 frame, astronaut scaled to 480x480 at x=80: exercises the scale and the letterbox padding together.
    # Reference from mediapipe 0.10.14 on this exact frame; the bias is 0.5 / k - 0.5 with k = 128 / 640.
    frame = np.full((480, 640, 3), 90, np.uint8)
    frame[:, 80:560] = cv2.resize(astronaut, (480, 480))
    (face,) = blazeface.detect(frame)
    bias = 0.5 / (128 / 640) - 0.5
    assert face.score == pytest.approx(0.84202, abs=2e-3)
    assert face.box == pytest.approx((245.176 - bias, 67.361 - bias, 95.262, 95.262), abs=1.0)


@pytest.mark.parametrize("axis", [0, 1], ids=["letterbox-rows", "letterbox-columns"])
def test_letterbox_offset_is_undone_exactly(blazeface, astronaut: np.ndarray, axis: int) -> None:
    # A 512x256 strip is letterboxed with 32 px of zeros on either side of the 128 px tensor; the same strip
    # drawn into a black 512x512 frame at offset 128 gives the bit-identical tensor. So the two detections
    # must differ by exactly the 128 px offset.
    strip = astronaut[0:256] if axis == 0 else astronaut[:, 100:356]
    frame = np.zeros_like(astronaut)
    if axis == 0:
        frame[128:384] = strip
    else:
        frame[:, 128:384] = strip
    (a,) = blazeface.detect(strip)
    (b,) = blazeface.detect(frame)
    shift = [0.0, 0.0, 0.0, 0.0]
    shift[1 - axis] = 128.0
    assert b.box == pytest.approx(tuple(v + d for v, d in zip(a.box, shift, strict=True)), abs=1e-3)
    assert b.score == pytest.approx(a.score, abs=1e-6)


def test_gray_bgra_and_single_channel_frames(blazeface, astronaut: np.ndarray) -> None:
    (ref,) = blazeface.detect(astronaut)
    bgra = cv2.cvtColor(astronaut, cv2.COLOR_BGR2BGRA)
    bgra[:, :, 3] = 17  # alpha must be ignored
    (face,) = blazeface.detect(bgra)
    assert face == ref
    gray = cv2.cvtColor(astronaut, cv2.COLOR_BGR2GRAY)
    for img in (gray, gray[:, :, None]):
        faces = blazeface.detect(img)
        assert len(faces) == 1
        assert box_iou(faces[0].box, ref.box) > 0.8


@pytest.mark.parametrize(
    "frame",
    [np.zeros((0, 0, 3), np.uint8), np.zeros((0, 640, 3), np.uint8), np.zeros((480, 0), np.uint8), np.array([])],
    ids=["0x0", "0x640", "480x0-gray", "empty-1d"],
)
def test_empty_frames_give_no_faces(blazeface, frame: np.ndarray) -> None:
    assert blazeface.detect(frame) == []
    assert make_detector("haar", None).detect(frame) == []


def test_blank_noise_and_faceless_frames_have_no_faces(blazeface) -> None:
    # Sensor-like (Gaussian) noise only: full-range uniform noise fools BlazeFace in ~30% of frames at score
    # 0.5-0.67, in MediaPipe too (see the model card).
    rng = np.random.default_rng(0)
    frames = [
        np.zeros((480, 640, 3), np.uint8),
        np.full((480, 640, 3), 255, np.uint8),
        np.clip(rng.normal(128, 20, (480, 640, 3)), 0, 255).astype(np.uint8),
        np.zeros((1, 1, 3), np.uint8),
        cv2.cvtColor(skdata.coffee(), cv2.COLOR_RGB2BGR),
        cv2.cvtColor(skdata.rocket(), cv2.COLOR_RGB2BGR),
    ]
    for frame in frames:
        assert blazeface.detect(frame) == []


def test_min_face_px_drops_small_faces(astronaut: np.ndarray) -> None:
    small = cv2.resize(astronaut, (128, 128), interpolation=cv2.INTER_AREA)  # face about 24 px
    (face,) = make_detector("blazeface", META, min_face_px=20).detect(small)
    assert 20 <= min(face.box[2:]) < 40
    assert make_detector("blazeface", META, min_face_px=40).detect(small) == []


def test_max_faces_and_largest_first(astronaut: np.ndarray) -> None:
    # 2x2 tiles of the face: one at 200 px, three shrunk to 160 px
    crop = astronaut[40:240, 128:328]
    small = cv2.resize(crop, (160, 160), interpolation=cv2.INTER_AREA)
    frame = np.full((400, 400, 3), 80, np.uint8)
    frame[:200, :200] = crop
    frame[:160, 220:380] = small
    frame[220:380, :160] = small
    frame[220:380, 220:380] = small
    everything = make_detector("blazeface", META, min_face_px=0, max_faces=10).detect(frame)
    assert len(everything) == 4
    areas = [f.area for f in everything]
    assert areas == sorted(areas, reverse=True)
    assert everything[0].box[0] < 200 and everything[0].box[1] < 200  # the full-size face comes first
    three = make_detector("blazeface", META, min_face_px=0, max_faces=3).detect(frame)
    assert three == everything[:3]
    assert make_detector("blazeface", META, min_face_px=0, max_faces=1).detect(frame) == everything[:1]


def test_haar_backend_finds_the_astronaut(astronaut: np.ndarray) -> None:
    haar = make_detector("haar", None, min_face_px=40, max_faces=3)
    faces = haar.detect(astronaut)
    assert len(faces) == 1
    assert isinstance(faces[0], Face)
    assert box_iou(faces[0].box, MEDIAPIPE_BOX) > 0.6
    gray = haar.detect(cv2.cvtColor(astronaut, cv2.COLOR_BGR2GRAY))
    assert len(gray) == 1
    assert make_detector("haar", None, min_face_px=120).detect(astronaut) == []


def test_anchors_match_mediapipe_layout() -> None:
    anchors = BlazeFaceSpec().anchors()
    assert anchors.shape == (896, 4)
    # stride 8: 16x16 cells x 2 anchors; stride 16 (three layers share it): 8x8 cells x 6 anchors
    assert anchors[0].tolist() == [0.03125, 0.03125, 1.0, 1.0]
    assert anchors[1].tolist() == anchors[0].tolist()
    assert anchors[2].tolist() == [0.09375, 0.03125, 1.0, 1.0]
    assert anchors[511].tolist() == [0.96875, 0.96875, 1.0, 1.0]
    assert anchors[512:518, :2].tolist() == [[0.0625, 0.0625]] * 6
    assert anchors[-1].tolist() == [0.9375, 0.9375, 1.0, 1.0]


def test_spec_roundtrips_through_metadata() -> None:
    meta = json.loads(META.read_text(encoding="utf-8"))
    spec = BlazeFaceSpec.from_meta(meta["preprocess"])
    assert spec == BlazeFaceSpec()
    assert BlazeFaceSpec.from_meta(json.loads(json.dumps(spec.to_meta()))) == spec
    broken = json.loads(json.dumps(spec.to_meta()))
    del broken["anchors"]["min_scale"]
    with pytest.raises(UserError, match=r"anchors\.min_scale"):
        BlazeFaceSpec.from_meta(broken)
    broken = json.loads(json.dumps(spec.to_meta()))
    broken["anchors"]["strides"] = "8,16"
    with pytest.raises(UserError, match=r"anchors\.strides"):
        BlazeFaceSpec.from_meta(broken)


def _copy_model(tmp_path: Path) -> tuple[Path, Path]:
    meta = json.loads(META.read_text(encoding="utf-8"))
    model = tmp_path / meta["model_file"]
    shutil.copy(META.parent / meta["model_file"], model)
    json_path = tmp_path / META.name
    json_path.write_text(json.dumps(meta), encoding="utf-8")
    return json_path, model


def test_corrupt_model_is_a_user_error_naming_the_file(tmp_path: Path) -> None:
    json_path, model = _copy_model(tmp_path)
    model.write_bytes(b"this is not a flatbuffer" * 100)
    meta = json.loads(json_path.read_text(encoding="utf-8"))
    meta["sha256"] = sha256_of(model)  # metadata agrees, so the load itself must fail cleanly
    json_path.write_text(json.dumps(meta), encoding="utf-8")
    with pytest.raises(UserError, match=str(model)):
        make_detector("blazeface", json_path)


def test_wrong_sha256_is_a_user_error(tmp_path: Path) -> None:
    json_path, _ = _copy_model(tmp_path)
    meta = json.loads(json_path.read_text(encoding="utf-8"))
    meta["sha256"] = "0" * 64
    json_path.write_text(json.dumps(meta), encoding="utf-8")
    with pytest.raises(UserError, match="sha256"):
        make_detector("blazeface", json_path)


def test_bad_configuration_is_a_user_error() -> None:
    with pytest.raises(UserError, match="backend"):
        make_detector("yolo", META)
    with pytest.raises(UserError, match=r"\.json"):
        make_detector("blazeface", None)
    with pytest.raises(UserError, match="max_faces"):
        make_detector("blazeface", META, max_faces=0)
