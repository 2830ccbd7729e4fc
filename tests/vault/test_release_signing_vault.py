"""The hub's release pipeline signs with the Vault transit key (real OpenBao, real anvil, real hub).

Nothing here hands the hub a signer: with Vault, the hub context signs with transit key
``fedcare-release`` (created on first use under the hub's own policy). An auditor then checks
the release with `fedcare verify` and the exported public key; a key other than the one that
signed is refused.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re

import pytest

from fedcare import cli
from fedcare.api.resources import API_VERSION
from fedcare.hub import vault_footprint as fp
from fedcare.hub.context import HubContext
from fedcare.hub.handlers import make_registry
from fedcare.hub.release_service import ReleaseConfig
from fedcare.integrations import vault as v
from fedcare.integrations.keyref import parse_key_ref
from fedcare.integrations.kube import Kube, Ref, RetryPolicy
from fedcare.integrations.vault_transit import TransitSigner
from fedcare.sandbox.anvil import DEV_KEY
from tests.support.chain import FAST_RPC
from tests.support.harness import eventually, run_operator
from tests.support.openbao import DevServer
from tests.support.releases import make_model, release
from tests.vault.conftest import fast_retry

FAST = RetryPolicy(attempts=3, base_delay=0.05, max_delay=0.2, timeout=5.0)
RELEASES = Ref(API_VERSION, "modelreleases", "default")


@pytest.fixture()
async def api(emulator):
    kube = Kube.from_url(str(emulator.url), policy=FAST)
    yield kube
    await kube.close()


@pytest.fixture()
def hub(emulator):
    @contextlib.asynccontextmanager
    async def start(**ctx_kwargs):
        ctx = HubContext(kube=Kube.from_url(str(emulator.url), policy=FAST), **ctx_kwargs)
        async with run_operator(emulator, make_registry(ctx)) as logs:
            logs.ctx = ctx
            yield logs

    return start


def token_client(openbao: DevServer, name: str, policy: str) -> tuple[v.VaultClient, str]:
    root = openbao.client()
    root.sys.create_or_update_acl_policy(name, policy)
    token = root.auth.token.create(policies=[name], ttl="30m")["auth"]["client_token"]
    return v.VaultClient(v.VaultSettings(addr=openbao.addr, auth_method="token", token=token,
                                         retry=fast_retry())), token


def config(anvil, dev_key, **kw) -> ReleaseConfig:
    return ReleaseConfig(key_ref=dev_key, rpc_url=anvil.url, rpc_policy=FAST_RPC, retry_delay=0.3,
                         error_delay=0.5, receipt_timeout=10.0, poll_interval=0.05, **kw)


async def condition(api, name, ctype, status="True", reason=None, timeout=30.0):
    async def check():
        obj = await api.get_or_none(Ref(API_VERSION, "modelreleases", "default", name))
        found = next((c for c in ((obj or {}).get("status") or {}).get("conditions", []) if c["type"] == ctype), {})
        if found.get("status") == status and (reason is None or found.get("reason") == reason):
            return obj
        return None
    return await eventually(check, timeout=timeout, message=f"{name}: {ctype}={status} {reason or ''}")


async def run_verify(capsys, *args: str) -> tuple[int, str]:
    code = await asyncio.to_thread(cli.main, ["verify", *args])     # the CLI runs its own event loop
    return code, re.sub(r"\s+", " ", capsys.readouterr().out)


async def test_hub_signs_with_the_transit_key_and_verify_accepts_only_that_key(
        hub, api, openbao, anvil, dev_key, registry, unique, tmp_path, capsys):
    vault, token = token_client(openbao, f"hub-{unique}", fp.hub_policy_hcl("fedcare"))
    path, digest = make_model(tmp_path / "m")
    # the production path end to end: the sending key too comes from Vault (chain.keyRef vault:…)
    openbao.client().secrets.kv.v2.create_or_update_secret(f"chain/sender-{unique}", secret={"key": DEV_KEY},
                                                           mount_point="fedcare")
    cfg = config(anvil, None)
    cfg.key_ref = parse_key_ref(f"vault:fedcare/chain/sender-{unique}#key")
    async with hub(release=cfg, vault=vault) as logs:
        await api.create(RELEASES, release("signed", path, digest, anchor=(31337, registry, 1)))
        obj = await condition(api, "signed", "Promoted")
    st = obj["status"]
    assert st["phase"] == "Anchored"
    sig = st["signature"]
    assert re.fullmatch(r"vault:transit/fedcare-release:v\d+", sig["keyId"]) and sig["algorithm"] == "ed25519"
    manifest = json.loads((path.parent / "release.json").read_text())
    assert manifest["signature"]["keyId"] == sig["keyId"]
    # what an auditor is handed: the public key exported from Vault (the private key never leaves it)
    root = v.VaultClient(v.VaultSettings(addr=openbao.addr, auth_method="token", token=openbao.root_token,
                                         retry=fast_retry()))
    pem = tmp_path / "fedcare-release.pem"
    pem.write_text(TransitSigner(root).public_key_pem(sig["keyId"]))
    chain = ["--rpc", anvil.url, "--contract", registry]
    code, out = await run_verify(capsys, str(path), "--public-key", str(pem), *chain)
    assert code == 0, out
    assert "VERIFIED" in out
    # the exported key of another transit key: the signature is refused
    other = TransitSigner(root, key=f"other-{unique}")
    other.ensure_key()
    pem.write_text(other.public_key_pem(other.key_id(1)))
    code, out = await run_verify(capsys, str(path), "--public-key", str(pem), *chain)
    assert code == 1 and "signature" in out.split("VERIFICATION FAILED:")[1]
    # a release.json re-signed by another key (and carrying that key) is refused with the pinned key
    pem.write_text(TransitSigner(root).public_key_pem(sig["keyId"]))
    from fedcare.release.digest import ReleaseDigest
    d = ReleaseDigest("ultrasound-cnn", "1.0.0", digest[7:], st["provenanceRoot"], st["roundId"])
    forged = other.sign(d.message())
    manifest["signature"] = {**manifest["signature"], "keyId": forged.key_id, "signature": forged.signature}
    (path.parent / "release.json").write_text(json.dumps(manifest))
    code, out = await run_verify(capsys, str(path), "--public-key", str(pem), *chain)
    assert code == 1 and "signature" in out.split("VERIFICATION FAILED:")[1]
    # the hub's Vault token appears nowhere
    assert not [r for r in logs.records if token in r.message]
    assert token not in json.dumps(obj)
    key = DEV_KEY.removeprefix("0x")
    assert not [r for r in logs.records if key in r.message] and key not in json.dumps(obj)
    assert not vault._cache          # the sending key was read, used and not kept by the client


async def test_missing_transit_right_is_a_condition_naming_the_policy_then_resumes(
        hub, api, openbao, anvil, dev_key, registry, unique, tmp_path):
    key = f"rel-{unique}"
    # the hub may sign with the key but may neither read nor create it
    weak = f'path "transit/sign/{key}" {{\n  capabilities = ["update"]\n}}\n'
    vault, _ = token_client(openbao, f"weak-{unique}", weak)
    path, digest = make_model(tmp_path / "m")
    async with hub(release=config(anvil, dev_key, signing_key=key), vault=vault):
        await api.create(RELEASES, release("unsigned", path, digest, anchor=(31337, registry, 1)))
        obj = await condition(api, "unsigned", "Signed", "False", reason="SigningKeyForbidden")
        msg = next(c for c in obj["status"]["conditions"] if c["type"] == "Signed")["message"]
        assert f'"transit/keys/{key}"' in msg and '"create", "read", "update"' in msg
        assert obj["status"]["phase"] != "Anchored" and "anchor" not in obj["status"]
        # an administrator grants the right: the hub creates the key and the release goes on by itself
        openbao.client().sys.create_or_update_acl_policy(
            f"weak-{unique}", weak + f'path "transit/keys/{key}" {{\n  capabilities = ["create", "read", "update"]\n}}\n')
        obj = await condition(api, "unsigned", "Anchored")
    assert obj["status"]["signature"]["keyId"] == f"vault:transit/{key}:v1"
    info = openbao.client().secrets.transit.read_key(key)["data"]
    assert info["type"] == "ed25519" and info["exportable"] is False
