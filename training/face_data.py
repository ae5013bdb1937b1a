"""Face dataset parsers: the FER2013 CSV (`emotion,pixels,Usage`) and folder-per-class trees.

Folder trees cover the FER2013 Kaggle layout (`train/<emotion>/*.jpg`) and CK+/JAFFE/AffectNet-style
exports whose class folder names are folded onto CANONICAL through `edge_daemon.labels.normalise`.
Unknown class folders and unreadable images are reported (count and examples), never silently dropped.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from edge_daemon.labels import CANONICAL, normalise
from edge_daemon.vision.preprocess import IMAGE_SUFFIXES as IMAGE_EXTS
from edge_daemon.vision.preprocess import FacePreprocess

from .common import DatasetError

# FER2013's CSV codes 0..6 are CANONICAL's order by construction (labels.py keeps FER2013's order).
FER_CSV_CODES = dict(enumerate(CANONICAL))


@dataclass
class FaceSet:
    """Raw uint8 face crops (any size, gray or colour) with CANONICAL label indices."""

    images: list[np.ndarray] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)
    rejected: list[tuple[str, str]] = field(default_factory=list)  # (file or folder, reason)

    def extend(self, other: FaceSet) -> None:
        self.images += other.images
        self.labels += other.labels
        self.sources += other.sources
        self.rejected += other.rejected

    def summary(self) -> str:
        counts = np.bincount(np.asarray(self.labels, dtype=int), minlength=len(CANONICAL)) if self.labels else []
        parts = [f"{n}={c}" for n, c in zip(CANONICAL, counts, strict=False)]
        line = f"{len(self.labels)} images ({', '.join(parts)})"
        if self.rejected:
            ex = "; ".join(f"{p}: {why}" for p, why in self.rejected[:3])
            line += f"; {len(self.rejected)} rejected, e.g. {ex}"
        return line


def load_fer_csv(path: Path, usages: tuple[str, ...] | None = None) -> FaceSet:
    """Rows of the original FER2013 CSV; `usages` picks e.g. ('Training',) or ('PublicTest',); None = all rows."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: FER2013 CSV not found")
    out = FaceSet()
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        if not reader.fieldnames or not {"emotion", "pixels"} <= set(reader.fieldnames):
            raise DatasetError(f"{path}: not a FER2013 CSV (need columns emotion,pixels[,Usage])")
        for i, row in enumerate(reader, start=2):
            where = f"{path.name}:{i}"
            if usages and row.get("Usage") not in usages:
                continue
            try:
                code = int(row["emotion"])
                px = np.array(row["pixels"].split(), dtype=np.int32)
            except (ValueError, AttributeError):
                out.rejected.append((where, "unparsable emotion or pixels"))
                continue
            side = int(round(np.sqrt(px.size)))
            if code not in FER_CSV_CODES or side * side != px.size or px.size == 0 or px.min() < 0 or px.max() > 255:
                out.rejected.append((where, f"bad row (emotion={code}, {px.size} pixels)"))
                continue
            out.images.append(px.astype(np.uint8).reshape(side, side))
            out.labels.append(code)
            out.sources.append(where)
    return out


def load_folder_tree(root: Path) -> FaceSet:
    """`root/<class>/*.<img>`; class names go through `normalise` and must land on CANONICAL."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root}: face dataset folder not found")
    out = FaceSet()
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir())
    if not class_dirs:
        raise DatasetError(f"{root}: no class folders (expected {root}/<emotion>/*.jpg)")
    for d in class_dirs:
        name = normalise(d.name)
        files = sorted(p for p in d.iterdir() if p.is_file())
        if name not in CANONICAL:
            out.rejected += [(str(p), f"unknown class folder {d.name!r}") for p in files] or [(str(d), "empty")]
            continue
        idx = CANONICAL.index(name)
        for p in files:
            if p.suffix.lower() not in IMAGE_EXTS:
                out.rejected.append((str(p), "not an image file"))
                continue
            img = cv2.imread(str(p), cv2.IMREAD_UNCHANGED)
            if img is None:
                out.rejected.append((str(p), "unreadable image"))
                continue
            if img.dtype != np.uint8:
                img = cv2.normalize(img, None, 0, 255, cv2.NORM_MINMAX).astype(np.uint8)
            if img.ndim == 3 and img.shape[2] == 4:
                img = cv2.cvtColor(img, cv2.COLOR_BGRA2BGR)
            out.images.append(img)
            out.labels.append(idx)
            out.sources.append(str(p))
    return out


def load_any(path: Path, usages: tuple[str, ...] | None = None) -> FaceSet:
    """A FER2013 CSV file or a folder-per-class tree, whichever `path` is."""
    path = Path(path)
    if path.is_file() and path.suffix.lower() == ".csv":
        return load_fer_csv(path, usages)
    if path.is_dir():
        return load_folder_tree(path)
    raise DatasetError(f"{path}: not a FER2013 CSV or a folder of class folders")


def load_many(paths: list[Path], usages: tuple[str, ...] | None = None) -> FaceSet:
    """Merge several corpora into one set."""
    out = FaceSet()
    for p in paths:
        out.extend(load_any(p, usages))
    if not out.labels:
        raise DatasetError(f"{', '.join(map(str, paths))}: no usable face images found")
    return out


def prepare_all(fs: FaceSet, pre: FacePreprocess) -> tuple[np.ndarray, np.ndarray]:
    """Model inputs through the daemon's own `FacePreprocess.prepare` (no train/serve skew)."""
    x = np.stack([pre.prepare(img) for img in fs.images]).astype(np.float32)
    y = np.asarray(fs.labels, dtype=np.int64)
    return x, y
