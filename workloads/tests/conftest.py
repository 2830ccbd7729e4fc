"""Shared fixtures for the workloads tests (small synthetic data, few threads)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Two cores are shared with SuperNode subprocesses in the slow test: keep
# in-process torch to one thread so tests do not fight each other.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

torch.set_num_threads(1)

from fedcare_workloads.synth import generate_federation  # noqa: E402
from wl_helpers import SMALL_SIZE  # noqa: E402


@pytest.fixture(scope="session")
def federation(tmp_path_factory) -> Path:
    """3 sites x 60 images + 60 held-out, 32x32: enough to exercise every path fast."""
    root = tmp_path_factory.mktemp("data")
    generate_federation(root, num_sites=3, images_per_site=60, holdout=60, image_size=SMALL_SIZE, seed=3)
    return root
