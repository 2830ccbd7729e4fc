"""Command line: synth, check, hash, evaluate; gpucheck."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from fedcare_workloads.artifacts import safetensors_bytes, write_atomic
from fedcare_workloads.cli import main
from fedcare_workloads.model import ModelSpec, build_model
from fedcare_workloads.records import state_to_arrays

BIN = Path(sys.executable).parent


def run_main(capsys, *argv):
    rc = main(list(argv))
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def test_console_script_synth_then_check(tmp_path):
    res = subprocess.run(
        [
            str(BIN / "fedcare-workloads"),
            "synth",
            "--out",
            str(tmp_path),
            "--sites",
            "2",
            "--images-per-site",
            "10",
            "--holdout",
            "6",
            "--image-size",
            "32",
            "--seed",
            "1",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert set(out["datasets"]) == {"site-a", "site-b", "holdout"}
    assert (tmp_path / "site-a" / "labels.csv").exists()


def test_check_reports_summary_and_errors(capsys, federation, tmp_path):
    rc, out, _ = run_main(capsys, "check", str(federation / "site-a"), "--image-size", "32")
    assert rc == 0 and json.loads(out)["images"]["train"] == 42
    rc, out, err = run_main(capsys, "check", str(tmp_path))
    assert rc == 2 and out == "" and "labels.csv is missing" in err


def test_hash_and_evaluate_a_model_file(capsys, federation, tmp_path):
    spec = ModelSpec("small", 3, 32)
    arrays = state_to_arrays(build_model(spec, seed=0))
    meta = {"architecture": spec.describe(build_model(spec)), "classes": ["normal", "benign", "malignant"]}
    sha = write_atomic(tmp_path / "m.safetensors", safetensors_bytes(arrays, meta))
    rc, out, _ = run_main(capsys, "hash", str(tmp_path / "m.safetensors"))
    assert rc == 0 and json.loads(out)["file_sha256"] == sha
    rc, out, _ = run_main(
        capsys, "evaluate", "--model", str(tmp_path / "m.safetensors"), "--data", str(federation / "holdout")
    )
    res = json.loads(out)
    assert rc == 0 and res["num-examples"] == 60 and 0 <= res["accuracy"] <= 1 and res["loss"] > 0


@pytest.mark.slow
def test_gpucheck_without_cuda_runs_a_tiny_cpu_epoch():
    res = subprocess.run(
        [sys.executable, "-m", "fedcare_workloads.gpucheck"], capture_output=True, text=True, timeout=120
    )
    assert res.returncode == 0, res.stderr
    report = json.loads(res.stdout)
    if report["cuda"]:  # on a GPU machine the real check ran
        assert report["epoch"]["images_per_second"] > 0 and report["epoch"]["max_memory_allocated_mib"] > 0
    else:
        assert "CUDA is absent" in report["message"]
        assert report["epoch"]["images"] == 64 and report["epoch"]["images_per_second"] > 0
