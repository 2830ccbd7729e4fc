"""The ModelRelease pipeline run by the real hub (kopf) on the emulator, anchoring on a real anvil."""

from __future__ import annotations

import base64
import copy
import json

import pytest
from eth_account import Account
from eth_utils import keccak

from fedcare.api.resources import API_VERSION
from fedcare.hub.release_service import ReleaseConfig
from fedcare.integrations.chain import ChainClient
from fedcare.integrations.keyref import EnvKeyRef
from fedcare.integrations.signing import Signature, verify
from fedcare.release.digest import ReleaseDigest
from fedcare.sandbox.anvil import DEV_KEY
from tests.support.chain import FAST_RPC, settings
from tests.support.harness import eventually
from tests.support.netfault import Relay
from tests.support.releases import LocalSigner, make_model, release

RELEASES = ("modelreleases", "default")
ROUND = json.loads(json.dumps(__import__("yaml").safe_load(
    (__import__("pathlib").Path(__file__).resolve().parents[2] / "examples" / "federatedround-ultrasound.yaml")
    .read_text())))


def ref(name: str):
    from fedcare.integrations.kube import Ref
    return Ref(API_VERSION, "modelreleases", "default", name)


def cond(obj, ctype):
    return next((c for c in (obj or {}).get("status", {}).get("conditions", []) if c["type"] == ctype), {})


def config(anvil, dev_key, **kw) -> ReleaseConfig:
    base = dict(signer=LocalSigner(), key_ref=dev_key, rpc_url=anvil.url, rpc_policy=FAST_RPC, retry_delay=0.3,
                error_delay=0.5, receipt_timeout=10.0, poll_interval=0.05)
    base.update(kw)
    return ReleaseConfig(**base)


async def condition(api, name, ctype, status="True", timeout=20.0, reason=None):
    async def check():
        obj = await api.get_or_none(ref(name))
        found = cond(obj, ctype)
        if found.get("status") == status and (reason is None or found.get("reason") == reason):
            return obj
        return None
    return await eventually(check, timeout=timeout, message=f"{name}: {ctype}={status} {reason or ''}")


def anchored_events(anvil, address):
    topic = "0x" + keccak(text="Anchored(bytes32,bytes32,bytes32,address,string)").hex()
    return anvil.rpc("eth_getLogs", {"address": address, "fromBlock": "0x0", "toBlock": "latest",
                                     "topics": [topic]})


async def lookup(anvil, registry, digest):
    async with ChainClient(settings(anvil, registry)) as client:
        return await client.lookup(digest)


async def test_release_is_verified_signed_anchored_and_promoted(hub, api, anvil, dev_key, registry, tmp_path):
    path, digest = make_model(tmp_path / "m1")
    cfg = config(anvil, dev_key)
    async with hub(release=cfg) as logs:
        await api.create(ref(None), release("r1", path, digest, anchor=(31337, registry, 1),
                                            participants=["rouen", "lyon"]))
        obj = await condition(api, "r1", "Promoted")      # the last step: every other one is done
        st = obj["status"]
        assert obj["status"]["phase"] == "Anchored" and st["stage"] == "Candidate"
        for ctype in ("Valid", "Verified", "Signed", "Anchored"):
            assert cond(obj, ctype)["status"] == "True", ctype
        assert cond(obj, "Revoked")["status"] == "False"
        assert st["anchor"]["txHash"].startswith("0x") and st["anchor"]["confirmations"] >= 1
        assert st["anchor"]["chainId"] == 31337 and not st["anchor"].get("pendingTx")
        # promotion by a spec change (what a GitOps commit does)
        await api.patch(ref("r1"), {"spec": {"stage": "Production"}})
        obj = await eventually(lambda: _stage(api, "r1", "Production"), timeout=15)
    st = obj["status"]
    assert [h["stage"] for h in st["stageHistory"]] == ["Candidate", "Production"]
    assert cond(obj, "Promoted")["status"] == "True"
    rec = await lookup(anvil, registry, digest)
    assert rec.exists and not rec.revoked and rec.provenance_root.hex() == st["provenanceRoot"]
    # the signature covers the documented release digest and verifies with the public key
    d = ReleaseDigest("ultrasound-cnn", "1.0.0", digest[7:], st["provenanceRoot"], st["roundId"])
    sig = Signature(st["signature"]["keyId"], st["signature"]["algorithm"], st["signature"]["signature"])
    assert verify(cfg.signer.public_key_pem(sig.key_id), d.message(), sig)
    # proofs and the manifest lie beside the artifact
    proofs = json.loads((path.parent / "provenance-proofs.json").read_text())
    manifest = json.loads((path.parent / "release.json").read_text())
    assert proofs["root"] == st["provenanceRoot"] and len(proofs["leaves"]) == 3 + 2 * 3
    assert manifest["chain"]["txHash"] == st["anchor"]["txHash"]
    assert len(anchored_events(anvil, registry)) == 1
    key = DEV_KEY.removeprefix("0x")
    assert not [r for r in logs.records if key in r.message]
    assert key not in json.dumps(obj)


