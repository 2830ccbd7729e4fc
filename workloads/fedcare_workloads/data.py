"""The on-disk dataset a hospital provides, and its loader.

Layout (documented in workloads/README.md):

    <dataset>/labels.csv        header: id,label,split[,file]
    <dataset>/images/<id>.png   grayscale (8/16-bit) or colour PNG, any size
    <dataset>/images/<id>.dcm   or a de-identified DICOM file instead

`split` is one of train / val / test. `file` (optional) is a path relative to
<dataset>; without it `images/<id>.png` and then `images/<id>.dcm` are tried.

Images are converted to float32 grayscale in [0, 1] and letterboxed to
image-size x image-size: scaled so the longer side fits (aspect ratio kept,
antialiased), the rest padded with 0, i.e. the black that surrounds an
ultrasound sector anyway. Images under 16 px on a side or with an aspect ratio
above 4:1 are refused: they are thumbnails or strips, not scans.

Every error names the file (relative to the dataset), the labels.csv line and
what to do. No error ever carries pixel data or DICOM values.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

SPLITS = ("train", "val", "test")
MIN_SIDE = 16
MAX_ASPECT = 4.0
REQUIRED_COLUMNS = ("id", "label", "split")


class DatasetError(ValueError):
    """The dataset cannot be used; the message says which file/field and what to do."""


@dataclass(frozen=True)
class Row:
    line: int
    id: str
    label: int
    split: str
    file: Path  # absolute, inside the dataset directory


@dataclass
class ImageSet:
    images: np.ndarray  # float32 [N, 1, S, S] in [0, 1]
    labels: np.ndarray  # int64 [N]

    def __len__(self) -> int:
        return int(self.labels.shape[0])


@dataclass
class Dataset:
    root: Path
    classes: tuple[str, ...]
    splits: dict[str, ImageSet]
    summary: dict = field(default_factory=dict)

    def split(self, name: str) -> ImageSet:
        part = self.splits.get(name)
        if part is None or len(part) == 0:
            raise DatasetError(
                f"{self.root / 'labels.csv'}: no rows with split={name}; add {name} rows "
                f"(split must be one of {', '.join(SPLITS)})"
            )
        return part


def resolve_data_path(data_path: Path | str, data_root: Path | str) -> Path:
    """The dataset directory, refused unless it resolves (symlinks followed) inside
    the data mount: a node config must not be able to point the ClientApp at the
    rest of the pod's filesystem."""
    root = Path(os.path.realpath(data_root))
    path = Path(os.path.realpath(data_path))
    if path != root and root not in path.parents:
        raise DatasetError(
            f"data-path '{data_path}' resolves to '{path}', which is outside the data mount "
            f"'{root}' (node-config 'data-root'); point data-path at a directory inside the mount"
        )
    if not path.is_dir():
        raise DatasetError(f"data-path '{data_path}' is not a directory; expected a dataset folder with labels.csv")
    return path


