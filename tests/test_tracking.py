"""Following faces between detections (`face.detect_every`): real BlazeFace, the bundled clip (a moving face, two
cuts to other people), the real face model. No mocks."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from edge_daemon.capture.sampling import sampled_frames
from edge_daemon.config import Config
from edge_daemon.models import load_detector, load_face_model
from edge_daemon.vision.detector import Face, box_iou
from edge_daemon.vision.tracking import FaceTracker

CLIP = Path(__file__).resolve().parent / "fixtures" / "av" / "clip.mp4"  # 18 s, cuts at 6 s and 12 s


@pytest.fixture(scope="module")
def frames() -> list[np.ndarray]:
    """The clip as the face stage sees it at face.rate_hz 5: 90 frames."""
    out = list(sampled_frames(CLIP, 5.0))
    assert len(out) == 90
    return out


@pytest.fixture(scope="module")
def detector():
    return load_detector(Config())


def test_followed_faces_stay_on_the_face_and_keep_their_labels(frames: list[np.ndarray], detector) -> None:
    model = load_face_model(Config())
    every, tracker = FaceTracker(detector, 1), FaceTracker(detector, 5)
    runs, ious, same, compared = 0, [], 0, 0
    for img in frames:
        a, b = every.detect(img), tracker.detect(img)
        runs += tracker.detected
        if not a:  # full-range BlazeFace misses the clip's upscaled FER2013 crop (no hair or chin) in a frame or two
            continue
        compared += 1
        assert b
        # BlazeFace calls the astronaut's mission patch a face in a frame or two (score 0.55): compare the faces
        # that are the same person.
        ref = max(a, key=lambda f: box_iou(f.box, b[0].box))
        ious.append(box_iou(ref.box, b[0].box))
        la, lb = (int(np.argmax(model.classify(model.pre.crop(img, f.box)))) for f in (ref, b[0]))
        same += la == lb
    assert 18 <= runs <= 24  # every 5th frame, and maybe after a cut
    assert min(ious) > 0.75 and np.mean(ious) > 0.88, (min(ious), np.mean(ious))
    assert compared >= 85, compared  # of 90 frames
    assert same >= compared - 2, (same, compared)


@pytest.mark.parametrize("cut", [30, 60])  # the first frames of the angry and the surprised segments
def test_a_cut_to_another_face_is_detected_at_once(frames: list[np.ndarray], detector, cut: int) -> None:
    tracker = FaceTracker(detector, 30)
    tracker.detect(frames[cut - 2])
    followed = tracker.detect(frames[cut - 1])
    assert not tracker.detected and followed  # the same face, moved a little: followed
    tracker.detect(frames[cut])
    assert tracker.detected, "the old face's template matched a new person"


def test_an_empty_room_is_searched_on_the_schedule_not_on_every_frame(detector, frames: list[np.ndarray]) -> None:
    tracker = FaceTracker(detector, 5)
    wall = np.full((480, 640, 3), 120, np.uint8)
    runs = []
    for _ in range(10):
        assert tracker.detect(wall) == []
        runs.append(tracker.detected)
    assert runs == [True, False, False, False, False] * 2
    tracker.reset()  # after a gap in the stream the next frame is searched at once
    assert tracker.detect(frames[10]) and tracker.detected


def test_detect_every_one_is_the_detector_itself(frames: list[np.ndarray], detector) -> None:
    tracker = FaceTracker(detector, 1)
    for img in frames[:5]:
        assert tracker.detect(img) == detector.detect(img) and tracker.detected


class _Fixed:
    """A detector stand-in that reports one box, to put a face where a camera frame would (at its edge)."""

    def __init__(self, box: tuple[float, float, float, float]) -> None:
        self.box = box

    def detect(self, frame: np.ndarray) -> list[Face]:
        return [Face(self.box, 0.9)]


def test_a_face_detected_past_the_frame_edge_is_detected_again_not_followed(frames: list[np.ndarray]) -> None:
    img = frames[0]
    tracker = FaceTracker(_Fixed((-20.0, 50.0, 120.0, 120.0)), 5)
    tracker.detect(img)
    tracker.detect(img)
    assert tracker.detected


def test_a_followed_face_that_moves_out_of_the_frame_is_detected_again(frames: list[np.ndarray], detector) -> None:
    # The astronaut's face slides right, 30 px a frame, until it leaves the frame.
    img = frames[0]
    h, w = img.shape[:2]
    tracker = FaceTracker(detector, 30)
    (face,) = tracker.detect(img)
    refused = 0
    for dx in range(30, int(w - face.box[0]), 30):
        moved = cv2.warpAffine(img, np.float32([[1, 0, dx], [0, 1, 0]]), (w, h), borderMode=cv2.BORDER_REPLICATE)
        found = tracker.detect(moved)
        if not tracker.detected and found:  # a followed box is always wholly inside the frame, on the moved face
            (f,) = found
            assert f.box[0] >= 0 and f.box[0] + f.box[2] <= w
            assert f.box[0] == pytest.approx(face.box[0] + dx, abs=4)
        elif face.box[0] + dx + face.box[2] > w:
            refused += 1
    assert refused >= 1  # once the face reached the edge, the detector took over


def test_a_flat_patch_is_not_followed() -> None:
    # Normalised correlation with a flat template is 1 everywhere: a "face" on a blank wall (a false detection, a
    # backlit face) would otherwise stay put whatever the camera sees.
    wall = np.full((480, 640, 3), 120, np.uint8)
    tracker = FaceTracker(_Fixed((200.0, 150.0, 120.0, 120.0)), 5)
    for _ in range(3):
        tracker.detect(wall)
        assert tracker.detected


def test_detect_every_below_one_is_refused(detector) -> None:
    with pytest.raises(ValueError, match="detect_every"):
        FaceTracker(detector, 0)


def test_reset_forgets_the_faces(frames: list[np.ndarray], detector) -> None:
    # The face stage resets its tracker after a gap in the stream (a paused or reconnected camera).
    tracker = FaceTracker(detector, 5)
    tracker.detect(frames[0])
    tracker.detect(frames[1])
    assert not tracker.detected
    tracker.reset()
    tracker.detect(frames[2])
    assert tracker.detected
