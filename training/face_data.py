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


# ---------------------------------------------------------------- FER+ votes (Barsoum et al. 2016), joined by row

FERPLUS_COLUMNS = (
    "neutral",
    "happiness",
    "surprise",
    "sadness",
    "anger",
    "disgust",
    "fear",
    "contempt",
    "unknown",
    "NF",
)
# Where each CANONICAL class's votes are (names folded by labels.normalise: happiness -> happy ...); contempt has no
# FER2013 class, unknown and NF (not a face) are no emotion.
FERPLUS_OF_CANONICAL = [next(i for i, c in enumerate(FERPLUS_COLUMNS[:7]) if normalise(c) == lab) for lab in CANONICAL]
FERPLUS_UNKNOWN, FERPLUS_NF = FERPLUS_COLUMNS.index("unknown"), FERPLUS_COLUMNS.index("NF")
FERPLUS_CONTEMPT = FERPLUS_COLUMNS.index("contempt")
# The join is refused below this agreement of FER+ majority with FER2013's label. Aligned, the first 200 rows agree
# on 60 %; shifted by one row, 13-19 % (chance over 7 classes with FER2013's class sizes is about 18 %).
FERPLUS_MIN_AGREEMENT = 0.5
# ... and below this share of images that found their row (a rows file for another tree, or half a tree).
FERPLUS_MIN_COVERAGE = 0.9
# A tree image matches an original row when their pixels differ by at most this many grey levels on mean. Measured on
# fer2013_csv_sample against the PNG train tree: 0.5-2.0 for the row's own image; the next image is 4.1 away for one
# row (a near copy), 6.8 or more for the rest, byte-identical duplicates aside. The bound is looser than that gap
# because val is JPEG (further from its rows, not measurable here: the sample has no PublicTest row); it is safe as
# the match takes the nearest image with the row's own label first.
ROW_MATCH_MAX = 6.0


@dataclass(frozen=True)
class FerPlus:
    """FER+ vote counts, row i = row i of the original fer2013.csv (Training rows, then PublicTest)."""

    usage: tuple[str, ...]
    votes: np.ndarray  # (rows, 10) int, FERPLUS_COLUMNS order

    def soft(self) -> np.ndarray:
        """Per row, the vote distribution over CANONICAL (rows, 7), NaN where the row gives no emotion target.

        contempt, unknown and NF votes are dropped and the rest renormalised; a row whose largest count is on
        unknown or NF (ties included: FER+'s own rule for "no label"), on contempt (a face of a class we do not have:
        renormalising would hand its minority votes a strong target) or with no vote in our 7 classes is NaN."""
        v = self.votes.astype(np.float64)
        seven = v[:, FERPLUS_OF_CANONICAL]
        top = v.max(1)
        no_label = [FERPLUS_UNKNOWN, FERPLUS_NF, FERPLUS_CONTEMPT]
        bad = (v[:, no_label] == top[:, None]).any(1) | (seven.sum(1) == 0)
        out = seven / np.maximum(seven.sum(1, keepdims=True), 1)
        out[bad] = np.nan
        return out

    def majority(self) -> np.ndarray:
        """Per row, the CANONICAL index of the one class with the most votes; -1 for ties, unknown, NF and contempt
        (30,336 of the 32,298 rows keep one of FER+'s 8 emotions; 186 of those are contempt)."""
        v = self.votes
        top = v.max(1)
        unique = (v == top[:, None]).sum(1) == 1
        col = v.argmax(1)
        to_canon = np.full(len(FERPLUS_COLUMNS), -1)
        to_canon[FERPLUS_OF_CANONICAL] = np.arange(len(CANONICAL))
        return np.where(unique, to_canon[col], -1)


