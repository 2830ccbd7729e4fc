"""Dataset format and every kind of bad input, each with an actionable error."""

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from fedcare_workloads.data import DatasetError, letterbox, load_dataset, resolve_data_path
from PIL import Image

CLASSES = ("normal", "benign", "malignant")


def make_dataset(root: Path, rows: list[tuple[str, str, str]], size: int = 32, header: str = "id,label,split") -> Path:
    (root / "images").mkdir(parents=True, exist_ok=True)
    lines = [header]
    for i, (rid, label, split) in enumerate(rows):
        lines.append(f"{rid},{label},{split}")
        Image.fromarray(np.full((size, size), 40 + i, np.uint8)).save(root / "images" / f"{rid}.png")
    (root / "labels.csv").write_text("\n".join(lines) + "\n")
    return root


def load(root: Path, size: int = 32, splits=("train", "val")):
    return load_dataset(root, root.parent, CLASSES, size, splits)


def good_rows():
    return [("a1", "normal", "train"), ("a2", "benign", "train"), ("a3", "malignant", "val")]


def test_valid_dataset_loads(tmp_path):
    ds = load(make_dataset(tmp_path / "site", good_rows()))
    assert ds.split("train").images.shape == (2, 1, 32, 32)
    assert list(ds.split("train").labels) == [0, 1]
    assert ds.summary["per_class"]["val"] == {"normal": 0, "benign": 0, "malignant": 1}
    assert np.isclose(ds.split("train").images[0].max(), 40 / 255)


def test_missing_labels_csv(tmp_path):
    root = make_dataset(tmp_path / "site", good_rows())
    (root / "labels.csv").unlink()
    with pytest.raises(DatasetError, match=r"labels.csv is missing \(found \['images'\]\).*id,label,split"):
        load(root)


def test_empty_dataset(tmp_path):
    root = make_dataset(tmp_path / "site", [])
    with pytest.raises(DatasetError, match="has a header but no rows: the dataset is empty"):
        load(root)


def test_empty_split_is_reported_when_used(tmp_path):
    ds = load(make_dataset(tmp_path / "site", [("a1", "normal", "train")]), splits=("train", "val"))
    with pytest.raises(DatasetError, match="no rows with split=val"):
        ds.split("val")


def test_unknown_label_names_line_id_and_allowed_labels(tmp_path):
    root = make_dataset(tmp_path / "site", good_rows() + [("a4", "malign", "train")])
    with pytest.raises(
        DatasetError,
        match=r"labels.csv line 5 \(id 'a4'\): unknown label 'malign'; expected one of normal, benign, malignant",
    ):
        load(root)


@pytest.mark.parametrize(
    ("header", "message"),
    [("id,diagnosis,split", r"lacks column\(s\) \['label'\]"), ("", r"lacks column")],
)
def test_bad_header(tmp_path, header, message):
    root = make_dataset(tmp_path / "site", good_rows(), header=header)
    with pytest.raises(DatasetError, match=message):
        load(root)


def test_unknown_split_and_duplicate_id(tmp_path):
    with pytest.raises(DatasetError, match="unknown split 'holdout'"):
        load(make_dataset(tmp_path / "s1", [("a1", "normal", "holdout")]))
    with pytest.raises(DatasetError, match="duplicate id 'a1'"):
        load(make_dataset(tmp_path / "s2", [("a1", "normal", "train"), ("a1", "benign", "val")]))


def test_missing_image(tmp_path):
    root = make_dataset(tmp_path / "site", good_rows())
    (root / "images" / "a2.png").unlink()
    with pytest.raises(
        DatasetError, match=r"line 3 \(id 'a2'\): image not found \(tried images/a2.png, images/a2.dcm\)"
    ):
        load(root)


