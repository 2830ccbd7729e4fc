"""ServerApp + strategies end to end on an in-process grid running the real ClientApp:
provenance, hashes, failure mapping, min-train-nodes, tampering, strategies."""

import json

import numpy as np
import pytest
from fedcare_workloads.artifacts import load_safetensors
from fedcare_workloads.hashing import arrays_sha256, file_sha256
from fedcare_workloads.server_app import run_federation
from fedcare_workloads.settings import ConfigError, RunSettings
from fedcare_workloads.strategy import NodesUnavailableError, RoundFailedError
from flwr.app import Array
from wl_helpers import InProcessGrid, Node, dead_node, node_config, run_client, run_config, silent_node

SITES = ("site-a", "site-b", "site-c")


def make_grid(federation, cfg, sites=SITES, **node_overrides):
    return InProcessGrid(
        [Node(100 + i, node_config(federation, s, **node_overrides), cfg) for i, s in enumerate(sites)]
    )


def read(out):
    return json.loads((out / "provenance.json").read_text()), json.loads((out / "model-card.json").read_text())


def test_federated_run_writes_verifiable_model_and_provenance(federation, tmp_path):
    out = tmp_path / "out"
    cfg = run_config(out, **{"server-eval-path": str(federation / "holdout"), "fraction-evaluate": 1.0})
    grid = make_grid(federation, cfg)
    run_federation(grid, RunSettings.from_run_config(cfg), run_id=42)
    prov, card = read(out)
    assert prov["status"] == "completed" and prov["run_id"] == "42"
    assert [r["round"] for r in prov["rounds"]] == [0, 1, 2]
    model_sha = file_sha256(out / "model.safetensors")
    assert (out / "model.safetensors.sha256").read_text() == f"{model_sha}  model.safetensors\n"
    assert prov["rounds"][-1]["global_model_sha256"] == model_sha == card["model"]["sha256"]
    assert card["provenance"]["sha256"] == file_sha256(out / "provenance.json")
    for r in prov["rounds"]:
        assert file_sha256(out / r["global_model_file"]) == r["global_model_sha256"]
        arrays, meta = load_safetensors(out / r["global_model_file"])
        assert arrays_sha256(arrays) == r["global_arrays_sha256"] and meta["round"] == r["round"]
    for r in prov["rounds"][1:]:
        previous = prov["rounds"][r["round"] - 1]
        assert r["sent_model_arrays_sha256"] == previous["global_arrays_sha256"]
        assert set(r["sites"]) == set(SITES)
        for o in r["sites"].values():
            assert o["status"] == "ok" and o["base_sha256"] == previous["global_arrays_sha256"]
            assert len(o["update_sha256"]) == 64 and o["num_examples"] > 0
            assert {"train-loss", "val-accuracy", "val-auroc", "val-loss"} <= set(o["metrics"])
        assert set(r["evaluation"]) == set(SITES) and r["evaluate_aggregate"]["loss"] > 0
        assert r["server_evaluation"]["num-examples"] == 60
    # The site updates the provenance names are the ones the sites sent.
    sent = {m.metadata.dst_node_id for m in grid.sent_log}
    assert sent == {100, 101, 102}
    assert card["sites"] == list(SITES) and card["rounds"] == 2 and card["classes"] == ["normal", "benign", "malignant"]
    assert card["model"]["architecture"]["variant"] == "small" and card["privacy"]["mechanism"] == "none"
    assert [m["round"] for m in card["metrics_per_round"]] == [0, 1, 2]


def test_aggregate_is_the_example_weighted_mean_of_accepted_updates(federation, tmp_path):
    cfg = run_config(tmp_path / "out", **{"num-server-rounds": 1})
    grid = make_grid(federation, cfg)
    captured = {}

    def capture(site):
        def behaviour(msg, ctx):
            reply = run_client(msg, ctx)
            captured[site] = (
                {k: a.numpy() for k, a in reply.content["arrays"].items()},
                reply.content["metrics"]["num-examples"],
            )
            return reply

        return behaviour

    for node, site in zip(grid.nodes.values(), SITES, strict=True):
        node.behaviour = capture(site)
    run_federation(grid, RunSettings.from_run_config(cfg))
    final, _ = load_safetensors(tmp_path / "out" / "model.safetensors")
    total = sum(n for _, n in captured.values())
    for k, v in final.items():
        expected = sum(a[k].astype(np.float64) * n for a, n in captured.values()) / total
        np.testing.assert_allclose(v, expected, rtol=1e-5, atol=1e-7)


