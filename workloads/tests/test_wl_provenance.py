"""Provenance recorder: JSON-safe values, failure trail."""

import json
import math

import numpy as np
from fedcare_workloads.provenance import ProvenanceRecorder, clean
from fedcare_workloads.replies import SiteOutcome


def test_clean_makes_values_json_safe():
    assert clean({"a": float("nan"), "b": np.float32(1.5), "c": [np.int64(3), math.inf], 4: "x"}) == {
        "a": None,
        "b": 1.5,
        "c": [3, None],
        "4": "x",
    }


def test_failure_leaves_a_complete_trail(tmp_path):
    rec = ProvenanceRecorder(tmp_path, {"run_id": "9"})
    arrays = {"w": np.ones(3, np.float32)}
    rec.finish_round(0, arrays, {"round": 0}, None)
    rec.record_train(1, "ab" * 32, {"site-a": SiteOutcome("site-a", 5, False, "CLIENT_APP_RAISED_EXCEPTION: boom")})
    rec.fail("RoundFailedError: round 1: 0 of 1 sites returned a usable update")
    doc = json.loads((tmp_path / "provenance.json").read_text())
    assert doc["status"] == "failed" and doc["error"].startswith("RoundFailedError")
    assert doc["rounds"][1]["sites"]["site-a"] == {
        "node_id": "5",
        "status": "failed",
        "error": "CLIENT_APP_RAISED_EXCEPTION: boom",
    }
    assert (tmp_path / doc["rounds"][0]["global_model_file"]).exists()


def test_rounds_record_their_duration_and_aggregation_time(tmp_path):
    rec = ProvenanceRecorder(tmp_path, {"run_id": "9"})
    arrays = {"w": np.ones(3, np.float32)}
    rec.finish_round(0, arrays, {"round": 0}, None)
    rec.start_round(1)
    rec.record_train_aggregate(1, {"train-loss": 0.5}, 0.0125)
    rec.finish_round(1, arrays, {"round": 1}, None)
    doc = json.loads((tmp_path / "provenance.json").read_text())
    assert "duration_seconds" not in doc["rounds"][0]           # the initial model is no round
    assert doc["rounds"][1]["aggregation_seconds"] == 0.0125
    assert doc["rounds"][1]["duration_seconds"] >= 0
