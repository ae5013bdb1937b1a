"""How far the face path sees (issue H): the default detector (BlazeFace full-range over two tiles) finds real
faces from about 40 px wide in a 640x480 frame (and half of them at 32 px), several per frame, and ignores face-free textures; `check` warns
when the configured detector cannot see past 1.5 m. Real models, a real photograph (scikit-image's astronaut,
public domain) pasted on real backgrounds; benchmarks/face_distance.py measures the same at scale."""

from __future__ import annotations

from dataclasses import replace

import cv2
import numpy as np
import pytest
import skimage.data

from edge_daemon.check import reach_warnings
from edge_daemon.config import Config
from edge_daemon.models import load_detector
from edge_daemon.pipeline import room_vote
from edge_daemon.vision.detector import reach_m, smallest_face_px, tile_regions

HEAD = (116, 11, 331, 300)  # the astronaut's head and shoulders in the 512x512 photo
FACE = (60, 70, 95)  # x, y, width of her face inside that crop


def _scene(name: str = "coffee") -> np.ndarray:
    bg = getattr(skimage.data, name)()
    bg = bg if bg.ndim == 3 else np.stack([bg] * 3, axis=-1)
    return cv2.resize(cv2.cvtColor(np.ascontiguousarray(bg[..., :3]), cv2.COLOR_RGB2BGR), (640, 480))


def _with_faces(width: int, spots: list[tuple[int, int]]) -> tuple[np.ndarray, list[tuple[float, float, float, float]]]:
    """A 640x480 frame with the astronaut's face `width` px wide at each (x, y) (the face's top-left corner)."""
    x0, y0, x1, y1 = HEAD
    head = cv2.cvtColor(skimage.data.astronaut()[y0:y1, x0:x1], cv2.COLOR_RGB2BGR)
    k = width / FACE[2]
    head = cv2.resize(head, None, fx=k, fy=k, interpolation=cv2.INTER_AREA)
    frame, truth = _scene(), []
    for fx, fy in spots:
        px, py = int(fx - FACE[0] * k), int(fy - FACE[1] * k)
        sx, sy = max(0, -px), max(0, -py)
        px, py = max(0, px), max(0, py)
        h, w = min(480 - py, head.shape[0] - sy), min(640 - px, head.shape[1] - sx)
        frame[py : py + h, px : px + w] = head[sy : sy + h, sx : sx + w]
        truth.append((fx, fy, width, width))
    return frame, truth


def _found(boxes, true) -> bool:
    x, y, w, _ = true
    return any(x <= b[0] + b[2] / 2 <= x + w and y <= b[1] + b[3] / 2 <= y + w and 0.5 < b[2] / w < 2 for b in boxes)


@pytest.fixture(scope="module")
def detector():
    return load_detector(Config())


def test_tiles_are_overlapping_squares_along_the_long_side() -> None:
    assert tile_regions(640, 480, 1) == [(0, 0, 640, 480)]
    assert tile_regions(640, 480, 2) == [(0, 0, 480, 480), (160, 0, 640, 480)]
    assert tile_regions(720, 1280, 3) == [(0, 0, 720, 720), (0, 280, 720, 1000), (0, 560, 720, 1280)]
    wide = tile_regions(1920, 480, 2)  # wider than 2:1: two squares would leave the middle unsearched
    assert len(wide) == 4 and wide[0][0] == 0 and wide[-1][2] == 1920
    assert all(a[2] >= b[0] for a, b in zip(wide, wide[1:], strict=False))  # no gap between neighbours


@pytest.mark.parametrize("width", [32, 40, 64, 160])  # 32 px: about 2.1 m away, the edge of what it sees
def test_the_default_detector_finds_a_face_across_the_room(detector, width: int) -> None:
    spots = [(60, 120), (300, 200), (500, 100), (250, 380 - width), (420, 300)]
    found = 0
    for spot in spots:
        x = min(spot[0], 640 - width - 1)
        frame, (true,) = _with_faces(width, [(x, min(spot[1], 480 - width - 1))])
        found += _found([f.box for f in detector.detect(frame)], true)
    assert found >= (2 if width == 32 else 5), f"{found} of {len(spots)} faces {width} px wide found"


def test_the_short_range_detector_does_not_and_check_says_so() -> None:
    config = Config()
    short = replace(config, models=replace(config.models, face_detector="face_detection_short_range.json"))
    frame, (true,) = _with_faces(40, [(300, 200)])
    assert not _found([f.box for f in load_detector(short).detect(frame)], true)  # why the default changed
    (warning,) = reach_warnings(short)
    assert "face_detection_full_range_sparse.json" in warning and "camera.width" in warning
    assert reach_warnings(config) == []


def test_reach_follows_resolution(detector) -> None:
    near, far = smallest_face_px(detector, 640, 480), smallest_face_px(detector, 1280, 720)
    assert near == pytest.approx(40, abs=1) and far == pytest.approx(60, abs=1)
    assert reach_m(near, 640) == pytest.approx(1.7, abs=0.1)  # 15 cm face, 70-degree webcam
    assert reach_m(far, 1280) > reach_m(near, 640)


def test_people_side_by_side_are_each_found_and_each_count(detector) -> None:
    frame, truth = _with_faces(48, [(120, 200), (250, 200), (380, 210)])  # three people on a sofa, about 2 m away
    boxes = [f.box for f in detector.detect(frame)]
    assert all(_found(boxes, t) for t in truth), boxes
    happy, sad = np.eye(7)[3], np.eye(7)[4]
    assert room_vote([happy, sad, sad], [0.9, 0.9, 0.9]).argmax() == 4  # every face votes, not only the largest
    assert room_vote([happy, sad], [0.9, 0.3]).argmax() == 3  # a doubtful detection counts less


@pytest.mark.parametrize("name", ["brick", "grass", "gravel", "coffee", "coins", "chelsea"])
def test_textures_and_rooms_are_not_faces(detector, name: str) -> None:
    assert detector.detect(_scene(name)) == []
