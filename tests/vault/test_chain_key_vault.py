"""chain.keyRef ``vault:<mount>/<path>#<field>``: the chain sending key read from a real OpenBao KV,
into memory only, with clear errors naming the reference (never the key)."""

from __future__ import annotations

import pytest

from fedcare.hub.context import HubContext
from fedcare.hub.release_service import ReleaseConfig
from fedcare.integrations import vault as v
from fedcare.integrations.chain import ChainClient, ChainError
from fedcare.integrations.keyref import KeyRefError, VaultKeyRef, parse_key_ref
from fedcare.sandbox.anvil import DEV_KEY
from tests.support.chain import settings
from tests.support.openbao import DevServer
from tests.vault.conftest import fast_retry

KEY = DEV_KEY.removeprefix("0x")


def client_with(openbao: DevServer, name: str, policy: str) -> v.VaultClient:
    root = openbao.client()
    root.sys.create_or_update_acl_policy(name, policy)
    token = root.auth.token.create(policies=[name], ttl="30m")["auth"]["client_token"]
    return v.VaultClient(v.VaultSettings(addr=openbao.addr, auth_method="token", token=token, retry=fast_retry()))


@pytest.fixture()
def stored(openbao: DevServer, unique: str) -> str:
    openbao.client().secrets.kv.v2.create_or_update_secret(f"chain/{unique}", secret={"key": KEY, "other": "x"},
                                                           mount_point="fedcare")
    return f"vault:fedcare/chain/{unique}#key"


async def test_vault_key_ref_signs_a_real_deployment(openbao, unique, stored, anvil, caplog):
    vault = client_with(openbao, f"chain-{unique}", f'path "fedcare/data/chain/{unique}" {{ capabilities = ["read"] }}')
    ref = parse_key_ref(stored, vault)
    assert isinstance(ref, VaultKeyRef) and ref.describe() == stored
    async with ChainClient(settings(anvil), ref) as client:
        address, tx = await client.deploy()
    assert address.startswith("0x") and anvil.rpc("eth_getCode", address, "latest") not in ("0x", "0x0")
    assert not vault._cache                      # read afresh, not kept by the client
    assert KEY not in caplog.text and KEY not in repr(ref.load())


async def test_forbidden_missing_and_malformed_are_clear(openbao, unique, stored, anvil):
    blind = client_with(openbao, f"blind-{unique}", 'path "fedcare/data/nothing" { capabilities = ["read"] }')
    async with ChainClient(settings(anvil), parse_key_ref(stored, blind)) as client:
        with pytest.raises(ChainError) as err:
            await client.deploy()
    assert err.value.reason == "SendingKeyUnavailable"
    assert f'grant the hub read on "fedcare/data/chain/{unique}"' in str(err.value) and KEY not in str(err.value)
    root = v.VaultClient(v.VaultSettings(addr=openbao.addr, auth_method="token", token=openbao.root_token,
                                         retry=fast_retry()))
    with pytest.raises(KeyRefError, match="no field 'nope'"):
        parse_key_ref(stored.replace("#key", "#nope"), root).load()
    with pytest.raises(KeyRefError, match="not a 32-byte hex private key") as bad:
        parse_key_ref(stored.replace("#key", "#other"), root).load()
    assert "x" not in str(bad.value).split(":", 3)[-1].replace("hex", "")
    with pytest.raises(KeyRefError, match="VaultNotFound; write the key there"):
        parse_key_ref(f"vault:fedcare/chain/absent-{unique}#key", root).load()
    with pytest.raises(KeyRefError, match="no Vault client"):
        parse_key_ref(stored).load()
    for text in ("vault:fedcare/chain/../sites/x#key", "vault:fedcare/chain/x", "vault:#key", "vault:fedcare#key"):
        with pytest.raises(KeyRefError, match="expected vault:<kv mount>/<path>#<field>"):
            parse_key_ref(text)


def test_the_hub_context_reads_a_vault_key_ref_with_its_own_client(openbao, unique, stored):
    vault = client_with(openbao, f"hubref-{unique}", 'path "fedcare/data/chain/*" { capabilities = ["read"] }')
    cfg = ReleaseConfig.from_env({"FEDCARE_CHAIN_KEY_REF": stored})
    ctx = HubContext(vault=vault, release=cfg)
    assert ctx.release.key_ref.vault is vault
    assert ctx.release.key_ref.load().reveal() == DEV_KEY
