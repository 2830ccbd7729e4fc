"""The demo's release step: anvil and the ModelRegistry started by the sandbox, the ModelRelease the
round created anchored by the real hub, promoted to Staging, and `fedcare verify` passing.

(The demo's training step is slow; here the finished round and its model are written exactly as
the round controller and the Flower ServerApp leave them, and the release is created by the round
controller's own code.)
"""

from __future__ import annotations

import contextlib

from fedcare.api.validation import parse
from fedcare.hub.context import HubContext
from fedcare.hub.handlers import make_registry
from fedcare.hub.round_scheduler import Reconciler
from fedcare.integrations.kube import Kube, RetryPolicy
from fedcare.sandbox import anvil as sandbox_anvil
from fedcare.sandbox import release as sandbox_release
from tests.integration.test_round_release import CLAIM, finished_round, round_config
from tests.support.chain import need_anvil
from tests.support.harness import run_operator


async def test_demo_release_step_anchors_promotes_and_verifies(emulator, tmp_path, capsys):
    need_anvil()
    policy = RetryPolicy(attempts=3, base_delay=0.1, max_delay=1.0, timeout=5.0)
    store = tmp_path / "artifacts"
    rc = round_config(store)
    api = Kube.from_url(str(emulator.url), policy=policy)
    try:
        with contextlib.ExitStack() as stack:
            cfg = await sandbox_release.start_chain(stack)
            assert cfg is not None and cfg.contract_address
            ctx = HubContext(kube=Kube.from_url(str(emulator.url), policy=policy), release=cfg, round_config=rc)
            async with run_operator(emulator, make_registry(ctx)):
                body, result = await finished_round(api, store)
                sites = [{"site": s, "status": "ok"} for s in ("rouen", "lyon", "lille")]
                name = await Reconciler(api, rc).release(body, parse("FederatedRound", body), result,
                                                         {"participants": [], "serverRounds": [{"sites": sites}]})
                model = store / result.storage_uri.removeprefix(f"pvc://{CLAIM}/")
                assert await sandbox_release.release_round_model(api, cfg, name, model)
    finally:
        await api.close()
    printed = capsys.readouterr().out
    assert "ModelRegistry deployed at 0x" in printed
    assert "Verified=True Signed=True (sandbox:ed25519:v1) Anchored=True" in printed
    assert "stage=Staging history=Candidate → Staging" in printed
    assert "VERIFIED: every check passed" in printed and "fedcare verify exit status 0" in printed
    assert (model.parent / "release.json").exists() and (model.parent / "provenance-proofs.json").exists()


async def test_demo_says_so_and_skips_the_release_without_anvil(monkeypatch, capsys):
    monkeypatch.setattr(sandbox_release, "anvil_binary", lambda: None)
    monkeypatch.setattr(sandbox_anvil, "anvil_binary", lambda: None)
    with contextlib.ExitStack() as stack:
        assert await sandbox_release.start_chain(stack) is None
    assert "Release skipped: anvil is not installed (make contracts-deps" in capsys.readouterr().out
