"""``fedcare verify`` and ``fedcare chain deploy`` against a real anvil, from files only."""

from __future__ import annotations

import asyncio
import base64
import json
import re

import pytest

from fedcare import cli
from fedcare.api.model_release import ModelReleaseSpec
from fedcare.integrations.chain import ChainClient
from fedcare.release import artifact as art
from fedcare.release import manifest, merkle
from fedcare.release.checks import verify as verify_release
from fedcare.release.digest import ReleaseDigest
from fedcare.sandbox.anvil import DEV_KEY
from tests.support.chain import KEY_VAR, settings
from tests.support.releases import LocalSigner, make_model, release


def publish(anvil, registry, dev_key, folder, *, anchor: bool = True, size: int = 4096):
    """What the hub does for a release: verify, write proofs, sign, anchor, write release.json."""
    path, digest = make_model(folder, size=size)
    spec = ModelReleaseSpec.model_validate(release("r", path, digest)["spec"])
    signer = LocalSigner()

    async def run():
        v = await verify_release(spec, "default", None)
        art.write_beside(spec.artifact.storage_uri, art.PROOFS, merkle.dumps(v.proofs))
        d = ReleaseDigest(spec.model_name, spec.version, v.model_sha256, v.provenance_root, v.round_id)
        sig = signer.sign(d.message())
        chain = None
        if anchor:
            async with ChainClient(settings(anvil, registry), dev_key) as client:
                res = await client.anchor(d.model_sha256, d.provenance_root, d.round_id, spec.artifact.storage_uri)
            chain = {"chainId": anvil.chain_id, "contract": registry, "txHash": res.tx_hash}
        doc = manifest.build("default", "r", d, sig, signer.public_key_pem(sig.key_id), chain)
        art.write_beside(spec.artifact.storage_uri, art.MANIFEST, manifest.dumps(doc))
    asyncio.run(run())
    return path, digest, signer


def run_verify(capsys, *args: str) -> tuple[int, str]:
    code = cli.main(["verify", *args])
    out = capsys.readouterr().out
    return code, re.sub(r"\s+", " ", out)


def chain_args(anvil, registry):
    return ["--rpc", anvil.url, "--contract", registry]


@pytest.fixture()
def published(anvil, dev_key, registry, tmp_path):
    return publish(anvil, registry, dev_key, tmp_path / "m")


def test_a_good_release_verifies(capsys, anvil, registry, published):
    path, _, _ = published
    code, out = run_verify(capsys, str(path), *chain_args(anvil, registry))
    assert code == 0, out
    assert "VERIFIED" in out and "FAIL" not in out
    for site in ("rouen", "lyon", "lille", "global model"):
        assert f"proof: {site}" in out


def test_flipped_byte_in_the_artifact(capsys, anvil, registry, published):
    path, _, _ = published
    data = bytearray(path.read_bytes())
    data[100] ^= 1
    path.write_bytes(bytes(data))
    code, out = run_verify(capsys, str(path), *chain_args(anvil, registry))
    assert code == 1
    failed = out.split("VERIFICATION FAILED:")[1]
    assert "artifact sha256" in failed and "on-chain record" in failed     # the new hash is not on chain


def test_flipped_byte_in_the_provenance(capsys, anvil, registry, published):
    path, _, _ = published
    prov_path = path.parent / "provenance.json"
    text = prov_path.read_text()
    doc = json.loads(text)
    h = doc["rounds"][1]["sites"]["lyon"]["update_sha256"]
    prov_path.write_text(text.replace(h, h[:-1] + ("0" if h[-1] != "0" else "1")))
    code, out = run_verify(capsys, str(path), *chain_args(anvil, registry))
    assert code == 1 and "provenance root" in out.split("VERIFICATION FAILED:")[1]
    assert "proof: lyon" in out.split("VERIFICATION FAILED:")[1]          # its leaf is no longer in the file


def test_flipped_byte_in_the_signature(capsys, anvil, registry, published):
    path, _, _ = published
    man_path = path.parent / "release.json"
    doc = json.loads(man_path.read_text())
    raw = bytearray(base64.b64decode(doc["signature"]["signature"]))
    raw[5] ^= 1
    doc["signature"]["signature"] = base64.b64encode(bytes(raw)).decode()
    man_path.write_text(json.dumps(doc))
    code, out = run_verify(capsys, str(path), *chain_args(anvil, registry))
    assert code == 1 and out.split("VERIFICATION FAILED:")[1].strip().startswith("signature")


