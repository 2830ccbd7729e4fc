"""DP-SGD sampling is secret and accounted as run; the durable per-dataset privacy ledger."""

import json
import math

import numpy as np
import pytest
import torch
from fedcare_workloads.cli import main as cli_main
from fedcare_workloads.data import ImageSet
from fedcare_workloads.ledger import (
    Budget,
    LedgerCorrupt,
    LedgerError,
    PrivacyBudgetExhausted,
    PrivacyLedger,
    epsilon_for,
)
from fedcare_workloads.model import ModelSpec, build_model
from fedcare_workloads.privacy import accounted_sampling, make_private, reserve_round
from fedcare_workloads.records import state_to_arrays
from fedcare_workloads.settings import NodeSettings, PrivacySettings, RunSettings
from fedcare_workloads.site_training import train_site
from fedcare_workloads.train import make_loader
from wl_helpers import node_config, run_config

SETTINGS = PrivacySettings(True, 1.1, 1.0, 1e-5, 0.0)


def indexed_set(n=40):
    """Images whose label is their own index: a batch's labels are the indices drawn."""
    return ImageSet(np.zeros((n, 1, 16, 16), np.float32), np.arange(n, dtype=np.int64))


def first_batches(seed: int, n_batches=3) -> list[list[int]]:
    model = build_model(ModelSpec("small", 40, 16), seed=0)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    _, _, loader = make_private(model, opt, make_loader(indexed_set(), 8, True, seed=seed), SETTINGS)
    out = []
    for _, (_, y) in zip(range(n_batches), loader, strict=False):
        out.append(sorted(y.tolist()))
    return out


def test_poisson_batches_are_secret_not_replayable_from_the_public_seed():
    # Same public seed, same data: the server could regenerate the batches if the
    # sampler used the seeded loader generator. Two runs must draw different batches.
    # Even the global torch seed (which site_training sets from the public seed) is the same.
    torch.manual_seed(7)
    a = first_batches(seed=7)
    torch.manual_seed(7)
    b = first_batches(seed=7)
    assert a != b


def test_epsilon_reported_is_for_the_sampling_actually_used(tmp_path):
    data = indexed_set(40)
    model = build_model(ModelSpec("small", 40, 16), seed=0)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    _, dp_opt, loader = make_private(model, opt, make_loader(data, 16, True, seed=0), SETTINGS)
    q, steps = accounted_sampling(loader, epochs=2)
    # Opacus' Poisson sampler: each image joins a batch with probability q = 1 / ceil(N / B),
    # for ceil(N / B) draws per epoch; this is what runs and what is accounted.
    assert loader.batch_sampler.sample_rate == q == pytest.approx(1 / math.ceil(40 / 16))
    assert steps == 2 * math.ceil(40 / 16) == 2 * len(loader)
    assert dp_opt.noise_multiplier == SETTINGS.noise_multiplier
    sizes = []
    for _ in range(200):
        sizes.extend(len(y) for _, y in loader)
    assert np.mean(sizes) == pytest.approx(q * len(data), rel=0.1)  # the empirical rate is q
    ledger = PrivacyLedger(tmp_path, "ds")
    report = reserve_round(ledger, SETTINGS, q, steps, "site-a", "run-1", 1, Budget(100.0, 1e-5))
    assert report.sample_rate == q and report.steps == steps
    assert report.epsilon_round == pytest.approx(epsilon_for([(1.1, q, steps)], 1e-5))
    # Opacus' own accountant, fed step by step as its optimizer hook does, agrees.
    from opacus.accountants import RDPAccountant

    acc = RDPAccountant()
    for _ in range(steps):
        acc.step(noise_multiplier=1.1, sample_rate=q)
    assert report.epsilon_round == pytest.approx(acc.get_epsilon(1e-5))


def test_ledger_composes_across_runs_and_refuses_past_the_hospital_budget(tmp_path):
    ledger = PrivacyLedger(tmp_path, "breast-us-2024")
    ledger.set_budget(9.0, 1e-5, set_by="dpo@hospital")
    eps = []
    for run in ("run-1", "run-2", "run-3"):
        r = reserve_round(ledger, SETTINGS, 0.1, 50, "site-a", run, 1)
        eps.append(r.epsilon_dataset)
        assert r.epsilon_total == pytest.approx(r.epsilon_round)  # each run alone: one round
    assert eps[0] < eps[1] < eps[2]  # privacy loss composes across runs
    assert eps[2] == pytest.approx(epsilon_for([(1.1, 0.1, 50)] * 3, 1e-5))
    before = ledger.entries()
    with pytest.raises(PrivacyBudgetExhausted, match=r"spent epsilon=8.014 of its budget 9 .*refused to train"):
        for run in range(4, 50):
            reserve_round(ledger, SETTINGS, 0.1, 50, "site-a", f"run-{run}", 1)
            before = ledger.entries()
    assert ledger.entries() == before  # the refused round spent nothing
    summary = ledger.summary().to_json()
    assert summary["budget_epsilon"] == 9.0 and summary["spent_epsilon"] <= 9.0
    assert summary["remaining_epsilon"] == pytest.approx(9.0 - summary["spent_epsilon"])


def test_restart_mid_run_continues_the_same_accounting(tmp_path):
    # A SuperNode restart is a new process: nothing but the ledger file survives.
    first = PrivacyLedger(tmp_path, "ds")
    r1 = reserve_round(first, SETTINGS, 0.1, 20, "site-a", "run-9", 1, Budget(50.0, 1e-5))
    restarted = PrivacyLedger(tmp_path, "ds")
    r2 = reserve_round(restarted, SETTINGS, 0.1, 20, "site-a", "run-9", 2)
    assert r2.epsilon_total == pytest.approx(epsilon_for([(1.1, 0.1, 20)] * 2, 1e-5))
    assert r2.epsilon_total > r1.epsilon_total and r2.epsilon_dataset > r1.epsilon_dataset


