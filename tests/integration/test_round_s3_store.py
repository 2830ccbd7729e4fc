"""A real round (the sandbox federation: hub, agents, process kubelets, real Flower processes) with
the artifact store's S3-compatible option on a real S3 server (S3Proxy) and spec.release.create:
its result is copied to the bucket, the round records the s3:// model, and the ModelRelease the
round creates is verified from the bucket, anchored on a real anvil and passes `fedcare verify`."""

from __future__ import annotations

import asyncio
import hashlib
import importlib.util
import re

import pytest

from fedcare import cli
from fedcare.api.resources import API_VERSION
from fedcare.hub.artifact_upload import S3ResultStore
from fedcare.integrations.kube import Ref
from fedcare.sandbox import release as sandbox_release
from fedcare.sandbox.federation import Federation, round_manifest
from tests.support.harness import eventually
from tests.support.s3 import BUCKET, s3  # noqa: F401

pytestmark = pytest.mark.skipif(importlib.util.find_spec("fedcare_workloads") is None,
                                reason="needs the workloads package: pip install -c constraints.txt -e ./workloads")

ROUNDS = Ref(API_VERSION, "federatedrounds", "default")


class S3Federation(Federation):
    """The sandbox federation whose hub also copies results to an S3 store."""

    def __init__(self, *args, s3store: S3ResultStore, **kwargs):
        super().__init__(*args, **kwargs)
        self.s3store = s3store

    def round_config(self):
        cfg = super().round_config()
        cfg.s3 = self.s3store
        return cfg


def cond(obj, ctype):
    return next((c for c in (obj or {}).get("status", {}).get("conditions", []) if c["type"] == ctype), {})


async def phase(api, ref, *phases):
    obj = await api.get_or_none(ref)
    return obj if obj and (obj.get("status") or {}).get("phase") in phases else None


@pytest.mark.timeout(2400)
async def test_a_real_round_stores_its_model_in_s3_and_its_release_verifies(emulator, anvil, s3, tmp_path,
                                                                           monkeypatch, capsys):
    cfg = sandbox_release.release_config(anvil.url, anvil.chain_id)
    await sandbox_release.deploy(cfg)
    store = S3ResultStore(s3.store(), BUCKET, "hub-a")
    fed = S3Federation(str(emulator.url), tmp_path, ["rouen", "lyon"], release=cfg, s3store=store)
    try:
        await fed.start(images=40)
        api = fed.api
        await api.create(ROUNDS, round_manifest("r1", sites=2, rounds=1, holdout=str(fed.data / "holdout"),
                                                release={"create": True, "modelName": "ultrasound-cnn"},
                                                roundTimeoutSeconds=900, activeDeadlineSeconds=2000))
        r1 = Ref(API_VERSION, "federatedrounds", "default", "r1")
        done = await eventually(lambda: phase(api, r1, "Succeeded", "Failed"), timeout=2000, interval=1.0)
        st = done["status"]
        assert st["phase"] == "Succeeded", (st, cond(done, "Failed"), cond(done, "Complete"))
        uri, digest = st["result"]["storageUri"], st["result"]["digest"]
        md = done["metadata"]
        relative = f"default/r1-{md['uid'][:8]}/attempt-1"
        assert uri == f"s3://{BUCKET}/hub-a/{relative}/model.safetensors"
        # the bucket holds the round's files, byte for byte what the ServerApp wrote to the PVC
        local = fed.artifact_dir / relative
        for name in ("model.safetensors", "model.safetensors.sha256", "provenance.json", "model-card.json"):
            want = hashlib.sha256((local / name).read_bytes()).hexdigest()
            assert s3.store().sha256(BUCKET, f"hub-a/{relative}/{name}") == want, name
        assert digest == "sha256:" + hashlib.sha256((local / "model.safetensors").read_bytes()).hexdigest()
        # the round's ModelRelease names the S3 object by digest; the hub verifies it from the bucket
        name = st["result"]["modelReleaseRef"]
        rel = Ref(API_VERSION, "modelreleases", "default", name)

        async def anchored():
            obj = await api.get_or_none(rel)
            return obj if cond(obj, "Anchored").get("status") == "True" else None
        obj = await eventually(anchored, timeout=180, interval=0.5)
        assert obj["spec"]["artifact"] == {"storageUri": uri, "digest": digest}
        assert cond(obj, "Verified")["status"] == "True"
        assert s3.store().stat(BUCKET, f"hub-a/{relative}/release.json") is not None
        assert s3.store().stat(BUCKET, f"hub-a/{relative}/provenance-proofs.json") is not None
    finally:
        await fed.close()
    assert fed.processes() == [], fed.processes()
    # a stranger with read access to the bucket verifies the release end to end
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", s3.endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3.secret_key)
    code = await asyncio.to_thread(cli.main, ["verify", uri, "--rpc", cfg.rpc_url, "--contract", cfg.contract_address])
    out = re.sub(r"\s+", " ", capsys.readouterr().out)
    assert code == 0 and "VERIFIED" in out, out
