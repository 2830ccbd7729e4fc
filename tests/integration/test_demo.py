"""`make demo` keeps working: a FederatedRound trained through the operator in the sandbox."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import pytest


@pytest.mark.skipif(importlib.util.find_spec("fedcare_workloads") is None,
                    reason="needs the workloads package: pip install -c constraints.txt -e ./workloads")
@pytest.mark.timeout(1000)
def test_demo_trains_through_the_operator():
    env = {k: v for k, v in os.environ.items() if k != "KUBECONFIG"}
    proc = subprocess.run([sys.executable, "-m", "fedcare.cli", "sandbox", "demo", "--sites", "2", "--rounds", "1",
                           "--images", "40"], env=env, capture_output=True, text=True, timeout=900)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    for line in ("Applying FederatedRound ultrasound-demo: 2 sites, 1 server rounds", "Round Succeeded",
                 "training pods left: 0; SuperLink pods left: 0", "model.safetensors, provenance.json",
                 "Demo complete", "Flower with TLS (certificate from Vault PKI) and SuperNode authentication"):
        assert line in out, out[-4000:]
    assert "Traceback" not in out, out[-4000:]
