"""On the real control plane (fedcare-kube): OpenBao's Kubernetes auth checks the agent's
ServiceAccount token through the API server's TokenReview, and the hub credential flow
(TokenRequest → Vault → agent → hub API with real RBAC) works end to end, including rotation
and invalidation when the site's ServiceAccount goes."""

from __future__ import annotations

import base64
import copy
import logging
import pathlib
import uuid

import pytest
import yaml

from fedcare.api.resources import API_VERSION, site_namespace
from fedcare.hub import hospital_node_service as nodes
from fedcare.hub import hub_credential as hc
from fedcare.hub import vault_footprint as fp
from fedcare.integrations import vault as v
from fedcare.integrations.kube import Forbidden, Kube, KubeError, Ref, RetryPolicy
from fedcare.site.hub_credential import HubCredential
from tests.support.harness import eventually
from tests.support.openbao import DevServer
from tests.vault.conftest import fast_retry

ROOT = pathlib.Path(__file__).resolve().parents[2]
NODE = yaml.safe_load((ROOT / "examples" / "hospitalnode-rouen.yaml").read_text())
FAST = RetryPolicy(attempts=2, base_delay=0.05, max_delay=0.2, timeout=10.0)
log = logging.getLogger("test")

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(300)]


@pytest.fixture()
async def admin(real_cluster):
    kube = await Kube.from_kubeconfig(real_cluster.kubeconfig, policy=FAST)
    yield kube
    await kube.close()


@pytest.fixture()
def k8s_auth(real_cluster, openbao: DevServer):
    """OpenBao's kubernetes auth method pointed at the real API server, with a reviewer
    ServiceAccount bound to system:auth-delegator (what TokenReview needs)."""
    name = "vault-reviewer-" + uuid.uuid4().hex[:6]
    real_cluster.kubectl("create", "serviceaccount", name, "-n", "default")
    real_cluster.kubectl("create", "clusterrolebinding", name, "--clusterrole=system:auth-delegator",
                         f"--serviceaccount=default:{name}")
    mount = "k8s-" + name[-6:]
    root = openbao.client()
    root.sys.enable_auth_method("kubernetes", path=mount)
    ca = (real_cluster.real.dir / "pki" / "ca.crt").read_text()
    root.auth.kubernetes.configure(kubernetes_host=real_cluster.server, kubernetes_ca_cert=ca,
                                   token_reviewer_jwt=real_cluster.token("default", name, 3600),
                                   disable_local_ca_jwt=True, mount_point=mount)
    yield fp.FootprintSettings(auth_method="kubernetes", auth_mount=mount), ca
    real_cluster.kubectl("delete", "clusterrolebinding", name, "--ignore-not-found")
    real_cluster.kubectl("delete", "serviceaccount", name, "-n", "default", "--ignore-not-found")


async def enroll(admin: Kube, name: str) -> dict:
    body = copy.deepcopy(NODE)
    body["metadata"]["name"] = name
    await admin.create(Ref(API_VERSION, "hospitalnodes"), body)
    obj = await admin.get(Ref(API_VERSION, "hospitalnodes", None, name))
    await nodes.reconcile(admin, obj, log)               # namespace, ServiceAccount, real RBAC
    return obj


