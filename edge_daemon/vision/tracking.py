"""Face tracking between detections: the detector runs on every `detect_every`-th analysed frame of a stream, and
in between each face it found is followed by template matching, a fraction of a BlazeFace invoke's cost (README,
"Performance").

A followed face keeps the size and score the detector gave it and moves with the best match of its template (the
face as the detector last saw it, in grey, at `TEMPLATE_PX`) within a margin around its last box. When any face's
match falls below `min_match` (the face turned away, left, or the scene cut to someone else), when a box reaches
the frame edge, or when a face is too flat to follow (no texture: any patch matches it), the detector runs at once.
When the detector found nobody, it looks again on the same schedule, not on every frame: an empty room would
otherwise cost a whole-frame search five times a second, the largest share of the daemon's CPU. What tracking cannot
see: a new person entering waits for the next scheduled detection (at most `detect_every` - 1 frames, also when
the room was empty), a followed box keeps the size it was detected at, and a cut
to a very similar face at the same spot can be followed until the next detection. `benchmarks/tracking_check.py`
measures what it changes on labelled clips.

One tracker per stream (it keeps the last frame's faces); not thread-safe.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from .detector import Face, FaceDetector

TEMPLATE_PX = 24  # the face's template side: enough texture to lock on, cheap to match
SEARCH_MARGIN = 0.5  # search this fraction of the box's size beyond each side (a head's move in 1/5 s, and more)
MIN_MATCH = 0.6  # normalised correlation below this means the face is not the one we saw
MIN_TEXTURE = 2.0  # grey levels (standard deviation) a template needs to be followed at all


@dataclass(frozen=True)
class _Track:
    face: Face
    template: np.ndarray  # float32 grey, TEMPLATE_PX square
    corner: tuple[float, float]  # the detected box's sub-pixel offset from the whole pixel the template was cut at


class FaceTracker:
    """`detect(frame)` with the detector's contract (faces largest first), running the detector only when needed."""

    def __init__(self, detector: FaceDetector, detect_every: int = 1, min_match: float = MIN_MATCH) -> None:
        if detect_every < 1:
            raise ValueError(f"detect_every is {detect_every}; it must be at least 1")
        self.detector = detector
        self.detect_every = detect_every
        self.min_match = min_match
        self._tracks: list[_Track] = []
        self._followed = 0  # frames followed since the last detection
        self._empty = False  # the last detection found nobody: wait for the schedule before looking again
        self.detected = False  # whether the last call ran the detector (stats count detector runs)

    def detect(self, frame: np.ndarray) -> list[Face]:
        if self._empty and self._followed < self.detect_every - 1:
            self._followed += 1
            self.detected = False
            return []
        if self._tracks and self._followed < self.detect_every - 1:
            moved = [self._follow(frame, t) for t in self._tracks]
            if all(m is not None for m in moved):
                self._tracks = moved  # type: ignore[assignment]
                self._followed += 1
                self.detected = False
                return [t.face for t in self._tracks]
        faces = self.detector.detect(frame)
        self.detected = True
        self._followed = 0
        self._empty = not faces
        templates = [_template(frame, f) for f in faces] if self.detect_every > 1 else []
        # A face we cannot follow (its box leaves the frame) is looked for again next frame, with the others.
        ok = templates and all(t is not None for t in templates)
        pairs = zip(faces, templates, strict=True) if ok else ()
        self._tracks = [_Track(f, t, (f.box[0] % 1, f.box[1] % 1)) for f, t in pairs]  # type: ignore[arg-type]
        return faces

    def reset(self) -> None:
        """Forget the faces: the next frame is a detection (after a gap in the stream, a template is stale)."""
        self._tracks = []
        self._empty = False

    def _follow(self, frame: np.ndarray, track: _Track) -> _Track | None:
        x, y, w, h = track.face.box
        fh, fw = frame.shape[:2]
        kx, ky = TEMPLATE_PX / w, TEMPLATE_PX / h
        x0, y0 = max(0, int(x - SEARCH_MARGIN * w)), max(0, int(y - SEARCH_MARGIN * h))
        x1, y1 = min(fw, int(np.ceil(x + (1 + SEARCH_MARGIN) * w))), min(fh, int(np.ceil(y + (1 + SEARCH_MARGIN) * h)))
        region = _grey(frame[y0:y1, x0:x1], (max(1, round((x1 - x0) * kx)), max(1, round((y1 - y0) * ky))))
        if region is None or region.shape[0] < TEMPLATE_PX or region.shape[1] < TEMPLATE_PX:
            return None
        match = cv2.matchTemplate(region, track.template, cv2.TM_CCOEFF_NORMED)
        _, best, _, (mx, my) = cv2.minMaxLoc(match)
        if not best >= self.min_match:  # `not >=` so that a NaN score is a lost face too
            return None
        # The match places the template's whole-pixel corner: the detected box sat a fraction of a pixel beyond it.
        nx, ny = x0 + mx / kx + track.corner[0], y0 + my / ky + track.corner[1]
        if nx + w > fw or ny + h > fh:  # (nx, ny >= 0 by construction: the search region starts inside the frame)
            return None
        return _Track(Face(box=(nx, ny, w, h), score=track.face.score), track.template, track.corner)


def _template(frame: np.ndarray, face: Face) -> np.ndarray | None:
    """The face's grey template, or None when it cannot be followed: its box is not wholly inside the frame, or the
    patch is flat (normalised correlation with a flat template is 1 everywhere, so it would "match" any scene)."""
    x, y, w, h = face.box
    fh, fw = frame.shape[:2]
    if x < 0 or y < 0 or x + w > fw or y + h > fh or min(w, h) < 2:
        return None
    x0, y0 = int(x), int(y)
    t = _grey(frame[y0 : y0 + max(1, round(h)), x0 : x0 + max(1, round(w))], (TEMPLATE_PX, TEMPLATE_PX))
    return t if t is not None and float(t.std()) >= MIN_TEXTURE else None


def _grey(patch: np.ndarray, size: tuple[int, int]) -> np.ndarray | None:
    """A patch resized to `size` (w, h) and made grey float32; colour converted after the resize (fewer pixels)."""
    if patch.size == 0:
        return None
    small = cv2.resize(patch, size, interpolation=cv2.INTER_AREA)
    if small.ndim == 3:
        small = cv2.cvtColor(small, cv2.COLOR_BGRA2GRAY if small.shape[2] == 4 else cv2.COLOR_BGR2GRAY)
    return small.astype(np.float32)