def read_labels(dataset: Path, classes: tuple[str, ...]) -> list[Row]:
    dataset = Path(os.path.realpath(dataset))
    labels_csv = dataset / "labels.csv"
    if not labels_csv.is_file():
        found = sorted(p.name for p in dataset.iterdir())[:10] if dataset.is_dir() else []
        raise DatasetError(
            f"{labels_csv} is missing (found {found or 'nothing'}); every dataset needs a "
            "labels.csv with the header id,label,split"
        )
    index = {c: i for i, c in enumerate(classes)}
    rows: list[Row] = []
    seen: set[str] = set()
    with labels_csv.open(newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        header = [h.strip() for h in (reader.fieldnames or [])]
        missing = [c for c in REQUIRED_COLUMNS if c not in header]
        if missing:
            raise DatasetError(
                f"{labels_csv}: header {header} lacks column(s) {missing}; the first line must be id,label,split[,file]"
            )
        for raw in reader:
            line = reader.line_num
            rec = {(k or "").strip(): (v or "").strip() for k, v in raw.items()}
            rid, label, split = rec["id"], rec["label"], rec["split"].lower()
            where = f"{labels_csv} line {line}"
            if not rid:
                raise DatasetError(f"{where}: empty id")
            if rid in seen:
                raise DatasetError(f"{where}: duplicate id '{rid}'; ids must be unique")
            seen.add(rid)
            if label not in index:
                raise DatasetError(
                    f"{where} (id '{rid}'): unknown label '{label}'; expected one of {', '.join(classes)} "
                    "(run-config 'classes')"
                )
            if split not in SPLITS:
                raise DatasetError(
                    f"{where} (id '{rid}'): unknown split '{split}'; expected one of {', '.join(SPLITS)}"
                )
            rows.append(Row(line, rid, index[label], split, _image_file(dataset, rid, rec.get("file", ""), where)))
    if not rows:
        raise DatasetError(f"{labels_csv} has a header but no rows: the dataset is empty")
    return rows


def _image_file(dataset: Path, rid: str, file: str, where: str) -> Path:
    if file:
        candidates = [dataset / file]
    else:
        candidates = [dataset / "images" / f"{rid}.png", dataset / "images" / f"{rid}.dcm"]
    for cand in candidates:
        real = Path(os.path.realpath(cand))
        if dataset not in real.parents:
            raise DatasetError(f"{where} (id '{rid}'): file '{file}' points outside the dataset directory")
        if real.is_file():
            return real
    tried = ", ".join(str(c.relative_to(dataset)) for c in candidates)
    raise DatasetError(f"{where} (id '{rid}'): image not found (tried {tried})")


def load_dataset(
    data_path: Path | str,
    data_root: Path | str,
    classes: tuple[str, ...],
    image_size: int,
    splits: tuple[str, ...] = ("train", "val"),
) -> Dataset:
    dataset = resolve_data_path(data_path, data_root)
    rows = read_labels(dataset, classes)
    wanted = [r for r in rows if r.split in splits]
    if not wanted:
        raise DatasetError(
            f"{dataset / 'labels.csv'}: no rows with split in {list(splits)} ({len(rows)} rows in other splits)"
        )
    resized = 0
    parts: dict[str, tuple[list[np.ndarray], list[int]]] = {s: ([], []) for s in splits}
    for row in wanted:
        img, was_resized = load_image(
            row.file, image_size, f"{row.file.relative_to(dataset)} (labels.csv line {row.line})"
        )
        resized += was_resized
        parts[row.split][0].append(img)
        parts[row.split][1].append(row.label)
    out = {
        s: ImageSet(
            np.stack(imgs)[:, None] if imgs else np.zeros((0, 1, image_size, image_size), np.float32),
            np.asarray(labels, dtype=np.int64),
        )
        for s, (imgs, labels) in parts.items()
    }
    summary = {
        "images": {s: len(p) for s, p in out.items()},
        "per_class": {s: {c: int((p.labels == i).sum()) for i, c in enumerate(classes)} for s, p in out.items()},
        "letterboxed": resized,
        "image_size": image_size,
    }
    return Dataset(dataset, classes, out, summary)


def load_image(path: Path, image_size: int, where: str) -> tuple[np.ndarray, bool]:
    """Grayscale float32 [S, S] in [0, 1], and whether it had to be rescaled."""
    if path.suffix.lower() == ".dcm":
        from .dicom import read_dicom_pixels

        pixels = read_dicom_pixels(path, where)
    else:
        pixels = _read_png(path, where)
    h, w = pixels.shape
    if min(h, w) < MIN_SIDE or max(h, w) / min(h, w) > MAX_ASPECT:
        raise DatasetError(
            f"{where}: image is {w}x{h} px; images must be at least {MIN_SIDE} px per side with an aspect "
            f"ratio up to {MAX_ASPECT:.0f}:1 (other sizes are letterboxed to {image_size}x{image_size})"
        )
    if (h, w) == (image_size, image_size):
        return pixels, False
    return letterbox(pixels, image_size), True


def letterbox(pixels: np.ndarray, size: int) -> np.ndarray:
    from PIL import Image

    h, w = pixels.shape
    scale = size / max(h, w)
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    resized = np.asarray(Image.fromarray(pixels.astype(np.float32), mode="F").resize((nw, nh), Image.BILINEAR))
    out = np.zeros((size, size), np.float32)
    top, left = (size - nh) // 2, (size - nw) // 2
    out[top : top + nh, left : left + nw] = np.clip(resized, 0.0, 1.0)
    return out


def _read_png(path: Path, where: str) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im.verify()  # checks chunk CRCs, which load() alone does not
        with Image.open(path) as im:
            if im.format != "PNG":
                raise DatasetError(f"{where}: file is {im.format}, not PNG; export it as PNG")
            im.load()
            return _to_gray01(im)
    except DatasetError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise DatasetError(
            f"{where}: not a readable PNG ({type(exc).__name__}: {exc}); re-export the image or remove its row"
        ) from None


def _to_gray01(im) -> np.ndarray:
    if im.mode in ("I;16", "I;16B", "I;16L", "I"):
        a = np.asarray(im, dtype=np.float64)
        return (a / 65535.0).clip(0, 1).astype(np.float32)
    if im.mode == "F":
        a = np.asarray(im, dtype=np.float32)
        lo, hi = float(a.min()), float(a.max())
        return np.zeros_like(a) if hi <= lo else (a - lo) / (hi - lo)
    if im.mode != "L":
        im = im.convert("L")
    return np.asarray(im, dtype=np.float32) / 255.0