async def test_kubernetes_auth_and_the_hub_credential_end_to_end(real_cluster, admin, openbao: DevServer,
                                                                 k8s_auth, tmp_path) -> None:
    fs, ca = k8s_auth
    site, other = "v" + uuid.uuid4().hex[:6], "w" + uuid.uuid4().hex[:6]
    root = openbao.client()
    root.sys.create_or_update_acl_policy(f"hub-{site}", fp.hub_policy_hcl("fedcare", fs))
    hub_token = root.auth.token.create(policies=[f"hub-{site}"], ttl="30m")["auth"]["client_token"]
    hub_vault = v.VaultClient(v.VaultSettings(addr=openbao.addr, auth_method="token", token=hub_token,
                                              retry=fast_retry()))
    try:
        node = await enroll(admin, site)
        await enroll(admin, other)
        sv = fp.site_vault(node, "fedcare")
        assert fp.ensure(hub_vault, sv, fs).ok

        # The hub mints the agent's hub token (TokenRequest) and stores it in Vault.
        settings = hc.HubCredentialSettings(ttl_seconds=600, server=real_cluster.server,
                                            ca_data=base64.b64encode(ca.encode()).decode())
        first_expiry = await hc.rotate(admin, hub_vault, site, settings)
        assert first_expiry is not None
        assert await hc.rotate(admin, hub_vault, site, settings) is None          # fresh: nothing to do

        # The agent logs in to Vault with its ServiceAccount token: OpenBao asks the API server
        # (TokenReview) whether it is fedcare-site-<site>/fedcare-agent.
        sa_token = tmp_path / "sa-token"
        sa_token.write_text(real_cluster.token(site_namespace(site), "fedcare-agent", 600))
        agent_vault = v.VaultClient(v.VaultSettings(addr=openbao.addr, auth_method="kubernetes", role=sv.role,
                                                    auth_mount=fs.mount, jwt_path=str(sa_token),
                                                    retry=fast_retry()), site=site)
        cred = HubCredential(agent_vault, site)
        hub_api = cred.connect(policy=FAST)
        try:
            mine = await hub_api.get(Ref(API_VERSION, "hospitalnodes", None, site))   # real RBAC: its own node
            assert mine["metadata"]["name"] == site
            with pytest.raises(Forbidden):
                await hub_api.get(Ref(API_VERSION, "hospitalnodes", None, other))
            old_token = cred.token

            # Rotation: the hub mints a new token; the agent swaps it into the live client.
            await hc.rotate(admin, hub_vault, site, settings, force=True)
            assert cred.refresh() is True and cred.token != old_token
            assert (await hub_api.get(Ref(API_VERSION, "hospitalnodes", None, site)))["metadata"]["name"] == site

            # Another identity cannot use the site's Vault role (TokenReview says who it is).
            real_cluster.kubectl("create", "serviceaccount", "intruder", "-n", site_namespace(other))
            intruder = tmp_path / "intruder"
            intruder.write_text(real_cluster.token(site_namespace(other), "intruder", 600))
            with pytest.raises(v.VaultError):
                v.VaultClient(v.VaultSettings(addr=openbao.addr, auth_method="kubernetes", role=sv.role,
                                              auth_mount=fs.mount, jwt_path=str(intruder),
                                              retry=fast_retry())).read(f"sites/{site}/hub-credential")
            # A forged token (right shape, wrong signature) is refused by TokenReview.
            forged = tmp_path / "forged"
            head, claims, _ = sa_token.read_text().split(".")
            forged.write_text(f"{head}.{claims}.{base64.urlsafe_b64encode(b'x' * 256).decode().rstrip('=')}")
            with pytest.raises(v.VaultError):
                v.VaultClient(v.VaultSettings(addr=openbao.addr, auth_method="kubernetes", role=sv.role,
                                              auth_mount=fs.mount, jwt_path=str(forged),
                                              retry=fast_retry())).read(f"sites/{site}/hub-credential")

            # Removal: Vault footprint revoked, and with the ServiceAccount gone its tokens stop working.
            done = fp.remove(hub_vault, sv, fs)
            assert done["revoked_tokens"] >= 1 and f"policy {sv.policy}" in done["deleted"]
            with pytest.raises(v.VaultError):
                agent_vault.read(f"sites/{site}/hub-credential", fresh=True)
            await admin.delete(Ref("v1", "serviceaccounts", site_namespace(site), "fedcare-agent"))

            async def refused():      # the API server caches a successful token check for ~10 s
                try:
                    await hub_api.get(Ref(API_VERSION, "hospitalnodes", None, site))
                except KubeError as err:
                    return err.status
                return None

            assert await eventually(refused, timeout=40, interval=1) == 401
        finally:
            await hub_api.close()
    finally:
        for name in (site, other):
            await admin.delete(Ref(API_VERSION, "hospitalnodes", None, name))
            await admin.delete(Ref("v1", "namespaces", None, site_namespace(name)))
            await admin.delete(Ref("rbac.authorization.k8s.io/v1", "clusterroles", None, f"fedcare-site-{name}"))
            await admin.delete(Ref("rbac.authorization.k8s.io/v1", "clusterrolebindings", None,
                                   f"fedcare-site-{name}"))