def load_ferplus(path: Path) -> FerPlus:
    """`fer2013new.csv` (or its Training+PublicTest part): Usage, Image name, then the 10 vote columns."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: FER+ CSV not found (--ferplus takes fer2013new.csv from microsoft/FERPlus)")
    usage, votes = [], []
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        header = [h.strip() for h in next(reader, [])]
        if header[2:] != list(FERPLUS_COLUMNS):
            raise DatasetError(f"{path}: not a FER+ CSV (need Usage,Image name,{','.join(FERPLUS_COLUMNS)})")
        for i, row in enumerate(reader, start=2):
            try:
                votes.append([int(c or 0) for c in row[2:]])
            except ValueError:
                raise DatasetError(f"{path}:{i}: vote counts are not integers") from None
            if len(votes[-1]) != len(FERPLUS_COLUMNS):
                raise DatasetError(f"{path}:{i}: {len(votes[-1])} vote columns, expected {len(FERPLUS_COLUMNS)}")
            usage.append(row[0])
    return FerPlus(tuple(usage), np.asarray(votes, dtype=np.int64).reshape(-1, len(FERPLUS_COLUMNS)))


def tree_key(source: str) -> str:
    """How a tree image is named in a rows file: `<class folder>/<file name>` (FER2013's Kaggle names repeat across
    classes: Training_52789098.png and Training_8475486.png each occur in two folders)."""
    p = Path(source)
    return f"{p.parent.name}/{p.name}"


def load_rows_file(path: Path) -> dict[str, int]:
    """A rows file (`image,row`): each tree image's row in the original fer2013.csv (see `build_rows`)."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: rows file not found (make one with `python -m training.face_data rows`)")
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        if not reader.fieldnames or not {"image", "row"} <= set(reader.fieldnames):
            raise DatasetError(f"{path}: not a rows file (need columns image,row)")
        try:
            return {r["image"]: int(r["row"]) for r in reader}
        except ValueError:
            raise DatasetError(f"{path}: a row number is not an integer") from None


def source_rows(sources: list[str], rows: dict[str, int] | None) -> np.ndarray:
    """Each image's row in the original fer2013.csv, -1 where unknown.

    A FER2013 CSV's rows are the original rows themselves (`load_fer_csv` records `<file>:<line>`, line 2 = row 0);
    a tree's images need a rows file, since the Kaggle copy's names (`Training_<n>`) carry no row number."""
    out = np.full(len(sources), -1, dtype=np.int64)
    for i, s in enumerate(sources):
        name, _, line = s.rpartition(":")
        if name.lower().endswith(".csv") and line.isdigit():
            out[i] = int(line) - 2
        elif rows is not None:
            out[i] = rows.get(tree_key(s), -1)
    return out


@dataclass(frozen=True)
class FerPlusJoin:
    """FER+ joined to one split: per image the row (-1 none), its soft target (NaN none) and majority (-1 none)."""

    rows: np.ndarray
    soft: np.ndarray
    majority: np.ndarray
    agreement: float  # FER+ majority == FER2013 label, over the images that have both
    coverage: float  # share of images that found their row

    def summary(self) -> str:
        n = len(self.rows)
        has_soft = int(np.sum(~np.isnan(self.soft[:, 0])))
        return (
            f"FER+ joined to {int(np.sum(self.rows >= 0))} of {n} images ({self.coverage:.1%}); soft targets for "
            f"{has_soft}, majority labels for {int(np.sum(self.majority >= 0))}; FER+ majority agrees with the "
            f"FER2013 label on {self.agreement:.1%}"
        )


def join_ferplus(
    ferplus: FerPlus, sources: list[str], labels: np.ndarray, rows: dict[str, int] | None, what: str
) -> FerPlusJoin:
    """FER+ votes for each image, by its row in the original fer2013.csv, refused when the join looks wrong.

    Refused (DatasetError) when fewer than FERPLUS_MIN_COVERAGE of the images find a row, or when FER+ majority
    agrees with the FER2013 label on fewer than FERPLUS_MIN_AGREEMENT of them: a join off by one row agrees at
    about chance, and training on it would teach noise."""
    r = source_rows(sources, rows)
    r = np.where(r < len(ferplus.votes), r, -1)
    ok = r >= 0
    soft = np.full((len(r), len(CANONICAL)), np.nan)
    soft[ok] = ferplus.soft()[r[ok]]
    maj = np.full(len(r), -1)
    maj[ok] = ferplus.majority()[r[ok]]
    both = maj >= 0
    agreement = float(np.mean(maj[both] == np.asarray(labels)[both])) if both.any() else 0.0
    join = FerPlusJoin(r, soft, maj, agreement, float(ok.mean()) if len(r) else 0.0)
    if join.coverage < FERPLUS_MIN_COVERAGE:
        raise DatasetError(
            f"{what}: only {int(ok.sum())} of {len(r)} images have a FER+ row ({join.coverage:.1%}, need "
            f"{FERPLUS_MIN_COVERAGE:.0%}): a FER2013 tree's names carry no row number, so --ferplus-rows must list these "
            "images (a rows file made by `python -m training.face_data rows` from the original fer2013.csv), or train "
            "from fer2013.csv itself"
        )
    if join.agreement < FERPLUS_MIN_AGREEMENT:
        raise DatasetError(
            f"{what}: FER+ majority agrees with the FER2013 label on {join.agreement:.1%} of {int(both.sum())} images "
            f"(need {FERPLUS_MIN_AGREEMENT:.0%}; aligned rows agree on about 60 %, a one-row shift on about 15 %): "
            "the FER+ rows are not aligned with these images; check the rows file and the FER+ CSV"
        )
    return join


