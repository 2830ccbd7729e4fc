"""Training loop, NaN handling, metrics, local DP-SGD and its accounting."""

import math

import numpy as np
import pytest
import torch
from fedcare_workloads.data import load_dataset
from fedcare_workloads.metrics import binary_auroc, macro_auroc
from fedcare_workloads.model import ModelSpec, build_model
from fedcare_workloads.ledger import PrivacyBudgetExhausted, PrivacyLedger
from fedcare_workloads.privacy import epsilon_for
from fedcare_workloads.records import state_to_arrays
from fedcare_workloads.settings import NodeSettings, RunSettings
from fedcare_workloads.site_training import train_site
from fedcare_workloads.train import NonFiniteLossError, evaluate, make_loader, pick_device, train_epochs
from wl_helpers import node_config, run_config

CLASSES = ("normal", "benign", "malignant")
CPU = torch.device("cpu")


def site_data(federation, site="site-b"):
    return load_dataset(federation / site, federation, CLASSES, 32, ("train", "val"))


def test_training_reduces_loss(federation):
    data = site_data(federation).split("train")
    model = build_model(ModelSpec("small", 3, 32), seed=0)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    loader = make_loader(data, 8, True, 0)
    first = train_epochs(model, loader, opt, 1, CPU)
    later = train_epochs(model, loader, opt, 4, CPU)
    assert later.loss < first.loss and later.examples_seen == 4 * len(data) and later.images_per_second > 0


def test_nan_weights_stop_training_with_a_clear_error(federation):
    data = site_data(federation).split("train")
    model = build_model(ModelSpec("small", 3, 32), seed=0)
    with torch.no_grad():
        model.head.weight.fill_(float("nan"))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(
        NonFiniteLossError, match=r"site x, round 3: loss became nan at epoch 1, step 1; the update was withheld"
    ):
        train_epochs(model, make_loader(data, 8, False, 0), opt, 1, CPU, where="site x, round 3")


def test_diverging_training_is_caught(federation):
    data = site_data(federation).split("train")
    model = build_model(ModelSpec("small", 3, 32), seed=0)
    opt = torch.optim.SGD(model.parameters(), lr=1e12)
    with pytest.raises(NonFiniteLossError, match="loss became (nan|inf)"):
        train_epochs(model, make_loader(data, 8, True, 0), opt, 3, CPU)


def test_auroc_against_known_values():
    assert binary_auroc(np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 0, 1, 1])) == 0.75
    assert binary_auroc(np.array([0.5, 0.5, 0.5]), np.array([0, 1, 1])) == 0.5
    assert math.isnan(binary_auroc(np.array([0.2, 0.3]), np.array([1, 1])))
    probs = np.eye(3)[[0, 1, 2, 2]]
    assert macro_auroc(probs, np.array([0, 1, 2, 2])) == 1.0
    assert macro_auroc(probs[:, ::-1].copy(), np.array([0, 1, 2, 2])) < 0.5


def test_evaluate_reports_loss_accuracy_auroc(federation):
    val = site_data(federation).split("val")
    m = evaluate(build_model(ModelSpec("small", 3, 32), seed=0), val, CPU)
    assert set(m) == {"loss", "accuracy", "auroc"} and m["loss"] > 0 and 0 <= m["accuracy"] <= 1


def test_device_is_cpu_here():
    assert pick_device().type == ("cuda" if torch.cuda.is_available() else "cpu")


def dp_run(**over):
    return RunSettings.from_run_config(
        run_config(**{"privacy.dp": True, "privacy.noise-multiplier": 1.1, "local-epochs": 1, "batch-size": 16, **over})
    )


def dp_node(federation, tmp_path, site="site-a", budget=50.0):
    return NodeSettings.from_node_config(
        node_config(
            federation, site, **{"privacy-ledger": str(tmp_path / "ledger"), "privacy-budget-epsilon": budget}
        )
    )


def test_dp_sgd_reports_round_and_cumulative_epsilon(federation, tmp_path):
    run = dp_run()
    node = dp_node(federation, tmp_path)
    initial = state_to_arrays(build_model(ModelSpec("small", 3, 32), seed=0))
    first = train_site(run, node, initial, 1, run_id="r1")
    second = train_site(run, node, first.arrays, 2, run_id="r1")
    p1, p2 = first.privacy, second.privacy
    assert p1.delta == 1e-5 and p1.epsilon_round > 0 and p1.steps > 0
    assert p1.epsilon_total == pytest.approx(p1.epsilon_round)
    assert p2.epsilon_total > p2.epsilon_round and p2.epsilon_total > p1.epsilon_total
    ledger = PrivacyLedger(tmp_path / "ledger", "site-a")
    assert [e["round"] for e in ledger.entries() if e["kind"] == "spend"] == [1, 2]
    # The update really changed and is finite.
    assert any(not np.array_equal(first.arrays[k], initial[k]) for k in initial)
    assert all(np.isfinite(v).all() for v in first.arrays.values())


def test_privacy_budget_is_enforced_before_training(federation, tmp_path):
    run = dp_run(**{"privacy.max-epsilon": 0.01})
    node = dp_node(federation, tmp_path)
    initial = state_to_arrays(build_model(ModelSpec("small", 3, 32), seed=0))
    with pytest.raises(
        PrivacyBudgetExhausted,
        match=r"site site-a: this round would raise the run's epsilon to .* above run-config privacy.max-epsilon=0.01",
    ):
        train_site(run, node, initial, 1)
    assert PrivacyLedger.history(PrivacyLedger(tmp_path / "ledger", "site-a").entries()) == []  # nothing spent


def test_epsilon_grows_with_steps_and_shrinks_with_noise():
    assert epsilon_for([], 1e-5) == 0.0
    assert epsilon_for([(1.0, 0.1, 20)], 1e-5) < epsilon_for([(1.0, 0.1, 40)], 1e-5)
    assert epsilon_for([(2.0, 0.1, 40)], 1e-5) < epsilon_for([(1.0, 0.1, 40)], 1e-5)


def test_fedprox_keeps_weights_closer_to_the_global_model(federation):
    node = NodeSettings.from_node_config(node_config(federation, "site-c"))
    initial = state_to_arrays(build_model(ModelSpec("small", 3, 32), seed=0))
    dist = {}
    for mu in (0.0, 5.0):
        upd = train_site(
            RunSettings.from_run_config(run_config(**{"local-epochs": 2})), node, initial, 1, proximal_mu=mu
        )
        dist[mu] = sum(float(np.sum((upd.arrays[k] - initial[k]) ** 2)) for k in initial)
    assert dist[5.0] < dist[0.0]


def test_dp_noise_cannot_be_replayed_from_the_public_seed(federation, tmp_path):
    # Same run config, seed, round and model: without DP the update is reproducible,
    # with DP it must not be (the server knows the seed; the noise must stay secret).
    node = NodeSettings.from_node_config(node_config(federation, "site-a"))
    initial = state_to_arrays(build_model(ModelSpec("small", 3, 32), seed=0))
    plain = RunSettings.from_run_config(run_config())
    a, b = (train_site(plain, node, initial, 1).sha256 for _ in range(2))
    assert a == b
    dp = dp_node(federation, tmp_path)
    c, d = (train_site(dp_run(), dp, initial, 1).sha256 for _ in range(2))
    assert c != d
