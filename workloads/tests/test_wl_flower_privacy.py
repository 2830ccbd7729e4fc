"""The privacy ledger with real Flower processes: a SuperNode restarted between runs
continues the same accounting, and a site over its budget refuses with
PrivacyBudgetExhausted, which the ServerApp records as the site's reason."""

import json
import os
import signal
from pathlib import Path

import pytest
from fedcare_workloads.ledger import PrivacyLedger, epsilon_for
from fedcare_workloads.synth import generate_federation
from wl_deploy import LocalDeployment

APP_DIR = Path(__file__).resolve().parents[1]


def stop_supernode(dep: LocalDeployment, name: str) -> None:
    for entry in list(dep.procs):
        if entry[0] == name:
            os.killpg(entry[1].pid, signal.SIGTERM)
            entry[1].wait(timeout=30)
            dep.procs.remove(entry)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_ledger_survives_a_supernode_restart_and_refusals_carry_their_reason(tmp_path):
    data = tmp_path / "data"
    generate_federation(data, num_sites=2, images_per_site=30, holdout=0, image_size=32, seed=1)
    ledgers = tmp_path / "ledgers"

    def node(site, budget):
        return {"site": site, "data-path": str(data / site), "data-root": str(data), "torch-threads": 1,
                "privacy-ledger": str(ledgers / site), "privacy-budget-epsilon": budget}

    def run_config(out):
        return (
            "num-server-rounds=1 fraction-evaluate=0.0 min-train-nodes=1 min-available-nodes=2 "
            "image-size=32 batch-size=8 privacy.dp=true privacy.noise-multiplier=1.0 "
            f'node-wait-timeout=120.0 round-timeout=240.0 out-dir="{out}"'
        )

    with LocalDeployment(tmp_path / "deploy") as dep:
        dep.start_superlink()
        dep.start_supernode("site-a", node("site-a", 50.0))
        dep.start_supernode("site-b", node("site-b", 0.01))  # a budget no round fits in
        first_id = dep.submit(APP_DIR, run_config(tmp_path / "out1"))
        first = dep.wait_finished(first_id, deadline_s=400)
        assert first["status"] == "finished:completed", f"{first}\n{dep.logs()}"
        # The SuperNode restarts (new process, new Context.state): only the ledger survives.
        stop_supernode(dep, "site-a")
        dep.start_supernode("site-a-restarted", node("site-a", 50.0))
        second_id = dep.submit(APP_DIR, run_config(tmp_path / "out2"))
        second = dep.wait_finished(second_id, deadline_s=400)
        assert second["status"] == "finished:completed", f"{second}\n{dep.logs()}"

    p1 = json.loads((tmp_path / "out1" / "provenance.json").read_text())["rounds"][1]["sites"]
    p2 = json.loads((tmp_path / "out2" / "provenance.json").read_text())["rounds"][1]["sites"]
    refused = p1["site-b"]
    assert refused["status"] == "failed" and refused["reason"] == "PrivacyBudgetExhausted", refused
    assert str(ledgers) not in refused["error"]
    e1, e2 = p1["site-a"]["metrics"], p2["site-a"]["metrics"]
    # Each run alone spent one round; the dataset's epsilon composes both runs.
    assert e2["dp-epsilon-total"] == pytest.approx(e1["dp-epsilon-total"])
    assert e2["dp-epsilon-dataset"] > e1["dp-epsilon-dataset"]
    ledger = PrivacyLedger(ledgers / "site-a", "site-a")
    spends = [e for e in ledger.entries() if e["kind"] == "spend"]
    assert sorted({e["run_id"] for e in spends}) == sorted({first_id, second_id})
    assert e2["dp-epsilon-dataset"] == pytest.approx(epsilon_for(PrivacyLedger.history(ledger.entries()), 1e-5))
    assert PrivacyLedger.history(PrivacyLedger(ledgers / "site-b", "site-b").entries()) == []  # nothing spent
