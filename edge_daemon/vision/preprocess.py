"""Face crop and input preparation, shared by the daemon and `training/` so both feed the model identical tensors.

The face emotion model's metadata (`preprocess` section) says how: square crop
around the detected box grown by `crop_margin` and moved by `crop_shift_y`, grayscale, resized to `size`,
scaled by `scale` and shifted by `offset`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

# Image files that `classify face` and training's loaders read (all decoded by cv2.imread); one list for both.
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".pgm", ".ppm", ".tif", ".tiff", ".webp"})


@dataclass(frozen=True)
class FacePreprocess:
    """How a face crop becomes the model's float input (before quantisation)."""

    size: tuple[int, int] = (48, 48)  # (height, width)
    color: str = "gray"  # "gray" or "rgb"
    crop_margin: float = 0.2  # grow the detector's box by this fraction of its longer side
    # BlazeFace boxes run eyebrows-to-chin; FER2013 crops are centred ~0.1 box-side higher (measured on 600 val faces).
    crop_shift_y: float = -0.1
    scale: float = 1.0 / 255.0
    offset: float = 0.0
    # Average the model's output on the crop and on its mirror image (test-time augmentation): two invokes per face.
    hflip_average: bool = False
    # ...but only for faces whose one-pass top probability (before calibration) is below this: the mirror changes
    # answers almost only where the model is unsure, so confident faces keep one invoke. 1.0 mirrors every face; a
    # bound at or under 1/classes mirrors none (a top probability is never lower).
    hflip_below: float = 1.0

    def __post_init__(self) -> None:
        if len(self.size) != 2 or not all(8 <= v <= 1024 for v in self.size):
            raise ValueError(f"size {self.size} must be two sides of 8 to 1024 pixels")
        if self.color not in ("gray", "rgb"):
            raise ValueError(f"color {self.color!r} must be 'gray' or 'rgb'")
        if not (0 <= self.crop_margin <= 3 and -1 <= self.crop_shift_y <= 1):
            raise ValueError("crop_margin must be in [0, 3] and crop_shift_y in [-1, 1]")
        if not (np.isfinite(self.scale) and np.isfinite(self.offset) and self.scale != 0):
            raise ValueError("scale must be finite and non-zero, offset finite")
        if not 0 < self.hflip_below <= 1:
            raise ValueError(f"hflip_below {self.hflip_below} must be in (0, 1]")

    @classmethod
    def from_meta(cls, pre: dict[str, Any]) -> FacePreprocess:
        """Raises one of modelmeta.SPEC_ERRORS if a value is missing, mistyped or out of range."""
        return cls(
            size=(int(pre["size"][0]), int(pre["size"][1])),
            color=str(pre.get("color", "gray")),
            crop_margin=float(pre.get("crop_margin", 0.2)),
            crop_shift_y=float(pre.get("crop_shift_y", 0.0)),
            scale=float(pre["scale"]),
            offset=float(pre.get("offset", 0.0)),
            hflip_average=_flag(pre.get("hflip_average", False)),
            hflip_below=_number(pre.get("hflip_below", 1.0), "hflip_below"),
        )

    def to_meta(self) -> dict[str, Any]:
        return {
            "size": list(self.size),
            "color": self.color,
            "crop_margin": self.crop_margin,
            "crop_shift_y": self.crop_shift_y,
            "scale": self.scale,
            "offset": self.offset,
            "hflip_average": self.hflip_average,
            "hflip_below": self.hflip_below,
        }

    @property
    def channels(self) -> int:
        return 1 if self.color == "gray" else 3

    def crop(self, frame_bgr: np.ndarray, box: tuple[float, float, float, float]) -> np.ndarray:
        """The square face region (x, y, w, h in pixels) of a frame, in the frame's own colours; edges repeat outside."""
        x, y, w, h = box
        side = max(w, h) * (1.0 + self.crop_margin)
        cx, cy = x + w / 2.0, y + h / 2.0 + self.crop_shift_y * max(w, h)
        x0, y0 = int(round(cx - side / 2)), int(round(cy - side / 2))
        s = max(int(round(side)), 1)
        # Only the crop is touched: `prepare` converts its colours, and edges are repeated (BORDER_REPLICATE) around
        # the part inside the frame rather than around the whole frame.
        fh, fw = frame_bgr.shape[:2]
        top, left, bottom, right = max(0, -y0), max(0, -x0), max(0, y0 + s - fh), max(0, x0 + s - fw)
        if top + bottom >= s or left + right >= s:  # entirely outside: repeat the nearest edge pixels
            rows, cols = np.clip(np.arange(y0, y0 + s), 0, fh - 1), np.clip(np.arange(x0, x0 + s), 0, fw - 1)
            return frame_bgr[np.ix_(rows, cols)]
        inside = frame_bgr[y0 + top : y0 + s - bottom, x0 + left : x0 + s - right]
        if top or left or bottom or right:
            inside = cv2.copyMakeBorder(inside, top, bottom, left, right, cv2.BORDER_REPLICATE)
        return inside

    def prepare(self, face: np.ndarray) -> np.ndarray:
        """Turn a face crop (uint8, any size, gray or BGR) into the model's float32 input of shape (H, W, C)."""
        img = self._to_color(face)
        h, w = self.size
        if img.shape[:2] != (h, w):
            interp = cv2.INTER_AREA if img.shape[0] > h else cv2.INTER_LINEAR
            img = cv2.resize(img, (w, h), interpolation=interp)
        x = img.astype(np.float32) * self.scale + self.offset
        return x.reshape(h, w, self.channels)

    def _to_color(self, img: np.ndarray) -> np.ndarray:
        if img.ndim == 3 and img.shape[2] == 1:
            img = img[:, :, 0]
        four = img.ndim == 3 and img.shape[2] == 4  # BGRA frames from some cameras
        if self.color == "gray":
            return img if img.ndim == 2 else cv2.cvtColor(img, cv2.COLOR_BGRA2GRAY if four else cv2.COLOR_BGR2GRAY)
        if img.ndim == 2:
            return cv2.cvtColor(img, cv2.COLOR_GRAY2RGB)
        return cv2.cvtColor(img, cv2.COLOR_BGRA2RGB if four else cv2.COLOR_BGR2RGB)


def _number(value: object, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {value!r}")
    return float(value)


def _flag(value: object) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"hflip_average must be true or false, got {value!r}")
    return value