@pytest.mark.parametrize("apiserver", ["real"], indirect=True)
async def test_the_hub_operator_provisions_and_rotates_on_the_real_control_plane(apiserver, real_cluster,
                                                                                   openbao: DevServer, k8s_auth,
                                                                                   tmp_path) -> None:
    """The real hub (kopf) with Vault: CredentialsReady, a minted hub credential the agent can use,
    and removal at deletion."""
    import contextlib

    from fedcare.hub.context import HubContext
    from fedcare.hub.handlers import make_registry
    from tests.support.harness import run_operator

    fs, ca = k8s_auth
    site = "h" + uuid.uuid4().hex[:6]
    root = openbao.client()
    root.sys.create_or_update_acl_policy(f"hub-{site}", fp.hub_policy_hcl("fedcare", fs))
    hub_token = root.auth.token.create(policies=[f"hub-{site}"], ttl="30m")["auth"]["client_token"]
    vault = v.VaultClient(v.VaultSettings(addr=openbao.addr, auth_method="token", token=hub_token,
                                          retry=fast_retry()))
    settings = hc.HubCredentialSettings(ttl_seconds=600, server=real_cluster.server,
                                        ca_data=base64.b64encode(ca.encode()).decode())
    api = await apiserver.kube(FAST)
    ctx = HubContext(kube=await apiserver.kube(FAST), vault=vault, vault_footprint=fs, hub_credential=settings)
    try:
        async with run_operator(apiserver, make_registry(ctx)) as logs:
            body = copy.deepcopy(NODE)
            body["metadata"]["name"] = site
            await api.create(Ref(API_VERSION, "hospitalnodes"), body)

            async def provisioned():
                obj = await api.get_or_none(Ref(API_VERSION, "hospitalnodes", None, site))
                for cond in ((obj or {}).get("status") or {}).get("conditions") or []:
                    if cond["type"] == "CredentialsReady" and cond["status"] == "True":
                        return cond
                return None

            assert (await eventually(provisioned, timeout=60))["reason"] == "CredentialsProvisioned"
            sa_token = tmp_path / "sa"
            sa_token.write_text(real_cluster.token(site_namespace(site), "fedcare-agent", 600))
            agent_vault = v.VaultClient(v.VaultSettings(addr=openbao.addr, auth_method="kubernetes",
                                                        role=f"fedcare-site-{site}", auth_mount=fs.mount,
                                                        jwt_path=str(sa_token), retry=fast_retry()), site=site)
            cred = HubCredential(agent_vault, site)
            hub_api = cred.connect(policy=FAST)
            try:
                assert (await hub_api.get(Ref(API_VERSION, "hospitalnodes", None, site)))["metadata"]["name"] == site
            finally:
                await hub_api.close()
            await api.delete(Ref(API_VERSION, "hospitalnodes", None, site))

            async def gone():
                return await api.get_or_none(Ref(API_VERSION, "hospitalnodes", None, site)) is None

            await eventually(gone, timeout=60)
            assert logs.grep(f"Removed the Vault footprint of site {site}")
        assert f"fedcare-site-{site}" not in root.sys.list_acl_policies()["data"]["keys"]
        with pytest.raises(v.VaultError):
            agent_vault.read(f"sites/{site}/hub-credential", fresh=True)
    finally:
        await api.close()
