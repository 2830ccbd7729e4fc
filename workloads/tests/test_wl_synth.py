"""Synthetic generator: deterministic, valid format, non-IID sites, learnable signal."""

import csv
import hashlib
from pathlib import Path

import numpy as np
from fedcare_workloads.data import load_dataset
from fedcare_workloads.synth import PROBES, default_sites, generate_federation, render_image

CLASSES = ("normal", "benign", "malignant")


def tree_digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_same_seed_gives_byte_identical_files(tmp_path):
    generate_federation(tmp_path / "a", num_sites=2, images_per_site=12, holdout=6, image_size=32, seed=11)
    generate_federation(tmp_path / "b", num_sites=2, images_per_site=12, holdout=6, image_size=32, seed=11)
    a, b = tree_digest(tmp_path / "a"), tree_digest(tmp_path / "b")
    assert len(a) == 2 * (12 + 2) + 6 + 2 and a == b


def test_other_seed_gives_other_images(tmp_path):
    generate_federation(tmp_path / "a", num_sites=1, images_per_site=4, holdout=0, image_size=32, seed=1)
    generate_federation(tmp_path / "b", num_sites=1, images_per_site=4, holdout=0, image_size=32, seed=2)
    a, b = tree_digest(tmp_path / "a"), tree_digest(tmp_path / "b")
    assert a.keys() == b.keys()
    assert sum(a[k] != b[k] for k in a if k.endswith(".png")) >= 3


def test_images_do_not_depend_on_how_many_are_generated(tmp_path):
    # Each image has its own stream: growing a site keeps existing images.
    generate_federation(tmp_path / "a", num_sites=1, images_per_site=3, holdout=0, image_size=32, seed=4)
    generate_federation(tmp_path / "b", num_sites=1, images_per_site=6, holdout=0, image_size=32, seed=4)
    img = "site-a/images/site-a-00001.png"
    assert (tmp_path / "a" / img).read_bytes() == (tmp_path / "b" / img).read_bytes()


def test_output_is_a_valid_dataset_with_all_splits(federation):
    ds = load_dataset(federation / "site-a", federation, CLASSES, 32, ("train", "val", "test"))
    assert ds.summary["images"]["train"] > ds.summary["images"]["val"] > 0
    assert ds.split("train").images.dtype == np.float32
    assert 0.0 <= ds.split("train").images.min() and ds.split("train").images.max() <= 1.0
    holdout = list(csv.DictReader((federation / "holdout" / "labels.csv").open()))
    assert {r["split"] for r in holdout} == {"test"}
    assert [sum(r["label"] == c for r in holdout) for c in CLASSES] == [20, 20, 20]


def test_sites_are_non_iid(tmp_path):
    generate_federation(tmp_path, num_sites=3, images_per_site=90, holdout=0, image_size=32, seed=0)
    mixes, means, black = [], [], []
    for site in ("site-a", "site-b", "site-c"):
        ds = load_dataset(tmp_path / site, tmp_path, CLASSES, 32, ("train", "val", "test"))
        labels = np.concatenate([ds.splits[s].labels for s in ("train", "val", "test")])
        mixes.append(np.bincount(labels, minlength=3) / len(labels))
        imgs = ds.split("train").images
        means.append(float(imgs.mean()))
        black.append(float((imgs[:, 0, :4, :4] == 0).mean()))  # top-left corner
    # Label skew: the majority class differs between sites.
    assert len({int(np.argmax(m)) for m in mixes}) == 3
    # Probe differences: brightness differs, and only the curvilinear probe has a black fan border.
    assert max(means) - min(means) > 0.03
    assert black[1] == 1.0 and max(black[0], black[2]) < 0.2


def test_lesions_are_darker_than_tissue_and_malignant_shadows():
    rng = lambda i: np.random.default_rng([0, 5, i])  # noqa: E731
    probe = PROBES[0]
    lower = {
        label: np.mean([render_image(rng(i), label, probe, 64)[40:, :].mean() for i in range(20)]) for label in CLASSES
    }
    # Posterior acoustic shadowing makes the lower half of malignant frames darkest.
    assert lower["malignant"] < lower["benign"] and lower["malignant"] < lower["normal"]


def test_more_than_three_sites_get_distinct_probes():
    sites = default_sites(5)
    assert len({s.probe for s in sites}) == 5 and all(abs(sum(s.label_mix) - 1) < 1e-9 for s in sites)
