"""Face detection: BlazeFace (TFLite; full-range by default, short-range on request) with an OpenCV Haar cascade
fallback, behind one small interface.

`make_detector(...)` returns an object with `detect(frame_bgr) -> list[Face]`, largest face first, boxes as
(x, y, w, h) in the frame's own pixels, which is what `FacePreprocess.crop` takes.

BlazeFace is MediaPipe's `face_detection_full_range_sparse.tflite` or `face_detection_short_range.tflite` (see their
cards in models_tflite/). Either emits raw SSD regressions for fixed anchors (2304 or 896); turning them into boxes is done here, exactly as
MediaPipe's face detection graphs do it (SsdAnchorsCalculator -> TensorsToDetectionsCalculator ->
weighted NonMaxSuppressionCalculator). Every number that step needs is in the model's metadata `.json`
(`preprocess` section, parsed by `BlazeFaceSpec.from_meta`), so the metadata fully specifies how to run the model.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar, Protocol

import cv2
import numpy as np

from ..errors import UserError
from ..modelmeta import ModelMeta, load_model
from ..runtime import TFLiteModel

BACKENDS = ("blazeface", "haar")
_HAAR_WINDOW = 24  # px, the training window of haarcascade_frontalface_default.xml


@dataclass(frozen=True)
class Face:
    """One detected face."""

    box: tuple[float, float, float, float]  # x, y, w, h in frame pixels; may reach past the frame edge
    score: float  # BlazeFace: sigmoid confidence in [0, 1]; Haar has no calibrated confidence and reports 1.0

    @property
    def area(self) -> float:
        return self.box[2] * self.box[3]


def box_iou(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    """Intersection over union of two (x, y, w, h) boxes."""
    iw = max(0.0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = a[2] * a[3] + b[2] * b[3] - inter
    return inter / union if union > 0 else 0.0


class FaceDetector(Protocol):
    def detect(self, frame_bgr: np.ndarray) -> list[Face]:
        """Faces in a BGR, BGRA or grayscale uint8 frame, largest first; [] for an empty frame."""
        ...


# Defaults below are MediaPipe's own, for face_detection_short_range.tflite:
#   mediapipe/modules/face_detection/face_detection_short_range.pbtxt (tensor 128x128, num_layers 4,
#     strides 8/16/16/16, interpolated_scale_aspect_ratio 1.0, num_boxes 896, x/y/w/h_scale 128,
#     min_score_thresh 0.5)
#   mediapipe/modules/face_detection/face_detection.pbtxt (SsdAnchorsCalculator: min_scale 0.1484375,
#     max_scale 0.75, anchor_offset 0.5, aspect_ratios 1.0, fixed_anchor_size true; TensorsToDetections:
#     num_coords 16, box_coord_offset 0, keypoint_coord_offset 4, 6 keypoints x 2 values, sigmoid_score,
#     score_clipping_thresh 100, reverse_output_order true; NonMaxSuppression: WEIGHTED, IoU 0.3;
#     ImageToTensor: keep_aspect_ratio (letterbox), float range [-1, 1], BORDER_ZERO)
# The algorithms follow mediapipe/calculators/tflite/ssd_anchors_calculator.cc and
# mediapipe/calculators/tensor/tensors_to_detections_calculator.cc (MediaPipe 0.10.x, Apache-2.0).
@dataclass(frozen=True)
class BlazeFaceSpec:
    """How to feed BlazeFace and decode its output; stored in the model's `.json` under `preprocess`."""

    # input (ImageToTensorCalculator)
    input_size: tuple[int, int] = (128, 128)  # (height, width)
    color: str = "rgb"
    input_range: tuple[float, float] = (-1.0, 1.0)  # uint8 0..255 maps linearly onto this
    letterbox: bool = True  # keep aspect ratio, pad (black) to a centred square
    # anchors (SsdAnchorsCalculatorOptions)
    num_layers: int = 4
    min_scale: float = 0.1484375
    max_scale: float = 0.75
    anchor_offset_x: float = 0.5
    anchor_offset_y: float = 0.5
    strides: tuple[int, ...] = (8, 16, 16, 16)
    aspect_ratios: tuple[float, ...] = (1.0,)
    interpolated_scale_aspect_ratio: float = 1.0
    reduce_boxes_in_lowest_layer: bool = False
    fixed_anchor_size: bool = True
    # decoding (TensorsToDetectionsCalculatorOptions)
    num_boxes: int = 896
    num_coords: int = 16
    box_coord_offset: int = 0
    keypoint_coord_offset: int = 4
    num_keypoints: int = 6
    num_values_per_keypoint: int = 2
    reverse_output_order: bool = True  # boxes are (x_center, y_center, w, h), not (y, x, h, w)
    x_scale: float = 128.0
    y_scale: float = 128.0
    w_scale: float = 128.0
    h_scale: float = 128.0
    sigmoid_score: bool = True
    score_clipping_thresh: float = 100.0
    min_score_thresh: float = 0.5
    # non-max suppression (NonMaxSuppressionCalculatorOptions)
    nms_algorithm: str = "weighted"  # "weighted" (MediaPipe's choice) or "default" (greedy)
    min_suppression_threshold: float = 0.3  # IoU
    # alignment to short-range's box convention, which the face emotion model's crop was tuned on (optional section)
    box_size: float = 1.0  # the box's width and height are multiplied by this, around its centre
    box_shift_y: float = 0.0  # then its centre moves down by this fraction of its height

    _SECTIONS: ClassVar[dict[str, tuple[str, ...]]] = {
        "input": ("input_size", "color", "input_range", "letterbox"),
        "anchors": (
            "num_layers",
            "min_scale",
            "max_scale",
            "anchor_offset_x",
            "anchor_offset_y",
            "strides",
            "aspect_ratios",
            "interpolated_scale_aspect_ratio",
            "reduce_boxes_in_lowest_layer",
            "fixed_anchor_size",
        ),
        "decode": (
            "num_boxes",
            "num_coords",
            "box_coord_offset",
            "keypoint_coord_offset",
            "num_keypoints",
            "num_values_per_keypoint",
            "reverse_output_order",
            "x_scale",
            "y_scale",
            "w_scale",
            "h_scale",
            "sigmoid_score",
            "score_clipping_thresh",
            "min_score_thresh",
        ),
        "nms": ("nms_algorithm", "min_suppression_threshold"),
        "align": ("box_size", "box_shift_y"),
    }
    _OPTIONAL: ClassVar[tuple[str, ...]] = ("align",)  # metadata written before it existed means no change

    @classmethod
    def from_meta(cls, pre: dict[str, Any], source: str = "preprocess") -> BlazeFaceSpec:
        """Parse the nested `preprocess` section; a missing or mistyped field is a UserError naming it."""
        defaults = cls()
        values: dict[str, Any] = {}
        for section, names in cls._SECTIONS.items():
            sub = pre.get(section)
            if sub is None and section in cls._OPTIONAL:
                continue
            if not isinstance(sub, dict):
                raise UserError(f"{source}: section '{section}' is missing")
            for name in names:
                if name not in sub:
                    raise UserError(f"{source}: field '{section}.{name}' is missing")
                default = getattr(defaults, name)
                try:
                    values[name] = _coerce(sub[name], default)
                except (TypeError, ValueError):
                    raise UserError(
                        f"{source}: field '{section}.{name}' should look like {default!r}, got {sub[name]!r}"
                    ) from None
        spec = cls(**values)
        if spec.nms_algorithm not in ("weighted", "default"):
            raise UserError(f"{source}: field 'nms.nms_algorithm' must be 'weighted' or 'default'")
        if spec.color not in ("rgb", "bgr"):
            raise UserError(f"{source}: field 'input.color' must be 'rgb' or 'bgr'")
        if len(spec.strides) != spec.num_layers:
            raise UserError(f"{source}: 'anchors.strides' has {len(spec.strides)} entries for {spec.num_layers} layers")
        # Values that would crash the anchor grid or allocate absurdly, caught here with the field's name.
        checks = {
            "input.input_size": len(spec.input_size) == 2 and all(8 <= v <= 1024 for v in spec.input_size),
            "input.input_range": len(spec.input_range) == 2 and all(np.isfinite(spec.input_range)),
            "anchors.strides": all(1 <= s <= 1024 for s in spec.strides),
            "anchors.aspect_ratios": len(spec.aspect_ratios) > 0 and all(0 < a < 100 for a in spec.aspect_ratios),
            "anchors.num_layers": 1 <= spec.num_layers <= 16,
            "align.box_size": 0.25 <= spec.box_size <= 4.0,
            "align.box_shift_y": -1.0 <= spec.box_shift_y <= 1.0,
        }
        for name, ok in checks.items():
            if not ok:
                raise UserError(f"{source}: field '{name}' is out of range ({getattr(spec, name.split('.')[1])!r})")
        return spec

    def to_meta(self) -> dict[str, Any]:
        flat = {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}
        return {section: {name: flat[name] for name in names} for section, names in self._SECTIONS.items()}

    def anchors(self) -> np.ndarray:
        """SSD anchors as a (num_boxes, 4) float32 array of (x_center, y_center, w, h), normalised to [0, 1].

        Same order as MediaPipe's SsdAnchorsCalculator: layers with equal stride share a feature map; for each
        map, cells row-major, and within a cell one anchor per (scale, aspect ratio).
        """
        height, width = self.input_size
        n_strides = len(self.strides)

        def scale_at(i: int) -> float:
            if n_strides == 1:
                return (self.min_scale + self.max_scale) / 2.0
            return self.min_scale + (self.max_scale - self.min_scale) * i / (n_strides - 1)

        out: list[np.ndarray] = []
        layer = 0
        while layer < self.num_layers:
            sizes: list[tuple[float, float]] = []  # (w, h) per anchor in a cell
            last = layer
            while last < n_strides and self.strides[last] == self.strides[layer]:
                scale = scale_at(last)
                if last == 0 and self.reduce_boxes_in_lowest_layer:
                    pairs = [(1.0, 0.1), (2.0, scale), (0.5, scale)]
                else:
                    pairs = [(ar, scale) for ar in self.aspect_ratios]
                    if self.interpolated_scale_aspect_ratio > 0:
                        nxt = 1.0 if last == n_strides - 1 else scale_at(last + 1)
                        pairs.append((self.interpolated_scale_aspect_ratio, math.sqrt(scale * nxt)))
                sizes += [(s * math.sqrt(ar), s / math.sqrt(ar)) for ar, s in pairs]
                last += 1
            stride = self.strides[layer]
            fm_h, fm_w = math.ceil(height / stride), math.ceil(width / stride)
            ys, xs = np.meshgrid(
                (np.arange(fm_h) + self.anchor_offset_y) / fm_h,
                (np.arange(fm_w) + self.anchor_offset_x) / fm_w,
                indexing="ij",
            )
            k = len(sizes)
            wh = np.ones((k, 2)) if self.fixed_anchor_size else np.array(sizes)
            grid = np.empty((fm_h, fm_w, k, 4))
            grid[..., 0] = xs[..., None]
            grid[..., 1] = ys[..., None]
            grid[..., 2:] = wh
            out.append(grid.reshape(-1, 4))
            layer = last
        return np.concatenate(out).astype(np.float32)


