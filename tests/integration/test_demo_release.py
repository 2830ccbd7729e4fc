"""The sandbox release step: anvil, ModelRegistry deploy, the hub anchors the model, `fedcare verify` passes.

(The demo's training step is slow; here the model and its provenance are fixture files of the
same layout the Flower ServerApp writes: out/model.safetensors + out/provenance.json.)
"""

from __future__ import annotations

from fedcare.hub.context import HubContext
from fedcare.hub.handlers import make_registry
from fedcare.integrations.kube import Kube, RetryPolicy
from fedcare.sandbox import release as sandbox_release
from tests.support.harness import run_operator
from tests.support.releases import make_model


async def test_demo_release_step_anchors_and_verifies(emulator, anvil, tmp_path, capsys):
    out = tmp_path / "out"
    make_model(out)
    cfg = sandbox_release.release_config(anvil.url, anvil.chain_id)
    policy = RetryPolicy(attempts=3, base_delay=0.1, max_delay=1.0, timeout=5.0)
    api = Kube.from_url(str(emulator.url), policy=policy)
    ctx = HubContext(kube=Kube.from_url(str(emulator.url), policy=policy), release=cfg)
    try:
        async with run_operator(emulator, make_registry(ctx)):
            await sandbox_release.release_step(api, cfg, out)
    finally:
        await api.close()
    printed = capsys.readouterr().out
    assert "phase=Anchored stage=Staging" in printed
    assert "VERIFIED: every check passed" in printed and "fedcare verify exit status 0" in printed
    assert (out / "release.json").exists() and (out / "provenance-proofs.json").exists()
