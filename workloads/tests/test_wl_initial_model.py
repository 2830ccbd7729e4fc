"""Starting a run from pinned weights (run-config initial-model / initial-model-sha256)."""

import hashlib

import numpy as np
import pytest
from fedcare_workloads.artifacts import safetensors_bytes
from fedcare_workloads.initial_model import InitialModelError, load_initial_model
from fedcare_workloads.model import ModelSpec, build_model
from fedcare_workloads.records import state_to_arrays
from fedcare_workloads.settings import ConfigError, RunSettings


def _saved(tmp_path, spec, seed):
    data = safetensors_bytes(state_to_arrays(build_model(spec, seed=seed)), {"round": 3})
    path = tmp_path / "model.safetensors"
    path.write_bytes(data)
    return path, hashlib.sha256(data).hexdigest()


def test_the_pinned_file_replaces_the_random_weights(tmp_path):
    spec = ModelSpec("small", 3, 32)
    path, sha = _saved(tmp_path, spec, seed=7)
    model = build_model(spec, seed=0)
    assert load_initial_model(model, str(path), sha) == sha
    expected = state_to_arrays(build_model(spec, seed=7))
    got = state_to_arrays(model)
    assert all(np.array_equal(got[k], expected[k]) for k in expected)


def test_a_changed_file_is_refused_before_it_is_parsed(tmp_path):
    spec = ModelSpec("small", 3, 32)
    path, sha = _saved(tmp_path, spec, seed=7)
    data = bytearray(path.read_bytes())
    data[-1] ^= 1
    path.write_bytes(bytes(data))
    model = build_model(spec, seed=0)
    before = state_to_arrays(model)
    with pytest.raises(InitialModelError, match="pinned to " + sha):
        load_initial_model(model, str(path), sha)
    assert all(np.array_equal(before[k], v) for k, v in state_to_arrays(model).items())


def test_another_architecture_or_a_missing_file_says_what_to_do(tmp_path):
    path, sha = _saved(tmp_path, ModelSpec("small", 2, 32), seed=1)       # 2 classes, the run has 3
    with pytest.raises(InitialModelError, match="same architecture, classes and input size"):
        load_initial_model(build_model(ModelSpec("small", 3, 32), seed=0), str(path), sha)
    with pytest.raises(InitialModelError, match="cannot read the file"):
        load_initial_model(build_model(ModelSpec("small", 3, 32), seed=0), str(tmp_path / "gone"), sha)


def test_run_config_pins_the_file_by_its_sha256():
    s = RunSettings.from_run_config({"initial-model": "/a/model.safetensors", "initial-model-sha256": "sha256:" + "ab" * 32})
    assert s.initial_model == "/a/model.safetensors" and s.initial_model_sha256 == "ab" * 32
    with pytest.raises(ConfigError, match="initial-model-sha256"):
        RunSettings.from_run_config({"initial-model": "/a/model.safetensors"})
    with pytest.raises(ConfigError, match="64 lowercase hex"):
        RunSettings.from_run_config({"initial-model": "/a/m", "initial-model-sha256": "xyz"})