def build_rows(csv_path: Path, trees: list[Path], usages: dict[str, str] | None = None) -> tuple[dict[str, int], int]:
    """Match each image of FER2013 Kaggle-style trees to its row in the original fer2013.csv, by pixels.

    The Kaggle copy's `Training_<n>` / `PublicTest_<n>` numbers are random ids (uniform over 0..1e8, no relation to
    the row order: checked on the first 200 rows), so the only link back to the rows is the image itself. A row
    goes to the nearest unmatched image of the same usage (file-name prefix) within ROW_MATCH_MAX grey levels on
    mean, an image with the row's own label first (FER2013 has byte-identical images, some with different labels).
    Returns the rows file's mapping and the number of CSV rows left without an image."""
    from sklearn.decomposition import PCA
    from sklearn.neighbors import NearestNeighbors

    usages = usages or {"Training": "Training_", "PublicTest": "PublicTest_"}
    imgs: list[np.ndarray] = []
    keys: list[str] = []
    labels: list[int] = []
    for t in trees:
        fs = load_folder_tree(t)
        for img, lab, src in zip(fs.images, fs.labels, fs.sources, strict=True):
            g = img if img.ndim == 2 else cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)
            if g.shape == (48, 48):
                imgs.append(g)
                keys.append(tree_key(src))
                labels.append(lab)
    if not imgs:
        raise DatasetError(f"{', '.join(map(str, trees))}: no 48x48 images to match")
    flat = np.stack(imgs).reshape(len(imgs), -1).astype(np.float32)
    prefix = np.array([k.split("/", 1)[1].split("_", 1)[0] + "_" for k in keys])
    csv_rows = load_fer_csv(csv_path)
    row_of = np.array([int(s.rpartition(":")[2]) - 2 for s in csv_rows.sources])
    usage_of = _csv_usages(csv_path)
    pca = PCA(32, random_state=0).fit(flat[:: max(1, len(flat) // 5000)])
    mapping: dict[str, int] = {}
    unmatched = 0
    for usage, pfx in usages.items():
        pool = np.flatnonzero(prefix == pfx)
        want = [i for i, r in enumerate(row_of) if usage_of.get(int(r)) == usage]
        if not len(pool) or not want:
            continue
        nn = NearestNeighbors(n_neighbors=min(8, len(pool))).fit(pca.transform(flat[pool]))
        q = np.stack([csv_rows.images[i].reshape(-1) for i in want]).astype(np.float32)
        _, cand = nn.kneighbors(pca.transform(q))
        taken: set[int] = set()
        for qi, i in enumerate(want):
            c = pool[cand[qi]]
            d = np.abs(flat[c] - q[qi]).mean(1)
            order = sorted(range(len(c)), key=lambda j: (labels[c[j]] != csv_rows.labels[i], d[j]))
            hit = next((c[j] for j in order if d[j] <= ROW_MATCH_MAX and c[j] not in taken), None)
            if hit is None:
                unmatched += 1
                continue
            taken.add(int(hit))
            mapping[keys[hit]] = int(row_of[i])
    return mapping, unmatched


def _csv_usages(path: Path) -> dict[int, str]:
    with open(path, newline="", encoding="utf-8") as f:
        return {i: r.get("Usage", "") for i, r in enumerate(csv.DictReader(f))}


def write_rows_file(path: Path, mapping: dict[str, int]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["image", "row"])
        for k, r in sorted(mapping.items(), key=lambda kv: kv[1]):
            w.writerow([k, r])


def main(argv: list[str] | None = None) -> int:
    """`python -m training.face_data rows --csv fer2013.csv --tree train --tree val --out rows.csv`."""
    import argparse

    ap = argparse.ArgumentParser(prog="python -m training.face_data", description="FER2013 tree -> original CSV rows")
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("rows", help="match each tree image to its row of the original fer2013.csv (by pixels)")
    r.add_argument("--csv", type=Path, required=True, help="the original fer2013.csv (emotion,pixels,Usage)")
    r.add_argument("--tree", type=Path, action="append", required=True, help="a FER2013 Kaggle-style tree")
    r.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    mapping, unmatched = build_rows(args.csv, args.tree)
    write_rows_file(args.out, mapping)
    print(f"{args.out}: {len(mapping)} images matched to their rows; {unmatched} CSV rows found no image")
    return 0


if __name__ == "__main__":
    from .common import run_main

    run_main(main)