def test_nan_site_is_reported_failed_and_not_averaged(federation, tmp_path):
    out = tmp_path / "out"
    cfg = run_config(out, **{"num-server-rounds": 1})
    grid = make_grid(federation, cfg)
    bad = grid.nodes[101]
    bad.context.run_config = {**cfg, "optimizer": "sgd", "lr": 1e12}  # this site diverges
    captured = []

    def good(msg, ctx):
        reply = run_client(msg, ctx)
        captured.append(
            ({k: a.numpy() for k, a in reply.content["arrays"].items()}, reply.content["metrics"]["num-examples"])
        )
        return reply

    grid.nodes[100].behaviour = grid.nodes[102].behaviour = good
    run_federation(grid, RunSettings.from_run_config(cfg))
    prov, card = read(out)
    site_b = prov["rounds"][1]["sites"]["site-b"]
    assert site_b["status"] == "failed" and "NonFiniteLossError" in site_b["error"] and "loss became" in site_b["error"]
    assert "update_sha256" not in site_b
    assert card["sites"] == ["site-a", "site-c"]
    final, _ = load_safetensors(out / "model.safetensors")
    total = sum(n for _, n in captured)
    for k, v in final.items():
        np.testing.assert_allclose(v, sum(a[k] * n for a, n in captured) / total, rtol=1e-5, atol=1e-7)


def test_dead_supernode_is_mapped_to_its_site_and_fails_the_run(federation, tmp_path):
    out = tmp_path / "out"
    cfg = run_config(out, **{"num-server-rounds": 2, "min-train-nodes": 3, "min-available-nodes": 3})
    grid = make_grid(federation, cfg)
    calls = {"n": 0}

    def dies_in_round_2(msg, ctx):
        calls["n"] += 1
        return run_client(msg, ctx) if calls["n"] == 1 else dead_node(msg, ctx)

    grid.nodes[102].behaviour = dies_in_round_2
    with pytest.raises(
        RoundFailedError,
        match=r"round 2: 2 of 3 sites returned a usable update, min-train-nodes is 3\. "
        r"Failures: site-c: NODE_UNAVAILABLE \(reported by the SuperLink",
    ):
        run_federation(grid, RunSettings.from_run_config(cfg))
    prov = json.loads((out / "provenance.json").read_text())
    assert prov["status"] == "failed" and "RoundFailedError" in prov["error"]
    failed = prov["rounds"][2]["sites"]["site-c"]
    # The error reply came from node 1 (the SuperLink), yet it is booked on site-c's node.
    assert failed["status"] == "failed" and failed["node_id"] == "102"
    assert not (out / "model.safetensors").exists()


def test_silent_node_times_out_and_is_recorded(federation, tmp_path):
    out = tmp_path / "out"
    cfg = run_config(out, **{"num-server-rounds": 1})
    grid = make_grid(federation, cfg)
    grid.nodes[100].behaviour = silent_node
    run_federation(grid, RunSettings.from_run_config(cfg))
    prov, _ = read(out)
    assert prov["rounds"][1]["sites"]["node-100"] == {
        "node_id": "100",
        "status": "failed",
        "error": "no reply before round-timeout",
    }


def test_tampered_update_is_rejected(federation, tmp_path):
    out = tmp_path / "out"
    cfg = run_config(out, **{"num-server-rounds": 1})
    grid = make_grid(federation, cfg)

    def tamper(msg, ctx):
        reply = run_client(msg, ctx)
        name = next(iter(reply.content["arrays"].keys()))
        a = reply.content["arrays"][name]
        arr = a.numpy().copy()
        arr.flat[0] += 1.0
        reply.content["arrays"][name] = Array(arr)
        return reply

    grid.nodes[101].behaviour = tamper
    run_federation(grid, RunSettings.from_run_config(cfg))
    prov, card = read(out)
    assert prov["rounds"][1]["sites"]["site-b"]["error"].startswith("rejected: update sha256 mismatch")
    assert "site-b" not in card["sites"]


