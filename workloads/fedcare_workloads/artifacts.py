"""Model files (safetensors), atomic writes, and the model card.

safetensors' header stores user metadata in a hash map whose order changes
between processes; with more than one key the same model would give different
bytes (and a different sha256) each time. All metadata therefore goes into a
single "fedcare" key holding canonical JSON, which keeps the file
byte-reproducible.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from . import __version__
from .hashing import bytes_sha256


def safetensors_bytes(arrays: Mapping[str, np.ndarray], metadata: Mapping | None = None) -> bytes:
    from safetensors.numpy import save

    meta = {"fedcare": json.dumps(dict(metadata or {}), sort_keys=True, separators=(",", ":"))}
    return save({k: np.asarray(v, order="C") for k, v in arrays.items()}, metadata=meta)


def load_safetensors(path: str | Path) -> tuple[dict[str, np.ndarray], dict]:
    from safetensors import safe_open
    from safetensors.numpy import load_file

    arrays = load_file(str(path))
    with safe_open(str(path), framework="numpy") as fh:
        raw = (fh.metadata() or {}).get("fedcare", "{}")
    return arrays, json.loads(raw)


def write_atomic(path: Path, data: bytes) -> str:
    """Write via a temp file + rename, so readers never see half a file; returns sha256."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; the operator/auditors read these as another uid
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return bytes_sha256(data)


def write_json(path: Path, obj) -> str:
    return write_atomic(path, (json.dumps(obj, indent=2, sort_keys=True, allow_nan=False) + "\n").encode())


def software_versions() -> dict[str, str]:
    import flwr
    import torch

    return {
        "fedcare-workloads": __version__,
        "flwr": flwr.__version__,
        "torch": torch.__version__,
        "numpy": np.__version__,
    }


def model_card(
    *,
    architecture: dict,
    classes: tuple[str, ...],
    model_file: str,
    model_sha256: str,
    arrays_sha256: str,
    provenance_file: str,
    provenance_sha256: str,
    training: dict,
    rounds: list[dict],
    sites: list[str],
    privacy: dict,
) -> dict:
    return {
        "format": "fedcare-model-card/v1",
        "model": {
            "file": model_file,
            "format": "safetensors",
            "sha256": model_sha256,
            "arrays_sha256": arrays_sha256,
            "architecture": architecture,
        },
        "classes": list(classes),
        "training": training,
        "rounds": len([r for r in rounds if r["round"] > 0]),
        "sites": sites,
        "metrics_per_round": [
            {
                "round": r["round"],
                "train": r.get("train_aggregate"),
                "evaluate": r.get("evaluate_aggregate"),
                "server": r.get("server_evaluation"),
            }
            for r in rounds
        ],
        "privacy": privacy,
        "provenance": {"file": provenance_file, "sha256": provenance_sha256},
        "software": software_versions(),
        "intended_use": "research on synthetic or de-identified ultrasound; not a medical device",
    }