async def _stage(api, name, stage):
    obj = await api.get_or_none(ref(name))
    return obj if (obj or {}).get("status", {}).get("stage") == stage else None


async def test_digest_mismatch_is_never_anchored(hub, api, anvil, dev_key, registry, tmp_path):
    path, digest = make_model(tmp_path / "m")
    wrong = "sha256:" + "0" * 64
    async with hub(release=config(anvil, dev_key)):
        await api.create(ref(None), release("bad", path, wrong, anchor=(31337, registry, 1)))
        obj = await condition(api, "bad", "Verified", "False", reason="DigestMismatch")
    assert obj["status"]["phase"] == "Failed" and cond(obj, "Ready")["status"] == "False"
    assert digest[7:] in cond(obj, "Verified")["message"]
    assert "anchor" not in obj["status"] and "signature" not in obj["status"]
    assert not (await lookup(anvil, registry, wrong)).exists and anchored_events(anvil, registry) == []


@pytest.mark.parametrize("uri, reason", [("file:///nonexistent/model.safetensors", "ArtifactNotFound"),
                                         ("file:///tmp/../etc/passwd", "UnsupportedURI"),
                                         ("gs://bucket/model", "UnsupportedURI")])
async def test_artifact_uri_that_does_not_resolve(hub, api, anvil, dev_key, registry, tmp_path, uri, reason):
    path, digest = make_model(tmp_path / "m")
    body = release("nores", path, digest, anchor=(31337, registry, 1))
    body["spec"]["artifact"]["storageUri"] = uri
    async with hub(release=config(anvil, dev_key)):
        await api.create(ref(None), body)
        obj = await condition(api, "nores", "Verified", "False", reason=reason)
    assert "spec.artifact.storageUri" in cond(obj, "Verified")["message"]


async def test_release_of_a_round_that_has_not_succeeded(hub, api, anvil, dev_key, registry, tmp_path):
    from fedcare.integrations.kube import Ref
    rounds = Ref(API_VERSION, "federatedrounds", "default")
    path, digest = make_model(tmp_path / "m")
    async with hub(release=config(anvil, dev_key)):
        await api.create(rounds, copy.deepcopy(ROUND))
        await api.create(ref(None), release("early", path, digest, anchor=(31337, registry, 1),
                                            round_ref=("default", ROUND["metadata"]["name"])))
        obj = await condition(api, "early", "Verified", "False", reason="RoundNotSucceeded")
        assert "not Succeeded" in cond(obj, "Verified")["message"] and obj["status"]["phase"] == "Pending"
        # the round succeeds (its status written as the round controller would): the release proceeds
        await api.patch(Ref(API_VERSION, "federatedrounds", "default", ROUND["metadata"]["name"]),
                        {"status": {"phase": "Succeeded", "result": {"digest": digest}, "cleanedUp": True,
                                    "conditions": [{"type": "Complete", "status": "True", "reason": "RunSucceeded",
                                                    "message": "faked by the test",
                                                    "lastTransitionTime": "2026-01-01T00:00:00Z"}]}},
                        status=True)   # Complete + cleanedUp: a finished round the round controller leaves alone
        # the pipeline retries with back-off (5 s doubling): the next try may be a while away
        obj = await condition(api, "early", "Ready", timeout=120)
        rnd = await api.get(Ref(API_VERSION, "federatedrounds", "default", ROUND["metadata"]["name"]))
        assert rnd["status"]["phase"] == "Succeeded"     # the round controller left the finished round alone
    assert obj["status"]["roundId"] != ""


