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
import io
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

SPLITS = ("train", "val", "test")
MIN_SIDE = 16
MAX_ASPECT = 4.0
REQUIRED_COLUMNS = ("id", "label", "split")


class DatasetError(ValueError):
    """The dataset cannot be used; the message says which file/field and what to do.

    str(error) is the full detail, for the hospital's own eyes (`fedcare-workloads
    check`, the site's log). `public` is what may leave the site (ClientApp error
    replies, provenance.json): the problem and a site-local reference (labels.csv
    line numbers), never an absolute path, a directory listing or a row id."""

    def __init__(self, message: str, *, public: str | None = None) -> None:
        super().__init__(message)
        self.public = public or "the dataset cannot be used"


class DatasetErrors(DatasetError):
    """Several rows/files are bad: all of them are reported in one check."""

    def __init__(self, errors: list[DatasetError], total: int, what: str) -> None:
        self.errors = errors
        detail = "\n  ".join(str(e) for e in errors)
        public = "; ".join(e.public for e in errors)
        super().__init__(
            f"{len(errors)} of {total} {what} refused:\n  {detail}",
            public=f"{len(errors)} of {total} {what} refused: {public}",
        )


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
                f"(split must be one of {', '.join(SPLITS)})",
                public=f"labels.csv: no rows with split={name}",
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
            f"'{root}' (node-config 'data-root'); point data-path at a directory inside the mount",
            public="node-config data-path resolves outside the data mount (data-root)",
        )
    if not path.is_dir():
        raise DatasetError(
            f"data-path '{data_path}' is not a directory; expected a dataset folder with labels.csv",
            public="node-config data-path is not a directory",
        )
    return path


def read_labels(dataset: Path, classes: tuple[str, ...]) -> list[Row]:
    dataset = Path(os.path.realpath(dataset))
    labels_csv = dataset / "labels.csv"
    if not labels_csv.is_file():
        found = sorted(p.name for p in dataset.iterdir())[:10] if dataset.is_dir() else []
        raise DatasetError(
            f"{labels_csv} is missing (found {found or 'nothing'}); every dataset needs a "
            "labels.csv with the header id,label,split",
            public="labels.csv is missing",
        )
    index = {c: i for i, c in enumerate(classes)}
    rows: list[Row] = []
    errors: list[DatasetError] = []
    seen: set[str] = set()
    text = _read_utf8(labels_csv)
    reader = csv.DictReader(io.StringIO(text, newline=""))
    header = [h.strip() for h in (reader.fieldnames or [])]
    missing = [c for c in REQUIRED_COLUMNS if c not in header]
    if missing:
        raise DatasetError(
            f"{labels_csv}: header {header} lacks column(s) {missing}; the first line must be id,label,split[,file]",
            public=f"labels.csv header lacks column(s) {missing}",
        )
    for raw in reader:
        line = reader.line_num
        rec = {(k or "").strip(): (v or "").strip() for k, v in raw.items()}
        rid, label, split = rec["id"], rec["label"], rec["split"].lower()
        where = f"{labels_csv} line {line}"
        ref = f"labels.csv line {line}"
        try:
            if not rid:
                raise DatasetError(f"{where}: empty id", public=f"{ref}: empty id")
            if rid in seen:
                raise DatasetError(
                    f"{where}: duplicate id '{rid}'; ids must be unique", public=f"{ref}: duplicate id"
                )
            seen.add(rid)
            if label not in index:
                raise DatasetError(
                    f"{where} (id '{rid}'): unknown label '{label}'; expected one of {', '.join(classes)} "
                    "(run-config 'classes')",
                    public=f"{ref}: unknown label; expected one of {', '.join(classes)}",
                )
            if split not in SPLITS:
                raise DatasetError(
                    f"{where} (id '{rid}'): unknown split '{split}'; expected one of {', '.join(SPLITS)}",
                    public=f"{ref}: unknown split; expected one of {', '.join(SPLITS)}",
                )
            rows.append(Row(line, rid, index[label], split, _image_file(dataset, rid, rec.get("file", ""), where, ref)))
        except DatasetError as exc:
            errors.append(exc)
    if errors:
        raise errors[0] if len(errors) == 1 else DatasetErrors(errors, len(rows) + len(errors), "labels.csv rows")
    if not rows:
        raise DatasetError(
            f"{labels_csv} has a header but no rows: the dataset is empty", public="labels.csv has no rows"
        )
    return rows


def _read_utf8(labels_csv: Path) -> str:
    data = labels_csv.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise DatasetError(
            f"{labels_csv} line {line}: not valid UTF-8 (byte 0x{data[exc.start]:02x} at offset {exc.start}); "
            "save labels.csv as UTF-8 (e.g. `iconv -f latin1 -t utf-8`)",
            public=f"labels.csv line {line}: not valid UTF-8",
        ) from None


def _image_file(dataset: Path, rid: str, file: str, where: str, ref: str) -> Path:
    if file:
        candidates = [dataset / file]
    else:
        candidates = [dataset / "images" / f"{rid}.png", dataset / "images" / f"{rid}.dcm"]
    for cand in candidates:
        real = Path(os.path.realpath(cand))
        if dataset not in real.parents:
            raise DatasetError(
                f"{where} (id '{rid}'): file '{file}' points outside the dataset directory",
                public=f"{ref}: file points outside the dataset directory",
            )
        if real.is_file():
            return real
    tried = ", ".join(str(c.relative_to(dataset)) for c in candidates)
    raise DatasetError(f"{where} (id '{rid}'): image not found (tried {tried})", public=f"{ref}: image not found")


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
            f"{dataset / 'labels.csv'}: no rows with split in {list(splits)} ({len(rows)} rows in other splits)",
            public=f"labels.csv: no rows with split in {list(splits)}",
        )
    resized = 0
    parts: dict[str, tuple[list[np.ndarray], list[int]]] = {s: ([], []) for s in splits}
    errors: list[DatasetError] = []
    for row in wanted:
        try:
            img, was_resized = load_image(
                row.file, image_size, f"{row.file.relative_to(dataset)} (labels.csv line {row.line})"
            )
        except DatasetError as exc:
            # Keep going: a site with several bad files hears about all of them at once.
            exc.public = f"labels.csv line {row.line}: {exc.public}"
            errors.append(exc)
            continue
        resized += was_resized
        parts[row.split][0].append(img)
        parts[row.split][1].append(row.label)
    if errors:
        raise errors[0] if len(errors) == 1 else DatasetErrors(errors, len(wanted), "images")
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
            f"ratio up to {MAX_ASPECT:.0f}:1 (other sizes are letterboxed to {image_size}x{image_size})",
            public=f"image is {w}x{h} px, too small or too elongated",
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
                raise DatasetError(
                    f"{where}: file is {im.format}, not PNG; export it as PNG", public=f"file is {im.format}, not PNG"
                )
            im.load()
            return _to_gray01(im)
    except DatasetError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise DatasetError(
            f"{where}: not a readable PNG ({type(exc).__name__}: {exc}); re-export the image or remove its row",
            public=f"not a readable PNG ({type(exc).__name__})",
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
