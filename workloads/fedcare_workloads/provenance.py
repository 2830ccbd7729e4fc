"""Per-round provenance, written by the ServerApp to its output directory.

out-dir/
  provenance.json                 rewritten atomically after every event
  rounds/global-round-NNN.safetensors   (save-round-models = true)
  model.safetensors, model.safetensors.sha256, model-card.json   (at the end)

provenance.json holds, per round: every site's outcome (node id, status,
error, num-examples, metrics, update sha256 in fedcare-arrays/v1, the sha256
of the model it trained on), the aggregated metrics, the server-side
evaluation, and the global model after the round: sha256 of its safetensors
bytes (= of the round file when saved) and its fedcare-arrays/v1 digest. Round
0 is the initial model. It is written before a failure is raised, so a failed
run still leaves its audit trail.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from .artifacts import safetensors_bytes, write_atomic, write_json
from .hashing import arrays_sha256, bytes_sha256
from .replies import SiteOutcome

FORMAT = "fedcare-provenance/v1"


def clean(obj):
    """JSON-safe: NaN/inf -> null, numpy scalars -> Python, records -> dicts."""
    if isinstance(obj, Mapping):
        return {str(k): clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [clean(v) for v in obj]
    if isinstance(obj, (np.floating, float)):
        return None if not math.isfinite(float(obj)) else float(obj)
    if isinstance(obj, np.integer):
        return int(obj)
    return obj


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


class ProvenanceRecorder:
    def __init__(self, out_dir: Path, run_info: dict, save_round_models: bool = True) -> None:
        self.out_dir = Path(out_dir)
        self.path = self.out_dir / "provenance.json"
        self.save_round_models = save_round_models
        self.last_model_bytes = b""
        self._round_started: dict[int, float] = {}  # monotonic start of each round (its duration)
        self.doc: dict = {
            "format": FORMAT,
            "status": "running",
            "started_at": _now(),
            **clean(run_info),
            "rounds": [],
        }
        self._flush()

    def _round(self, server_round: int) -> dict:
        for r in self.doc["rounds"]:
            if r["round"] == server_round:
                return r
        entry = {"round": server_round, "started_at": _now()}
        self.doc["rounds"].append(entry)
        return entry

    def _flush(self) -> str:
        return write_json(self.path, self.doc)

    # -- events from the strategy -------------------------------------------------
    def start_round(self, server_round: int) -> None:
        self._round(server_round)  # stamps started_at before any message is sent
        self._round_started.setdefault(server_round, time.monotonic())

    def record_train(self, server_round: int, global_sha256: str, outcomes: dict[str, SiteOutcome]) -> None:
        entry = self._round(server_round)
        entry["sent_model_arrays_sha256"] = global_sha256
        entry["sites"] = {site: clean(o.to_json()) for site, o in sorted(outcomes.items())}
        self._flush()

    def record_train_aggregate(self, server_round: int, metrics, seconds: float | None = None) -> None:
        """``seconds``: how long aggregating the updates took (the hub's aggregation metric)."""
        entry = self._round(server_round)
        entry["train_aggregate"] = clean(dict(metrics or {}))
        if seconds is not None:
            entry["aggregation_seconds"] = round(float(seconds), 6)
        self._flush()

    def record_evaluate(self, server_round: int, outcomes: dict[str, SiteOutcome], metrics) -> None:
        entry = self._round(server_round)
        entry["evaluation"] = {site: clean(o.to_json()) for site, o in sorted(outcomes.items())}
        entry["evaluate_aggregate"] = clean(dict(metrics)) if metrics is not None else None
        self._flush()

    # -- events from the ServerApp ------------------------------------------------
    def finish_round(
        self, server_round: int, arrays: Mapping[str, np.ndarray], metadata: dict, server_metrics: dict | None
    ) -> dict:
        """Hash (and optionally save) the global model after `server_round` (0 = initial)."""
        data = safetensors_bytes(arrays, {**metadata, "round": server_round})
        self.last_model_bytes = data  # the final model file is exactly these bytes
        entry = self._round(server_round)
        entry["global_model_sha256"] = bytes_sha256(data)
        entry["global_arrays_sha256"] = arrays_sha256(arrays)
        if self.save_round_models:
            name = f"rounds/global-round-{server_round:03d}.safetensors"
            write_atomic(self.out_dir / name, data)
            entry["global_model_file"] = name
        entry["server_evaluation"] = clean(server_metrics) if server_metrics else None
        entry["finished_at"] = _now()
        if server_round in self._round_started:    # round 0 (the initial model) has no start
            entry["duration_seconds"] = round(time.monotonic() - self._round_started[server_round], 3)
        self._flush()
        return entry

    def fail(self, error: str) -> None:
        self.doc["status"] = "failed"
        self.doc["error"] = error
        self.doc["finished_at"] = _now()
        self._flush()

    def complete(self, final: dict) -> str:
        """Mark completed; returns the sha256 of the final provenance.json bytes."""
        self.doc["status"] = "completed"
        self.doc["final"] = clean(final)
        self.doc["finished_at"] = _now()
        return self._flush()

    @property
    def rounds(self) -> list[dict]:
        return self.doc["rounds"]

    def epsilon_per_site(self) -> dict[str, dict]:
        """Latest cumulative epsilon reported by each site (DP runs)."""
        out: dict[str, dict] = {}
        for r in self.rounds:
            for site, o in (r.get("sites") or {}).items():
                m = o.get("metrics") or {}
                if o.get("status") == "ok" and m.get("dp-epsilon-total") is not None:
                    out[site] = {"epsilon": m["dp-epsilon-total"], "delta": m.get("dp-delta"), "round": r["round"]}
        return out