def test_no_budget_means_no_training_not_unlimited(tmp_path):
    ledger = PrivacyLedger(tmp_path, "ds")
    with pytest.raises(PrivacyBudgetExhausted, match="has no privacy budget"):
        reserve_round(ledger, SETTINGS, 0.1, 20, "site-a", "r", 1)
    assert ledger.entries() == []


def test_run_delta_above_the_budget_delta_is_refused(tmp_path):
    ledger = PrivacyLedger(tmp_path, "ds")
    ledger.set_budget(10.0, 1e-6, "dpo")
    with pytest.raises(PrivacyBudgetExhausted, match=r"privacy.delta=1e-05 is above the dataset's budget delta=1e-06"):
        reserve_round(ledger, SETTINGS, 0.1, 20, "site-a", "r", 1)


def test_edited_ledger_is_detected(tmp_path):
    ledger = PrivacyLedger(tmp_path, "ds")
    ledger.set_budget(10.0, 1e-5, "dpo")
    reserve_round(ledger, SETTINGS, 0.1, 20, "site-a", "r", 1)
    lines = ledger.path.read_text().splitlines()
    entry = json.loads(lines[1])
    entry["steps"] = 1  # understate what was spent
    ledger.path.write_text(lines[0] + "\n" + json.dumps(entry, sort_keys=True, separators=(",", ":")) + "\n")
    with pytest.raises(LedgerCorrupt, match="line 2: hash chain broken"):
        reserve_round(ledger, SETTINGS, 0.1, 20, "site-a", "r", 2)
    ledger.path.write_text(lines[1] + "\n")  # the budget line removed
    with pytest.raises(LedgerCorrupt, match="line 1"):
        ledger.summary()


def test_torn_last_write_is_dropped_and_the_chain_continues(tmp_path):
    ledger = PrivacyLedger(tmp_path, "ds")
    ledger.set_budget(10.0, 1e-5, "dpo")
    with ledger.path.open("a") as fh:
        fh.write('{"seq":2,"kind":"spe')  # crash mid-append
    assert len(ledger.entries()) == 1
    reserve_round(ledger, SETTINGS, 0.1, 20, "site-a", "r", 1)
    assert [e["kind"] for e in PrivacyLedger(tmp_path, "ds").entries()] == ["budget", "spend"]


def test_ledger_path_and_dataset_id_are_checked(tmp_path):
    with pytest.raises(LedgerError, match="must be absolute"):
        PrivacyLedger("relative/dir", "ds")
    with pytest.raises(LedgerError, match="dataset id '../x' is invalid"):
        PrivacyLedger(tmp_path, "../x")


def test_privacy_budget_cli_for_the_site_agent(tmp_path, capsys):
    led = str(tmp_path / "ledger")
    assert cli_main(["privacy-budget", "--ledger", led, "--dataset", "ds", "--json"]) == 0
    empty = json.loads(capsys.readouterr().out)
    assert empty["budget_epsilon"] is None and empty["exhausted"] is True  # no budget: no work
    assert cli_main(["privacy-budget", "--ledger", led, "--dataset", "ds", "--set-epsilon", "6", "--json"]) == 0
    capsys.readouterr()
    reserve_round(PrivacyLedger(tmp_path / "ledger", "ds"), SETTINGS, 0.1, 30, "site-a", "r", 1)
    assert cli_main(["privacy-budget", "--ledger", led, "--dataset", "ds", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["budget_epsilon"] == 6.0 and out["delta"] == 1e-5 and out["runs"] == 1 and out["entries"] == 2
    assert 0 < out["spent_epsilon"] < 6 and out["remaining_epsilon"] == pytest.approx(6 - out["spent_epsilon"])
    assert out["exhausted"] is False
    assert cli_main(["privacy-budget", "--ledger", led, "--dataset", "ds", "--set-epsilon", "-1"]) == 2
    assert "must be a positive number" in capsys.readouterr().err


def test_dp_training_without_a_ledger_is_refused(federation):
    run = RunSettings.from_run_config(run_config(**{"privacy.dp": True}))
    node = NodeSettings.from_node_config(node_config(federation, "site-a"))
    initial = state_to_arrays(build_model(ModelSpec("small", 3, 32), seed=0))
    with pytest.raises(LedgerError, match="node-config 'privacy-ledger"):
        train_site(run, node, initial, 1)


def test_client_app_refusal_reason_is_privacy_budget_exhausted(federation, tmp_path):
    from fedcare_workloads import client_app
    from wl_helpers import InProcessGrid, Node

    cfg = run_config(**{"privacy.dp": True, "num-server-rounds": 1})
    nodes = [
        Node(
            100,
            node_config(
                federation, "site-a", **{"privacy-ledger": str(tmp_path), "privacy-budget-epsilon": 0.001}
            ),
            cfg,
        )
    ]
    InProcessGrid(nodes)  # sets flwr's TaskIdentity, which Message() needs
    from fedcare_workloads.records import arrays_to_record
    from flwr.app import ConfigRecord, Message, RecordDict

    arrays = arrays_to_record(state_to_arrays(build_model(ModelSpec("small", 3, 32), seed=0)))
    msg = Message(RecordDict({"arrays": arrays, "config": ConfigRecord({"server-round": 1})}), 100, "train")
    with pytest.raises(client_app.SiteFailure) as err:
        client_app.app(message=msg, context=nodes[0].context)
    assert str(err.value).startswith("site=site-a: PrivacyBudgetExhausted: ")
    assert str(tmp_path) not in str(err.value)
