"""The demo's training step: Vault-issued TLS and SuperNode keys, a real federated round."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fedcare.sandbox.secure_training import run_secure_federation


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_demo_training_runs_with_tls_and_node_authentication(tmp_path: Path) -> None:
    run = run_secure_federation(["rouen", "lyon"], tmp_path / "w", rounds=1, images=24, image_size=32,
                                holdout=0, local_epochs=1, deadline_s=300)
    assert run["status"] == "finished:completed"
    prov = json.loads((Path(run["out"]) / "provenance.json").read_text())
    assert prov["status"] == "completed" and sorted(prov["rounds"][-1]["sites"]) == ["lyon", "rouen"]
    superlink_log = (tmp_path / "w" / "flower" / "superlink.log").read_text(errors="replace")
    assert "--insecure" not in superlink_log and "insecure" not in superlink_log.lower()