# MediaPipe's face_detection_full_range.pbtxt (the same anchors calculator and decoder, other numbers): one 48x48
# feature map at stride 4 with one anchor a cell (2304 anchors), no interpolated anchor, boxes in 192-px units, and
# MediaPipe's own score threshold of 0.6 (the daemon overrides it with face.detection_threshold).
FULL_RANGE = BlazeFaceSpec(
    input_size=(192, 192),
    num_layers=1,
    strides=(4,),
    interpolated_scale_aspect_ratio=0.0,
    num_boxes=2304,
    x_scale=192.0,
    y_scale=192.0,
    w_scale=192.0,
    h_scale=192.0,
    min_score_thresh=0.6,
    # Its boxes are larger than short-range's and sit higher: on the 66 frames of the bundled clip and the astronaut
    # photo where both found the face, short-range's box was 0.90 of its size (median; 0.81-0.98 from the 10th to the
    # 90th percentile) and 2.5 % of its height lower (the horizontal offset was 0 on the mirrored frames).
    box_size=0.9,
    box_shift_y=0.025,
)
SHORT_RANGE = BlazeFaceSpec()


def _coerce(value: Any, like: Any) -> Any:
    """Convert a JSON value to the type of the dataclass default it replaces."""
    if isinstance(like, bool):
        if not isinstance(value, bool):
            raise TypeError
        return value
    if isinstance(like, tuple):
        if not isinstance(value, list) or not value:
            raise TypeError
        return tuple(_coerce(v, like[0]) for v in value)
    if isinstance(like, int):
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError
        return value
    if isinstance(like, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError
        return float(value)
    if not isinstance(value, type(like)):
        raise TypeError
    return value


MAX_TILES = 8


def tile_regions(width: int, height: int, tiles: int) -> list[tuple[int, int, int, int]]:
    """Where the detector looks in a `width` x `height` frame: (x0, y0, x1, y1) regions in frame pixels.

    One tile is the whole frame (letterboxed into the model's square input). More tiles are squares as wide as the
    frame's short side, spread evenly along its long side: each is scaled down less than the whole frame would be,
    so a face needs fewer pixels to be found (at 640x480, two 480-px tiles scale by 0.4 instead of 0.3, and BlazeFace
    full-range finds faces of about 16 px in its 192-px input: 40 px in the frame instead of 53). Neighbouring tiles
    overlap (by 320 px at 640x480 with two tiles), and a face narrower than the overlap lies wholly inside one.
    """
    if tiles <= 1 or width == height:
        return [(0, 0, width, height)]
    side = min(width, height)
    span = max(width, height) - side  # how far the last tile's start lies from the first's
    tiles = max(tiles, math.ceil(max(width, height) / side))  # a frame wider than 2:1 needs more squares to be covered
    starts = [round(span * i / (tiles - 1)) for i in range(tiles)]
    if width > height:
        return [(s, 0, s + side, height) for s in starts]
    return [(0, s, width, s + side) for s in starts]


@dataclass
class _Filter:
    """The parts of the contract both backends share: size floor, count cap, largest first."""

    min_face_px: int
    max_faces: int

    def apply(self, faces: list[Face]) -> list[Face]:
        kept = [f for f in faces if min(f.box[2], f.box[3]) >= self.min_face_px]
        kept.sort(key=lambda f: f.area, reverse=True)
        return kept[: self.max_faces]


def _as_uint8_image(frame: np.ndarray) -> np.ndarray | None:
    """Validate a frame; None when there is nothing to look at. Squeezes (H, W, 1) to (H, W)."""
    frame = np.asarray(frame)
    if frame.size == 0 or frame.ndim not in (2, 3):
        return None
    if frame.ndim == 3:
        if frame.shape[2] == 1:
            frame = frame[:, :, 0]
        elif frame.shape[2] not in (3, 4):
            raise ValueError(f"frame has {frame.shape[2]} channels; expected gray, BGR or BGRA")
    if frame.dtype != np.uint8:
        raise ValueError(f"frame dtype is {frame.dtype}; expected uint8")
    return frame


class BlazeFaceDetector:
    """MediaPipe BlazeFace on TFLite, over the whole frame or `tiles` overlapping squares of it.

    Not thread-safe (one interpreter); make one per thread."""

    def __init__(
        self,
        model: TFLiteModel,
        spec: BlazeFaceSpec,
        meta: ModelMeta,
        min_face_px: int,
        max_faces: int,
        tiles: int = 1,
    ) -> None:
        self.meta = meta  # the daemon reports meta.version; the Haar backend has no `meta`
        source = str(meta.json_path)
        if not 1 <= tiles <= MAX_TILES:
            raise UserError(f"face.tiles is {tiles}; it must be between 1 and {MAX_TILES}")
        self.tiles = tiles
        self._model = model
        self._spec = spec
        self._filter = _Filter(min_face_px, max_faces)
        self._anchors = spec.anchors()
        if len(self._anchors) != spec.num_boxes:
            raise UserError(f"{source}: anchor settings give {len(self._anchors)} anchors, not {spec.num_boxes}")
        h, w = spec.input_size
        if model.inputs[0].shape != (1, h, w, 3):
            raise UserError(f"{source}: model input is {model.inputs[0].shape}, spec says (1, {h}, {w}, 3)")
        self._reg_idx, self._cls_idx = _find_outputs(model, spec, source)
        lo, hi = spec.input_range
        self._in_scale = np.float32((hi - lo) / 255.0)  # uint8 0..255 -> [lo, hi]
        self._in_offset = np.float32(lo)
        self._box_scale = np.array([spec.x_scale, spec.y_scale, spec.w_scale, spec.h_scale], dtype=np.float32)

    @property
    def spec(self) -> BlazeFaceSpec:
        return self._spec

    @property
    def min_face_px(self) -> int:
        return self._filter.min_face_px

    def detect(self, frame_bgr: np.ndarray) -> list[Face]:
        frame = _as_uint8_image(frame_bgr)
        if frame is None:
            return []
        regions = tile_regions(frame.shape[1], frame.shape[0], self.tiles)
        if len(regions) == 1:
            return self._filter.apply(self._detect_region(frame))
        # Faces found in two overlapping tiles are one face: merge them by the same suppression as within a pass.
        found: list[Face] = []
        for x0, y0, x1, y1 in regions:
            found += [
                Face(box=(f.box[0] + x0, f.box[1] + y0, f.box[2], f.box[3]), score=f.score)
                for f in self._detect_region(frame[y0:y1, x0:x1])
            ]
        if len(found) > 1:
            corners = np.array([(f.box[0], f.box[1], f.box[0] + f.box[2], f.box[1] + f.box[3]) for f in found])
            boxes, scores = self._nms(corners.astype(np.float32), np.array([f.score for f in found], np.float32))
            found = [
                Face(box=(float(a), float(b), float(c - a), float(d - b)), score=float(sc))
                for (a, b, c, d), sc in zip(boxes, scores, strict=True)
            ]
        return self._filter.apply(found)

    def _detect_region(self, frame: np.ndarray) -> list[Face]:
        """One invoke over one image (the frame or a tile): faces in its pixels, unfiltered."""
        tensor, (kx, ky, tx, ty) = self._letterbox(frame)
        outs = self._model.run(tensor[None])
        raw = outs[self._reg_idx].reshape(self._spec.num_boxes, self._spec.num_coords)
        logits = outs[self._cls_idx].reshape(self._spec.num_boxes)
        boxes, scores = self._decode(raw, logits)
        if len(scores) == 0:
            return []
        boxes, scores = self._nms(boxes, scores)
        boxes = self._align(boxes)
        th, tw = self._spec.input_size
        # normalised tensor coords -> tensor pixels -> frame pixels (inverse of the warp in _letterbox), less
        # the warp's half-pixel bias: warpAffine samples tensor pixel i at frame point (i - tx) / kx, i.e. its
        # centre i + 0.5 shows frame position (i - tx) / kx + 0.5. MediaPipe ignores this, so its boxes sit
        # 0.5 / k - 0.5 px right of and below the face (2 px on a 640x480 frame); on 584 FER2013 faces centred
        # in a canvas the corrected horizontal offset is 0.2 px, MediaPipe's 2.1 px.
        bx, by = 0.5 / kx - 0.5, 0.5 / ky - 0.5
        x0 = (boxes[:, 0] * tw - tx) / kx - bx
        y0 = (boxes[:, 1] * th - ty) / ky - by
        x1 = (boxes[:, 2] * tw - tx) / kx - bx
        y1 = (boxes[:, 3] * th - ty) / ky - by
        return [
            Face(box=(float(a), float(b), float(c - a), float(d - b)), score=float(s))
            for a, b, c, d, s in zip(x0, y0, x1, y1, scores, strict=True)
        ]

    def _letterbox(self, frame: np.ndarray) -> tuple[np.ndarray, tuple[float, float, float, float]]:
        """Scale the frame into the input tensor, centred and zero-padded to keep its aspect ratio.

        Same geometry and sampling as MediaPipe's ImageToTensorCalculator (OpenCV path: the frame's bounding
        square warped with INTER_LINEAR, BORDER_ZERO), which matters: a plain cv2.resize samples at pixel
        centres instead and changes BlazeFace's boxes by ~3% of the face size. With this warp, scores match the
        mediapipe 0.10.14 package exactly and boxes do up to the half-pixel correction in detect(). Returns the tensor and (kx, ky, tx, ty) with
        tensor_x = kx * frame_x + tx.
        """
        th, tw = self._spec.input_size
        fh, fw = frame.shape[:2]
        if self._spec.letterbox:
            side = max(fw, fh)
            kx, ky = tw / side, th / side
            tx, ty = (side - fw) / 2 * kx, (side - fh) / 2 * ky
        else:
            kx, ky, tx, ty = tw / fw, th / fh, 0.0, 0.0
        m = np.array([[kx, 0.0, tx], [0.0, ky, ty]], dtype=np.float64)
        small = cv2.warpAffine(
            frame, m, (tw, th), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0
        )
        # colour conversion after the warp: 19x fewer pixels on a 640x480 frame
        rgb = self._spec.color == "rgb"
        if small.ndim == 2:
            small = cv2.cvtColor(small, cv2.COLOR_GRAY2RGB)
        elif small.shape[2] == 4:
            small = cv2.cvtColor(small, cv2.COLOR_BGRA2RGB if rgb else cv2.COLOR_BGRA2BGR)
        elif rgb:
            small = cv2.cvtColor(small, cv2.COLOR_BGR2RGB)
        tensor = small.astype(np.float32)
        tensor *= self._in_scale
        tensor += self._in_offset
        return tensor, (kx, ky, tx, ty)

    def _decode(self, raw: np.ndarray, logits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Scores and (xmin, ymin, xmax, ymax) boxes, normalised, for anchors above the score threshold."""
        spec = self._spec
        if spec.sigmoid_score:
            t = spec.score_clipping_thresh
            with np.errstate(over="ignore"):  # float32 exp(100) is inf, and 1 / (1 + inf) is the right 0
                scores = 1.0 / (1.0 + np.exp(-np.clip(logits, -t, t)))
        else:
            scores = logits
        keep = np.flatnonzero(scores >= spec.min_score_thresh)
        if keep.size == 0:
            return np.empty((0, 4), np.float32), np.empty(0, np.float32)
        o = spec.box_coord_offset
        r = raw[keep, o : o + 4]
        if not spec.reverse_output_order:  # (y, x, h, w) -> (x, y, w, h)
            r = r[:, [1, 0, 3, 2]]
        a = self._anchors[keep]
        r = r / self._box_scale
        xc = r[:, 0] * a[:, 2] + a[:, 0]
        yc = r[:, 1] * a[:, 3] + a[:, 1]
        w = r[:, 2] * a[:, 2]
        h = r[:, 3] * a[:, 3]
        boxes = np.stack([xc - w / 2, yc - h / 2, xc + w / 2, yc + h / 2], axis=1)
        return boxes, scores[keep]

    def _align(self, boxes: np.ndarray) -> np.ndarray:
        """(xmin, ymin, xmax, ymax) boxes resized and moved to the convention the emotion model's crop expects."""
        k, dy = self._spec.box_size, self._spec.box_shift_y
        if k == 1.0 and dy == 0.0:
            return boxes
        w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
        cx, cy = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2 + dy * h
        return np.stack([cx - k * w / 2, cy - k * h / 2, cx + k * w / 2, cy + k * h / 2], axis=1)

    def _nms(self, boxes: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """MediaPipe's non-max suppression; "weighted" averages each cluster by score and keeps the top score.

        Loops once per surviving face (a handful), vectorised over candidates within each pass.
        """
        order = np.argsort(-scores, kind="stable")
        boxes, scores = boxes[order], scores[order]
        areas = np.maximum(boxes[:, 2] - boxes[:, 0], 0) * np.maximum(boxes[:, 3] - boxes[:, 1], 0)
        weighted = self._spec.nms_algorithm == "weighted"
        remaining = np.arange(len(scores))
        out_boxes: list[np.ndarray] = []
        out_scores: list[float] = []
        while remaining.size:
            top = remaining[0]
            b = boxes[remaining]
            iw = np.clip(np.minimum(b[:, 2], boxes[top, 2]) - np.maximum(b[:, 0], boxes[top, 0]), 0, None)
            ih = np.clip(np.minimum(b[:, 3], boxes[top, 3]) - np.maximum(b[:, 1], boxes[top, 1]), 0, None)
            inter = iw * ih
            union = areas[remaining] + areas[top] - inter
            iou = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
            cluster = iou > self._spec.min_suppression_threshold
            cluster[0] = True  # the top box belongs to its own cluster even if degenerate (zero area)
            if weighted:
                w = scores[remaining[cluster]]
                out_boxes.append((b[cluster] * w[:, None]).sum(axis=0) / w.sum())
            else:
                out_boxes.append(boxes[top])
            out_scores.append(float(scores[top]))
            remaining = remaining[~cluster]
        return np.array(out_boxes, dtype=np.float32), np.array(out_scores, dtype=np.float32)


def _find_outputs(model: TFLiteModel, spec: BlazeFaceSpec, source: str) -> tuple[int, int]:
    """Indices of the regressors and classificators outputs, by name first, then by shape (never by position)."""
    names = [o.name for o in model.outputs]
    if "regressors" in names and "classificators" in names:
        reg, cls = names.index("regressors"), names.index("classificators")
    else:
        by_last = {o.shape[-1]: i for i, o in enumerate(model.outputs)}
        if spec.num_coords not in by_last or 1 not in by_last:
            shapes = [o.shape for o in model.outputs]
            raise UserError(f"{source}: cannot tell regressors from classificators in model outputs {shapes}")
        reg, cls = by_last[spec.num_coords], by_last[1]
    want = {reg: (1, spec.num_boxes, spec.num_coords), cls: (1, spec.num_boxes, 1)}
    for i, shape in want.items():
        if model.outputs[i].shape != shape:
            raise UserError(f"{source}: model output '{names[i]}' is {model.outputs[i].shape}, spec expects {shape}")
    return reg, cls


@dataclass
class HaarDetector:
    """OpenCV's frontal-face Haar cascade: no model file needed, slower and less accurate, no real confidence."""

    min_face_px: int
    max_faces: int
    scale_factor: float = 1.1
    min_neighbors: int = 5
    _cascade: Any = field(init=False, repr=False)
    _filter: _Filter = field(init=False, repr=False)

    def __post_init__(self) -> None:
        path = cv2.data.haarcascades + "haarcascade_frontalface_default.xml"
        self._cascade = cv2.CascadeClassifier(path)
        if self._cascade.empty():
            raise UserError(f"{path}: OpenCV Haar cascade not found; reinstall opencv-python-headless")
        self._filter = _Filter(self.min_face_px, self.max_faces)

    def detect(self, frame_bgr: np.ndarray) -> list[Face]:
        frame = _as_uint8_image(frame_bgr)
        if frame is None:
            return []
        if frame.ndim == 3:
            frame = cv2.cvtColor(frame, cv2.COLOR_BGRA2GRAY if frame.shape[2] == 4 else cv2.COLOR_BGR2GRAY)
        # The cascade's window is 24x24 px, so a frame shrunk until min_face_px becomes 24 px loses no face we
        # would keep, and scans far fewer positions (640x480, min 40 px: ~60 ms instead of ~90 ms here).
        f = min(1.0, _HAAR_WINDOW / max(self.min_face_px, 1))
        if f < 1.0:
            frame = cv2.resize(frame, None, fx=f, fy=f, interpolation=cv2.INTER_AREA)
        rects = self._cascade.detectMultiScale(frame, scaleFactor=self.scale_factor, minNeighbors=self.min_neighbors)
        boxes = (np.asarray(rects, dtype=np.float64).reshape(-1, 4) / f).tolist()
        faces = [Face(box=(x, y, w, h), score=1.0) for x, y, w, h in boxes]
        return self._filter.apply(faces)


# The narrowest face each BlazeFace model finds reliably, in pixels of its own input tensor, from photo faces in
# 640x480 frames (benchmarks/face_distance.py, docs/face-reach.md): short-range found 93 % at 96 px (19 px of its
# 128-px input); full-range with two 480-px tiles 87 % at 40 px and 97 % at 48 px (16-19 px of its 192-px input),
# half of them at 32 px; full-range over the whole frame 80 % at 48 px (14 px).
SMALLEST_FACE_INPUT_PX = {"blazeface_short_range": 19.0, "blazeface_full_range_sparse": 16.0}
FACE_WIDTH_M = 0.15  # an adult face, ear to ear
TYPICAL_HFOV_DEG = 70.0  # a typical USB webcam's horizontal field of view


def smallest_face_px(detector: FaceDetector, width: int, height: int) -> float:
    """The narrowest face, in frame pixels, that this detector finds in a `width` x `height` frame."""
    if isinstance(detector, HaarDetector):
        return float(max(detector.min_face_px, _HAAR_WINDOW))
    assert isinstance(detector, BlazeFaceDetector)
    floor = float(detector.min_face_px)
    in_px = SMALLEST_FACE_INPUT_PX.get(detector.meta.name, 19.0)  # an unknown model: assume short-range's reach
    region = max(width, height) if len(tile_regions(width, height, detector.tiles)) == 1 else min(width, height)
    return max(floor, in_px * region / max(detector.spec.input_size))


def reach_m(face_px: float, width: int, hfov_deg: float = TYPICAL_HFOV_DEG) -> float:
    """How far away (metres) a face appears `face_px` wide in a frame `width` px wide, for a pinhole camera."""
    focal_px = (width / 2) / math.tan(math.radians(hfov_deg) / 2)
    return FACE_WIDTH_M * focal_px / face_px


def make_detector(
    backend: str,
    meta_path: Path | None,
    min_face_px: int = 40,
    max_faces: int = 3,
    score_threshold: float = 0.5,
    num_threads: int = 1,
    tiles: int = 1,
) -> FaceDetector:
    """Build the configured detector. `score_threshold` overrides the metadata's `decode.min_score_thresh`."""
    if max_faces < 1:
        raise UserError(f"max_faces is {max_faces}; it must be at least 1")
    if min_face_px < 0:
        raise UserError(f"min_face_px is {min_face_px}; it must be 0 or more")
    if not 0.0 < score_threshold < 1.0:
        raise UserError(f"score_threshold is {score_threshold}; it must be between 0 and 1")
    if backend == "haar":
        return HaarDetector(min_face_px=min_face_px, max_faces=max_faces)
    if backend != "blazeface":
        raise UserError(f"face detector backend {backend!r} is unknown; use one of {', '.join(BACKENDS)}")
    if meta_path is None:
        raise UserError("the blazeface detector needs its model metadata (.json) path; check the models section")
    meta, model = load_model(Path(meta_path), expect_kind="face_detector", num_threads=num_threads)
    source = str(meta.json_path)
    spec = BlazeFaceSpec.from_meta(meta.preprocess, source=f"{source}: preprocess")
    spec = replace(spec, min_score_thresh=float(score_threshold))
    return BlazeFaceDetector(model, spec, meta, min_face_px=min_face_px, max_faces=max_faces, tiles=tiles)
