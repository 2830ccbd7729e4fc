"""The real hub operator (kopf, emulated Kubernetes API) with a real OpenBao: CredentialsReady."""

from __future__ import annotations

import contextlib
import copy
import pathlib

import pytest
import yaml

from fedcare.api.resources import API_VERSION
from fedcare.hub import vault_footprint as fp
from fedcare.hub.context import HubContext
from fedcare.hub.handlers import make_registry
from fedcare.integrations import vault as v
from fedcare.integrations.kube import Kube, Ref, RetryPolicy
from tests.support.harness import eventually, run_operator
from tests.support.openbao import DevServer
from tests.support.sa_issuer import SAIssuer
from tests.vault.conftest import fast_retry

ROOT = pathlib.Path(__file__).resolve().parents[2]
NODE = yaml.safe_load((ROOT / "examples" / "hospitalnode-rouen.yaml").read_text())
NODES = Ref(API_VERSION, "hospitalnodes")
FAST = RetryPolicy(attempts=3, base_delay=0.05, max_delay=0.2, timeout=5.0)


def node_body(name: str) -> dict:
    body = copy.deepcopy(NODE)
    body["metadata"]["name"] = name
    return body


def credentials(obj: dict | None) -> dict | None:
    for cond in ((obj or {}).get("status") or {}).get("conditions") or []:
        if cond["type"] == "CredentialsReady":
            return cond
    return None


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


@pytest.fixture()
def jwt_fs(openbao: DevServer, unique: str) -> fp.FootprintSettings:
    issuer = SAIssuer()
    issuer.configure(openbao.client(), f"jwt-{unique}")
    return fp.FootprintSettings(auth_method="jwt", auth_mount=f"jwt-{unique}", audience=issuer.audience)


def hub_vault(openbao: DevServer, policy: str, unique: str) -> v.VaultClient:
    root = openbao.client()
    root.sys.create_or_update_acl_policy(f"hub-{unique}", policy)
    token = root.auth.token.create(policies=[f"hub-{unique}"], ttl="30m")["auth"]["client_token"]
    return v.VaultClient(v.VaultSettings(addr=openbao.addr, auth_method="token", token=token, retry=fast_retry()))


async def test_enrollment_and_deletion_make_and_remove_the_footprint(hub, api, openbao, jwt_fs, unique):
    vault = hub_vault(openbao, fp.hub_policy_hcl("fedcare", jwt_fs), unique)
    name = f"{unique}r"
    root = openbao.client()
    async with hub(vault=vault, vault_footprint=jwt_fs) as logs:
        await api.create(NODES, node_body(name))

        async def provisioned():
            cond = credentials(await api.get_or_none(Ref(API_VERSION, "hospitalnodes", None, name)))
            return cond if cond and cond["status"] == "True" else None

        cond = await eventually(provisioned, timeout=20)
        assert cond["reason"] == "CredentialsProvisioned"
        assert root.sys.read_acl_policy(f"fedcare-site-{name}")["data"]["policy"].startswith(fp.POLICY_MARKER)
        assert root.adapter.get(f"/v1/auth/{jwt_fs.mount}/role/fedcare-site-{name}")["data"]
        await api.delete(Ref(API_VERSION, "hospitalnodes", None, name))
        await eventually(lambda: _gone(api, name), timeout=20)
        assert logs.grep(f"Removed the Vault footprint of site {name}")
    assert f"fedcare-site-{name}" not in root.sys.list_acl_policies()["data"]["keys"]


async def _gone(api, name):
    return await api.get_or_none(Ref(API_VERSION, "hospitalnodes", None, name)) is None or None