@pytest.mark.parametrize("damage", ["truncate", "garbage", "flip-crc"])
def test_corrupt_png_is_refused_with_file_and_line(tmp_path, damage):
    root = make_dataset(tmp_path / "site", good_rows())
    png = root / "images" / "a2.png"
    data = bytearray(png.read_bytes())
    if damage == "truncate":
        data = data[: len(data) // 2]
    elif damage == "garbage":
        data = bytearray(b"this is not an image at all" * 10)
    else:
        idat = data.index(b"IDAT")
        data[idat + 6] ^= 0xFF  # a byte inside the compressed image data
    png.write_bytes(bytes(data))
    with pytest.raises(DatasetError, match=r"images/a2.png \(labels.csv line 3\): not a readable PNG .*re-export"):
        load(root)


def test_jpeg_named_png_is_refused(tmp_path):
    root = make_dataset(tmp_path / "site", good_rows())
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(root / "images" / "a1.png", format="JPEG")
    with pytest.raises(DatasetError, match="file is JPEG, not PNG"):
        load(root)


def test_wrong_size_is_letterboxed_keeping_aspect(tmp_path):
    root = make_dataset(tmp_path / "site", good_rows())
    wide = np.full((40, 80), 200, np.uint8)  # 2:1, 80 px wide
    Image.fromarray(wide).save(root / "images" / "a1.png")
    ds = load(root, size=32)
    img = ds.split("train").images[0, 0]
    assert img.shape == (32, 32) and ds.summary["letterboxed"] == 1
    assert np.allclose(img[:8], 0) and np.allclose(img[-8:], 0)  # padding above and below
    assert np.allclose(img[8:24], 200 / 255, atol=1e-3)


@pytest.mark.parametrize("shape", [(10, 10), (20, 100)])
def test_too_small_or_too_elongated_is_refused(tmp_path, shape):
    root = make_dataset(tmp_path / "site", good_rows())
    Image.fromarray(np.zeros(shape, np.uint8)).save(root / "images" / "a1.png")
    with pytest.raises(DatasetError, match=r"images/a1.png \(labels.csv line 2\): image is \d+x\d+ px"):
        load(root)


def test_16_bit_and_colour_pngs_become_gray01(tmp_path):
    root = make_dataset(tmp_path / "site", good_rows())
    Image.fromarray(np.full((32, 32), 65535 // 2, np.uint16)).save(root / "images" / "a1.png")
    Image.fromarray(np.full((32, 32, 3), (255, 0, 0), np.uint8), mode="RGB").save(root / "images" / "a2.png")
    imgs = load(root).split("train").images
    assert np.isclose(imgs[0].mean(), 0.5, atol=1e-3)
    assert np.isclose(imgs[1].mean(), 76 / 255, atol=1e-2)  # luminance of pure red


def test_data_path_outside_mount_is_refused(tmp_path):
    mount = tmp_path / "mount"
    mount.mkdir()
    outside = make_dataset(tmp_path / "elsewhere", good_rows())
    with pytest.raises(DatasetError, match=r"outside the data mount .*mount.*node-config 'data-root'"):
        load_dataset(outside, mount, CLASSES, 32)
    with pytest.raises(DatasetError, match="outside the data mount"):
        load_dataset(mount / ".." / "elsewhere", mount, CLASSES, 32)
    os.symlink(outside, mount / "link")  # a symlink inside the mount pointing out of it
    with pytest.raises(DatasetError, match="outside the data mount"):
        resolve_data_path(mount / "link", mount)


def test_file_column_cannot_escape_the_dataset(tmp_path):
    root = make_dataset(tmp_path / "site", good_rows())
    shutil.copy(root / "images" / "a1.png", tmp_path / "secret.png")
    (root / "labels.csv").write_text("id,label,split,file\na1,normal,train,../secret.png\n")
    with pytest.raises(DatasetError, match="points outside the dataset directory"):
        load(root)


def test_letterbox_square_input_is_resized():
    out = letterbox(np.ones((64, 64), np.float32), 32)
    assert out.shape == (32, 32) and np.allclose(out, 1.0)


def test_labels_csv_that_is_not_utf8_names_file_and_line(tmp_path):
    root = tmp_path / "site"
    (root / "images").mkdir(parents=True)
    (root / "labels.csv").write_bytes("id,label,split\na1,normal,train\nh\xe9l\xe8ne,normal,train\n".encode("latin-1"))
    with pytest.raises(DatasetError) as err:
        load_dataset(root, tmp_path, ("normal", "benign"), 32, ("train",))
    assert f"{root / 'labels.csv'} line 3: not valid UTF-8" in str(err.value)
    assert "save labels.csv as UTF-8" in str(err.value)
    assert err.value.public == "labels.csv line 3: not valid UTF-8"


def test_every_bad_row_is_reported_in_one_check(tmp_path):
    root = tmp_path / "site"
    (root / "images").mkdir(parents=True)
    (root / "labels.csv").write_text("id,label,split\nMRN001,sick,train\nMRN002,normal,later\nMRN003,normal,train\n")
    with pytest.raises(DatasetError) as err:
        load_dataset(root, tmp_path, ("normal", "benign"), 32, ("train",))
    msg, public = str(err.value), err.value.public
    assert msg.startswith("3 of 3 labels.csv rows refused")
    assert "unknown label 'sick'" in msg and "unknown split 'later'" in msg and "image not found" in msg
    assert public.startswith("3 of 3 labels.csv rows refused")
    for line in (2, 3, 4):
        assert f"labels.csv line {line}" in public
    assert "MRN" not in public and str(tmp_path) not in public and "sick" not in public