def test_phi_at_a_site_reaches_the_server_as_a_tag_name_only(federation, tmp_path):
    from test_wl_dicom import PATIENT, write_dicom

    site = federation.parent / "phi-site"
    write_dicom(site / "images" / "x1.dcm", PatientName=PATIENT)
    (site / "labels.csv").write_text("id,label,split\nx1,benign,train\nx2,normal,val\n")
    write_dicom(site / "images" / "x2.dcm")
    out = tmp_path / "out"
    cfg = run_config(out, **{"num-server-rounds": 1})
    grid = InProcessGrid(
        [
            Node(100, node_config(federation, "site-a"), cfg),
            Node(101, node_config(federation, "site-b"), cfg),
            Node(102, node_config(federation.parent, "phi-site"), cfg),
        ]
    )
    run_federation(grid, RunSettings.from_run_config(cfg))
    text = (out / "provenance.json").read_text()
    failed = json.loads(text)["rounds"][1]["sites"]["phi-site"]  # named from the error text
    assert "PHIError" in failed["error"] and "PatientName (0010,0010)" in failed["error"]
    assert "DOE" not in text and "JANE" not in text


@pytest.mark.parametrize("strategy", ["fedprox", "fedadam"])
def test_other_strategies_run_and_differ_from_fedavg(federation, tmp_path, strategy):
    digests = {}
    for name in ("fedavg", strategy):
        cfg = run_config(tmp_path / name, **{"num-server-rounds": 1, "strategy": name, "proximal-mu": 1.0})
        grid = make_grid(federation, cfg)
        run_federation(grid, RunSettings.from_run_config(cfg))
        digests[name] = file_sha256(tmp_path / name / "model.safetensors")
        if name == "fedprox":
            assert all(m.content["config"]["proximal-mu"] == 1.0 for m in grid.sent_log)
    assert digests["fedavg"] != digests[strategy]
    prov = json.loads((tmp_path / strategy / "provenance.json").read_text())
    assert prov["strategy"] == strategy and prov["status"] == "completed"


def test_too_few_nodes_fail_after_the_wait_deadline(federation, tmp_path):
    cfg = run_config(tmp_path / "out", **{"node-wait-timeout": 1.0, "min-available-nodes": 3})
    grid = make_grid(federation, cfg, sites=SITES[:2])
    with pytest.raises(NodesUnavailableError, match=r"round 1: 2 SuperNode\(s\) connected after waiting 1 s, 3 needed"):
        run_federation(grid, RunSettings.from_run_config(cfg))


def test_missing_out_dir_fails_before_any_round(federation):
    cfg = run_config("")
    grid = make_grid(federation, cfg)
    with pytest.raises(ConfigError, match="'out-dir' is empty"):
        run_federation(grid, RunSettings.from_run_config(cfg))
    assert grid.sent_log == []


def test_dp_run_reports_epsilon_per_site_in_provenance_and_model_card(federation, tmp_path):
    out = tmp_path / "out"
    cfg = run_config(out, **{"privacy.dp": True, "privacy.noise-multiplier": 1.0, "num-server-rounds": 2})
    ledger = {"privacy-ledger": str(tmp_path / "ledger"), "privacy-budget-epsilon": 100.0}
    run_federation(make_grid(federation, cfg, **ledger), RunSettings.from_run_config(cfg))
    prov, card = read(out)
    r1, r2 = (prov["rounds"][i]["sites"] for i in (1, 2))
    for site in SITES:
        m1, m2 = r1[site]["metrics"], r2[site]["metrics"]
        assert m1["dp-delta"] == 1e-5 and 0 < m1["dp-epsilon"] == pytest.approx(m1["dp-epsilon-total"])
        # The accountant's history persisted in the site's ledger between rounds.
        assert m2["dp-epsilon-total"] > m2["dp-epsilon"] and m2["dp-epsilon-total"] > m1["dp-epsilon-total"]
    eps = card["privacy"]["epsilon_per_site"]
    assert set(eps) == set(SITES) and all(e["delta"] == 1e-5 and e["round"] == 2 for e in eps.values())
    assert eps["site-a"]["epsilon"] == r2["site-a"]["metrics"]["dp-epsilon-total"]
    assert card["privacy"]["mechanism"].startswith("DP-SGD") and card["training"]["dp"] is True