async def test_missing_rights_are_reported_then_recovered(hub, api, openbao, jwt_fs, unique):
    vault = hub_vault(openbao, fp.hub_policy_hcl("fedcare", jwt_fs, manage=False), unique)
    name = f"{unique}m"
    async with hub(vault=vault, vault_footprint=jwt_fs):
        await api.create(NODES, node_body(name))

        async def reported():
            cond = credentials(await api.get_or_none(Ref(API_VERSION, "hospitalnodes", None, name)))
            return cond if cond and cond["reason"] == "VaultPolicyMissing" else None

        cond = await eventually(reported, timeout=20)
        assert cond["status"] == "False"
        sv = fp.site_vault(node_body(name), "fedcare")
        assert fp.policy_hcl(sv) in cond["message"]
        # The administrator applies it; the hub's retry (backoff 5 s) finds it.
        root = openbao.client()
        root.sys.create_or_update_acl_policy(sv.policy, fp.policy_hcl(sv))
        root.sys.create_or_update_acl_policy(sv.training_policy, fp.training_policy_hcl(sv))
        root.adapter.post(f"/v1/auth/{jwt_fs.mount}/role/{sv.role}", json=fp.role_body(sv, jwt_fs))

        async def recovered():
            cond = credentials(await api.get_or_none(Ref(API_VERSION, "hospitalnodes", None, name)))
            return cond if cond and cond["status"] == "True" else None

        await eventually(recovered, timeout=30)


async def test_vault_unreachable_is_reported(hub, api, unique):
    from tests.support.openbao import free_port

    vault = v.VaultClient(v.VaultSettings(addr=f"http://127.0.0.1:{free_port()}", auth_method="token",
                                          token="x", retry=fast_retry()))
    name = f"{unique}u"
    async with hub(vault=vault):
        await api.create(NODES, node_body(name))

        async def reported():
            cond = credentials(await api.get_or_none(Ref(API_VERSION, "hospitalnodes", None, name)))
            return cond if cond and cond["reason"] == "VaultUnavailable" else None

        cond = await eventually(reported, timeout=20)
        assert cond["status"] == "False" and "unreachable" in cond["message"]
        obj = await api.get(Ref(API_VERSION, "hospitalnodes", None, name))
        enrolled = [c for c in obj["status"]["conditions"] if c["type"] == "Enrolled"][0]
        assert enrolled["status"] == "True"            # Kubernetes enrollment is not held back


async def test_refused_spec_vault_path(hub, api, openbao, jwt_fs, unique):
    vault = hub_vault(openbao, fp.hub_policy_hcl("fedcare", jwt_fs), unique)
    body = node_body(f"{unique}p")
    body["spec"]["vault"] = {"path": "fedcare/sites/lyon"}
    async with hub(vault=vault, vault_footprint=jwt_fs):
        await api.create(NODES, body)

        async def reported():
            cond = credentials(await api.get_or_none(Ref(API_VERSION, "hospitalnodes", None, body["metadata"]["name"])))
            return cond if cond and cond["reason"] == "VaultPathRefused" else None

        cond = await eventually(reported, timeout=20)
        assert "spec.vault.path" in cond["message"] or "another site" in cond["message"]


async def test_sealed_vault_is_reported_and_recovery_is_automatic(hub, api, tmp_path, unique):
    from tests.support.openbao import FileServer

    server = FileServer(tmp_path / "bao")
    server.start()
    try:
        root = server.client()
        root.sys.enable_secrets_engine("kv", path="fedcare", options={"version": "2"})
        issuer = SAIssuer()
        issuer.configure(root, "jwt")
        fs = fp.FootprintSettings(auth_method="jwt", audience=issuer.audience)
        vault = v.VaultClient(v.VaultSettings(addr=server.addr, auth_method="token", token=server.root_token,
                                              retry=fast_retry()))
        root.sys.seal()
        name = f"{unique}z"
        async with hub(vault=vault, vault_footprint=fs):
            await api.create(NODES, node_body(name))

            async def reason_is(reason):
                cond = credentials(await api.get_or_none(Ref(API_VERSION, "hospitalnodes", None, name)))
                return cond if cond and cond["reason"] == reason else None

            cond = await eventually(lambda: reason_is("VaultSealed"), timeout=20)
            assert cond["status"] == "False" and "unseal" in cond["message"]
            server.unseal()                      # the handler's backoff retry finds it unsealed
            await eventually(lambda: reason_is("CredentialsProvisioned"), timeout=30)
    finally:
        server.stop()
