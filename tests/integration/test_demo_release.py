"""The demo's release step: anvil, ModelRegistry deploy, the hub anchors the model, `fedcare verify` passes.

(The demo's training step is slow; here the model and its provenance are fixture files of the
same layout the Flower ServerApp writes: out/model.safetensors + out/provenance.json.)
"""

from __future__ import annotations

from fedcare.hub.context import HubContext
from fedcare.hub.handlers import make_registry
from fedcare.integrations.kube import Kube
from fedcare.sandbox import demo
from fedcare.sandbox import release as sandbox_release
from tests.support.harness import run_operator
from tests.support.releases import make_model


async def test_demo_release_step_anchors_and_verifies(emulator, anvil, tmp_path, capsys):
    out = tmp_path / "out"
    make_model(out)
    cfg = sandbox_release.release_config(anvil.url, anvil.chain_id)
    api = Kube.from_url(str(emulator.url), policy=demo.POLICY)
    ctx = HubContext(kube=Kube.from_url(str(emulator.url), policy=demo.POLICY), release=cfg)
    try:
        async with run_operator(emulator, make_registry(ctx)):
            await demo._release(api, cfg, out)
    finally:
        await api.close()
    printed = capsys.readouterr().out
    assert "phase=Anchored stage=Staging" in printed
    assert "VERIFIED: every check passed" in printed and "fedcare verify exit status 0" in printed
    assert (out / "release.json").exists() and (out / "provenance-proofs.json").exists()