def test_signature_made_by_another_key(capsys, anvil, registry, published, tmp_path):
    path, _, _ = published
    other = LocalSigner()
    pem = tmp_path / "exported.pem"
    pem.write_text(other.public_key_pem(other.key_id))
    code, out = run_verify(capsys, str(path), "--public-key", str(pem), *chain_args(anvil, registry))
    assert code == 1 and "signature" in out.split("VERIFICATION FAILED:")[1]
    # and with the right exported key it passes
    pem.write_text(published[2].public_key_pem(published[2].key_id))
    assert run_verify(capsys, str(path), "--public-key", str(pem), *chain_args(anvil, registry))[0] == 0


def test_a_hash_not_on_chain(capsys, anvil, dev_key, registry, tmp_path):
    path, _, _ = publish(anvil, registry, dev_key, tmp_path / "n", anchor=False)
    code, out = run_verify(capsys, str(path), *chain_args(anvil, registry))
    assert code == 1 and "on-chain record" in out.split("VERIFICATION FAILED:")[1]
    assert "is not anchored" in out


def test_a_revoked_hash(capsys, anvil, dev_key, registry, published):
    path, digest, _ = published

    async def revoke():
        async with ChainClient(settings(anvil, registry), dev_key) as client:
            await client.revoke(digest, "label leak")
    asyncio.run(revoke())
    code, out = run_verify(capsys, str(path), *chain_args(anvil, registry))
    assert code == 1 and "not revoked" in out.split("VERIFICATION FAILED:")[1] and "REVOKED in block" in out


def test_a_hospital_proves_its_contribution_without_the_others_data(capsys, anvil, registry, published, tmp_path):
    path, _, _ = published
    proofs = json.loads((path.parent / "provenance-proofs.json").read_text())
    mine = {**proofs, "leaves": [x for x in proofs["leaves"] if x["site"] == "rouen"]}
    only = tmp_path / "rouen-proofs.json"
    only.write_text(json.dumps(mine))
    (path.parent / "provenance.json").unlink()        # the hospital does not hold the whole provenance
    code, out = run_verify(capsys, str(path), "--proofs", str(only), "--site", "rouen",
                           *chain_args(anvil, registry))
    assert code == 0, out
    assert "proof: rouen" in out and "2/2 contributions proven" in out
    mine["leaves"][0]["sha256"] = "0" * 64                 # a claim of a contribution it did not make
    only.write_text(json.dumps(mine))
    code, out = run_verify(capsys, str(path), "--proofs", str(only), "--site", "rouen",
                           *chain_args(anvil, registry))
    assert code == 1 and "proof: rouen" in out.split("VERIFICATION FAILED:")[1]


def test_wrong_chain_and_contract_without_code(capsys, anvil, registry, published):
    path, _, _ = published
    code, out = run_verify(capsys, str(path), "--chain-id", "5", *chain_args(anvil, registry))
    assert code == 1 and "chain id" in out.split("VERIFICATION FAILED:")[1]
    code, out = run_verify(capsys, str(path), "--rpc", anvil.url, "--contract", "0x" + "42" * 20)
    assert code == 1 and "no contract code" in out


def test_chain_deploy_prints_the_address(capsys, anvil, monkeypatch):
    monkeypatch.setenv(KEY_VAR, DEV_KEY)
    code = cli.main(["chain", "deploy", "--rpc", anvil.url, "--chain-id", str(anvil.chain_id),
                     "--key-ref", f"env:{KEY_VAR}"])
    captured = capsys.readouterr()
    assert code == 0
    address = captured.out.strip()
    assert re.fullmatch(r"0x[0-9a-fA-F]{40}", address)
    assert anvil.rpc("eth_getCode", address, "latest") not in ("0x", "")
    assert DEV_KEY.removeprefix("0x") not in captured.out + captured.err
    code = cli.main(["chain", "deploy", "--rpc", anvil.url, "--chain-id", "1", "--key-ref", f"env:{KEY_VAR}"])
    assert code == 1 and "chain id 31337" in capsys.readouterr().err
