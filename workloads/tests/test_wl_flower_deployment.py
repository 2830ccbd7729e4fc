"""The Flower App in a real local deployment: one flower-superlink, three
flower-supernode processes (each with its site's --node-config), `flwr run`,
two rounds on CPU. Asserts the global model improves on held-out data and
that the provenance hashes are those of the files the ServerApp wrote."""

import json
from pathlib import Path

import pytest
from fedcare_workloads.cli import evaluate_model_file
from fedcare_workloads.hashing import file_sha256
from fedcare_workloads.synth import generate_federation
from wl_deploy import LocalDeployment

APP_DIR = Path(__file__).resolve().parents[1]
SITES = ("site-a", "site-b", "site-c")


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_two_rounds_on_three_supernodes(tmp_path):
    data = tmp_path / "data"
    generate_federation(data, num_sites=3, images_per_site=200, holdout=150, image_size=64, seed=0)
    out = tmp_path / "out"
    run_config = (
        f"num-server-rounds=2 fraction-evaluate=0.0 min-train-nodes=3 min-available-nodes=3 "
        f"local-epochs=3 batch-size=16 node-wait-timeout=90.0 round-timeout=180.0 "
        f'out-dir="{out}" server-eval-path="{data / "holdout"}"'
    )
    with LocalDeployment(tmp_path / "deploy") as dep:
        dep.start_superlink()
        for site in SITES:
            dep.start_supernode(
                site, {"site": site, "data-path": str(data / site), "data-root": str(data), "torch-threads": 1}
            )
        run_id = dep.submit(APP_DIR, run_config)
        run = dep.wait_finished(run_id, deadline_s=300)
        assert run["status"] == "finished:completed", f"{run}\n{dep.logs()}"

        # Same federation, a run every site must refuse (its labels are not in
        # `classes`): flwr alone would report it completed with the initial model.
        bad_out = tmp_path / "bad-out"
        bad_id = dep.submit(
            APP_DIR,
            f"num-server-rounds=1 fraction-evaluate=0.0 min-train-nodes=2 "
            f'classes="normal,benign,cancer" out-dir="{bad_out}"',
        )
        bad = dep.wait_finished(bad_id, deadline_s=120)
    assert bad["status"] == "finished:failed", bad
    assert "RoundFailedError" in bad["status-details"] or "round 1" in bad["status-details"], bad
    bad_prov = json.loads((bad_out / "provenance.json").read_text())
    assert bad_prov["status"] == "failed" and "0 of 3 sites returned a usable update" in bad_prov["error"]
    for site in SITES:  # real flwr error replies, booked on the right site via the site= prefix
        err = bad_prov["rounds"][1]["sites"][site]["error"]
        assert err.startswith("CLIENT_APP_RAISED_EXCEPTION") and "unknown label; expected one of normal, benign, cancer" in err
        assert "[ref=" in err and str(data) not in err   # redacted: no paths or row ids leave the site
    assert not (bad_out / "model.safetensors").exists()

    prov = json.loads((out / "provenance.json").read_text())
    card = json.loads((out / "model-card.json").read_text())
    assert prov["status"] == "completed" and prov["run_id"] == run_id

    # Provenance hashes are the sha256 of the files written.
    model_sha = file_sha256(out / "model.safetensors")
    assert card["model"]["sha256"] == model_sha == prov["rounds"][-1]["global_model_sha256"]
    assert card["provenance"]["sha256"] == file_sha256(out / "provenance.json")
    for r in prov["rounds"]:
        assert file_sha256(out / r["global_model_file"]) == r["global_model_sha256"]
    for r in prov["rounds"][1:]:
        assert sorted(r["sites"]) == list(SITES)
        assert all(o["status"] == "ok" and len(o["update_sha256"]) == 64 for o in r["sites"].values())
        assert {o["num_examples"] for o in r["sites"].values()} == {140}
    assert card["sites"] == list(SITES) and card["rounds"] == 2

    # The global model improves on held-out data: checked independently of the
    # ServerApp's own evaluation, by loading the files it wrote.
    before = evaluate_model_file(out / prov["rounds"][0]["global_model_file"], data / "holdout")
    after = evaluate_model_file(out / "model.safetensors", data / "holdout")
    assert after["num-examples"] == 150
    assert after["loss"] < before["loss"] - 0.1, (before, after)
    assert after["accuracy"] > before["accuracy"] + 0.2, (before, after)
    assert after["auroc"] > before["auroc"] + 0.2, (before, after)
    server = [r["server_evaluation"] for r in prov["rounds"]]
    assert server[-1]["accuracy"] == pytest.approx(after["accuracy"])