async def test_provenance_that_does_not_match(hub, api, anvil, dev_key, registry, tmp_path):
    path, digest = make_model(tmp_path / "m")
    prov = json.loads((path.parent / "provenance.json").read_text())
    prov["rounds"][-1]["global_model_sha256"] = "f" * 64
    (path.parent / "provenance.json").write_text(json.dumps(prov))
    async with hub(release=config(anvil, dev_key)):
        await api.create(ref(None), release("prov", path, digest, anchor=(31337, registry, 1)))
        obj = await condition(api, "prov", "Verified", "False", reason="ProvenanceMismatch")
    assert "not this model's" in cond(obj, "Verified")["message"] and anchored_events(anvil, registry) == []


async def test_contract_without_code_wrong_chain_and_no_funds(hub, api, anvil, dev_key, registry, tmp_path,
                                                              monkeypatch):
    poor = Account.create()
    monkeypatch.setenv("POOR", poor.key.hex())
    async with ChainClient(settings(anvil, registry), dev_key) as owner:
        await owner.set_registrar(poor.address)
    bodies = []
    for name, anchor in (("nocode", (31337, "0x" + "42" * 20, 1)), ("chain", (999, registry, 1))):
        path, digest = make_model(tmp_path / name)
        bodies.append(release(name, path, digest, anchor=anchor))
    async with hub(release=config(anvil, dev_key)):
        for body in bodies:
            await api.create(ref(None), body)
        nocode = await condition(api, "nocode", "Anchored", "False", reason="NoContractCode")
        chain = await condition(api, "chain", "Anchored", "False", reason="ChainIdMismatch")
    assert "fedcare chain deploy" in cond(nocode, "Anchored")["message"]
    assert "31337" in cond(chain, "Anchored")["message"] and cond(chain, "Ready")["reason"] == "ChainIdMismatch"
    path, digest = make_model(tmp_path / "poor")
    async with hub(release=config(anvil, EnvKeyRef("POOR"))):
        await api.create(ref(None), release("poor", path, digest, anchor=(31337, registry, 1)))
        obj = await condition(api, "poor", "Anchored", "False", reason="InsufficientFunds")
    assert poor.address in cond(obj, "Anchored")["message"]
    assert poor.key.hex().removeprefix("0x") not in json.dumps(obj)
    assert anchored_events(anvil, registry) == []


async def test_hub_killed_between_send_and_receipt_anchors_once(hub, api, anvil, dev_key, registry, tmp_path):
    path, digest = make_model(tmp_path / "m")
    anvil.automine(False)
    async with hub(release=config(anvil, dev_key)):
        await api.create(ref(None), release("crash", path, digest, anchor=(31337, registry, 1)))
        obj = await condition(api, "crash", "Anchored", "False", reason="TransactionPending")
        pending = obj["status"]["anchor"]["pendingTx"]
    # the hub is gone; the transaction is mined while it is down
    anvil.mine()
    anvil.automine(True)
    async with hub(release=config(anvil, dev_key)):
        obj = await condition(api, "crash", "Anchored")
    assert obj["status"]["anchor"]["txHash"] == pending
    assert len(anchored_events(anvil, registry)) == 1


async def test_rpc_down_for_a_while_then_back(hub, api, anvil, dev_key, registry, tmp_path):
    relay = Relay(anvil.port)
    path, digest = make_model(tmp_path / "m")
    cfg = config(anvil, dev_key, rpc_url=relay.url)
    try:
        async with hub(release=cfg):
            await api.create(ref(None), release("down", path, digest, anchor=(31337, registry, 1)))
            obj = await condition(api, "down", "Anchored", "False", reason="ChainUnreachable")
            assert "RPC" in cond(obj, "Anchored")["message"]
            await relay.up()
            obj = await condition(api, "down", "Anchored")
    finally:
        await relay.down()
    assert len(anchored_events(anvil, registry)) == 1


