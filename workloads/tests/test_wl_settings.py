"""Run/node config parsing: pyproject defaults, types, ranges, clear errors."""

from pathlib import Path

import pytest
import tomli
from fedcare_workloads.settings import ConfigError, NodeSettings, RunSettings
from flwr.common.config import flatten_dict
from wl_helpers import run_config

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"


def pyproject_config() -> dict:
    return flatten_dict(tomli.loads(PYPROJECT.read_text())["tool"]["flwr"]["app"]["config"])


def test_pyproject_declares_every_key_the_apps_read():
    # flwr refuses `-c` overrides for keys missing from [tool.flwr.app.config].
    assert set(pyproject_config()) == set(run_config())


def test_pyproject_defaults_parse_and_need_an_out_dir():
    run = RunSettings.from_run_config(pyproject_config())
    assert run.strategy == "fedavg" and run.classes == ("normal", "benign", "malignant")
    with pytest.raises(ConfigError, match="'out-dir' is empty"):
        run.require_out_dir()


def test_pyproject_has_flower_app_components():
    app = tomli.loads(PYPROJECT.read_text())["tool"]["flwr"]["app"]
    assert app["components"] == {
        "serverapp": "fedcare_workloads.server_app:app",
        "clientapp": "fedcare_workloads.client_app:app",
    }
    assert app["publisher"]


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("lr", "0.1", "run-config key 'lr' must be a number, got str"),
        ("num-server-rounds", 0, "'num-server-rounds' = 0 is invalid"),
        ("strategy", "fedsgd", "expected fedavg | fedprox | fedadam"),
        ("privacy.dp", "yes", "'privacy.dp' must be a boolean"),
        ("privacy.delta", 2.0, "0 < delta < 1"),
        ("min-available-nodes", 0, "'min-available-nodes' = 0 is invalid"),
        ("classes", "a,a", "distinct"),
        ("image-size", 8, "16..1024"),
        ("lr", float("nan"), "must be finite"),
    ],
)
def test_bad_run_config_names_the_key(key, value, message):
    cfg = run_config(**{key: value})
    with pytest.raises(ConfigError, match=message.replace("|", r"\|").replace("(", r"\(")):
        RunSettings.from_run_config(cfg)


def test_ints_are_accepted_for_float_keys():
    assert RunSettings.from_run_config(run_config(lr=1)).lr == 1.0


def test_relative_out_dir_is_refused():
    with pytest.raises(ConfigError, match="must be an absolute path"):
        RunSettings.from_run_config(run_config("out")).require_out_dir()


def test_node_config_requires_data_path_and_defaults_site():
    with pytest.raises(ConfigError, match="'data-path' is missing"):
        NodeSettings.from_node_config({})
    node = NodeSettings.from_node_config({"data-path": "/data/rouen"})
    assert node.site == "rouen" and node.data_root == Path("/data") and node.torch_threads == 0
    with pytest.raises(ConfigError, match="must be an integer"):
        NodeSettings.from_node_config({"data-path": "/data/x", "torch-threads": "2"})