async def test_revocation_and_finalizer_revoke_on_chain(hub, api, anvil, dev_key, registry, tmp_path):
    p1, d1 = make_model(tmp_path / "a")
    p2, d2 = make_model(tmp_path / "b")
    async with hub(release=config(anvil, dev_key)):
        await api.create(ref(None), release("rev", p1, d1, anchor=(31337, registry, 1), stage="Production"))
        await api.create(ref(None), release("del", p2, d2, anchor=(31337, registry, 1), version="1.0.1"))
        await condition(api, "rev", "Ready")
        await condition(api, "del", "Ready")
        await api.patch(ref("rev"), {"spec": {"revocation": {"revoked": True, "reason": "label leak"}}})
        obj = await condition(api, "rev", "Revoked")
        assert cond(obj, "Ready")["status"] == "False" and obj["status"]["phase"] == "Revoked"
        obj = await eventually(lambda: _stage(api, "rev", "Archived"), timeout=10)
        assert [h["stage"] for h in obj["status"]["stageHistory"]] == ["Candidate", "Production", "Archived"]
        await api.delete(ref("del"))
        await eventually(lambda: _gone(api, "del"), timeout=20)
    r1, r2 = await lookup(anvil, registry, d1), await lookup(anvil, registry, d2)
    assert r1.exists and r1.revoked and r2.exists and r2.revoked


async def _gone(api, name):
    return await api.get_or_none(ref(name)) is None


async def test_one_production_per_model_name(hub, api, anvil, dev_key, registry, tmp_path):
    p1, d1 = make_model(tmp_path / "a")
    p2, d2 = make_model(tmp_path / "b")
    async with hub(release=config(anvil, dev_key)):
        await api.create(ref(None), release("v1", p1, d1, anchor=(31337, registry, 1), stage="Production"))
        await eventually(lambda: _stage(api, "v1", "Production"), timeout=20)
        await api.create(ref(None), release("v2", p2, d2, anchor=(31337, registry, 1), stage="Production",
                                            version="2.0.0"))
        await eventually(lambda: _stage(api, "v2", "Production"), timeout=20)
        old = await eventually(lambda: _stage(api, "v1", "Archived"), timeout=10)
        # going back is refused with a reason; Archived is final
        await api.patch(ref("v2"), {"spec": {"stage": "Staging"}})
        v2 = await condition(api, "v2", "Promoted", "False", reason="StageCannotGoBack")
    assert old["status"]["supersededBy"] == "v2"
    assert [h["stage"] for h in old["status"]["stageHistory"]] == ["Candidate", "Production", "Archived"]
    assert v2["status"]["stage"] == "Production"


async def test_promotion_waits_for_anchoring(hub, api, anvil, dev_key, tmp_path):
    path, digest = make_model(tmp_path / "m")
    async with hub(release=config(anvil, dev_key, rpc_url="")):
        await api.create(ref(None), release("wait", path, digest, anchor=(31337, "0x" + "42" * 20, 1),
                                            stage="Production"))
        await condition(api, "wait", "Anchored", "False", reason="ChainNotConfigured")
        obj = await condition(api, "wait", "Promoted", "False", reason="AwaitingAnchoring")
    assert cond(obj, "Verified")["status"] == "True" and obj["status"]["stage"] == "Candidate"
    assert obj["status"]["phase"] == "Verified"


def test_signature_fixture_is_real_ed25519():
    signer = LocalSigner()
    sig = signer.sign(b"m")
    assert verify(signer.public_key_pem(sig.key_id), b"m", sig)
    flipped = bytearray(base64.b64decode(sig.signature))
    flipped[0] ^= 1
    assert not verify(signer.public_key_pem(sig.key_id), b"m",
                      Signature(sig.key_id, "ed25519", base64.b64encode(bytes(flipped)).decode()))


async def test_concurrent_releases_with_batching_each_anchor_once(hub, api, anvil, dev_key, registry, tmp_path):
    names = [f"b{i}" for i in range(6)]
    async with hub(release=config(anvil, dev_key, batch_window=0.3)):
        for i, name in enumerate(names):
            path, digest = make_model(tmp_path / name)
            await api.create(ref(None), release(name, path, digest, anchor=(31337, registry, 1), version=f"1.0.{i}"))
        objs = [await condition(api, name, "Ready", timeout=40) for name in names]
    assert len(anchored_events(anvil, registry)) == len(names)   # exactly once each, shared or not
    for o in objs:
        assert o["status"]["anchor"]["txHash"] and not o["status"]["anchor"].get("pendingTx")
