"""A site's Vault footprint against a real OpenBao: create, check, report, remove."""

from __future__ import annotations

from pathlib import Path

import hvac
import hvac.exceptions as hx
import pytest

from fedcare.hub import vault_footprint as fp
from fedcare.integrations import vault as v
from tests.support.openbao import DevServer
from tests.support.sa_issuer import SAIssuer
from tests.vault.conftest import fast_retry


def node(name: str, **vault) -> dict:
    return {"metadata": {"name": name, "uid": "u", "generation": 1}, "spec": {"vault": vault}}


@pytest.fixture()
def jwt_mount(openbao: DevServer, unique: str) -> tuple[fp.FootprintSettings, SAIssuer]:
    issuer = SAIssuer()
    issuer.configure(openbao.client(), f"jwt-{unique}")
    return fp.FootprintSettings(auth_method="jwt", auth_mount=f"jwt-{unique}", audience=issuer.audience), issuer


def agent_client(openbao: DevServer, issuer: SAIssuer, fs: fp.FootprintSettings, sv: fp.SiteVault,
                 tmp_path: Path, *, scoped: bool = True) -> v.VaultClient:
    jwt = issuer.write(tmp_path / f"sa-{sv.site}", sv.namespace, sv.service_account)
    return v.VaultClient(v.VaultSettings(addr=openbao.addr, auth_method="jwt", role=sv.role, auth_mount=fs.mount,
                                         jwt_path=str(jwt), retry=fast_retry()),
                         site=sv.site if scoped else None)


def test_enrollment_creates_a_least_privilege_footprint(openbao: DevServer, root_client: v.VaultClient,
                                                        jwt_mount, unique: str, tmp_path: Path) -> None:
    fs, issuer = jwt_mount
    a, b = fp.site_vault(node(f"{unique}a"), "fedcare"), fp.site_vault(node(f"{unique}b"), "fedcare")
    for sv in (a, b):
        res = fp.ensure(root_client, sv, fs)
        assert res.ok and len(res.created) == 3, res          # 2 policies, 1 role
    assert fp.ensure(root_client, a, fs).created == []             # idempotent
    root = openbao.client()
    assert root.sys.read_acl_policy(a.policy)["data"]["policy"] == fp.policy_hcl(a)
    root.secrets.kv.v2.create_or_update_secret(b.path("hub-credential"), secret={"token": "b-secret"},
                                                mount_point="fedcare")
    root.secrets.kv.v2.create_or_update_secret(a.path("hub-credential"), secret={"token": "a-secret"},
                                                mount_point="fedcare")
    agent = agent_client(openbao, issuer, fs, a, tmp_path, scoped=False)
    assert agent.read(a.path("hub-credential")) == {"token": "a-secret"}
    assert agent.read(a.path("enrollment"))["site"] == a.site
    with pytest.raises(v.VaultForbidden):                           # the server refuses, not only the guard
        agent.read(b.path("hub-credential"))
    agent.write(a.path("supernode"), {"private_key": "k"})          # its own key: allowed
    with pytest.raises(v.VaultForbidden):
        agent.write(a.path("hub-credential"), {"token": "forged"})  # the hub's credential: read-only
    with pytest.raises(v.VaultForbidden):
        agent.call(lambda c: c.sys.read_acl_policy(a.policy), f"sys/policies/acl/{a.policy}")
    # Another site's ServiceAccount cannot log in through this site's role.
    intruder = agent_client(openbao, issuer, fs, fp.SiteVault(**{**a.__dict__, "namespace": b.namespace}),
                            tmp_path)
    with pytest.raises(v.VaultError):
        intruder.read(a.path("hub-credential"))


def test_spec_vault_is_honoured_and_checked() -> None:
    sv = fp.site_vault(node("rouen", role="chu-rouen", path="kv/hospitals/rouen"), "fedcare")
    assert (sv.kv_mount, sv.prefix, sv.role, sv.policy) == ("kv", "hospitals/rouen", "chu-rouen", "fedcare-site-rouen")
    default = fp.site_vault(node("rouen"), "fedcare")
    assert (default.kv_mount, default.prefix, default.role) == ("fedcare", "sites/rouen", "fedcare-site-rouen")
    for bad in ("fedcare/sites/lyon", "fedcare/shared", "fedcare/sites/../lyon/rouen", "fedcare"):
        with pytest.raises(v.VaultPathRefused):
            fp.site_vault(node("rouen", path=bad), "fedcare")


def test_a_role_bound_to_another_identity_is_never_taken_over(root_client: v.VaultClient, jwt_mount,
                                                              unique: str) -> None:
    fs, _ = jwt_mount
    other = fp.site_vault(node(f"{unique}x"), "fedcare")
    assert fp.ensure(root_client, other, fs).ok
    thief = fp.site_vault(node(f"{unique}y", role=other.role), "fedcare")
    with pytest.raises(v.VaultPathRefused, match="another identity"):
        fp.ensure(root_client, thief, fs)


def test_a_hub_without_rights_reports_exactly_what_is_missing(openbao: DevServer, jwt_mount,
                                                              unique: str) -> None:
    fs, _ = jwt_mount
    root = openbao.client()
    # A hub that may only check what an administrator creates (read, not write, policies and roles).
    root.sys.create_or_update_acl_policy(f"weak-{unique}", fp.hub_policy_hcl("fedcare", fs, manage=False))
    token = root.auth.token.create(policies=[f"weak-{unique}"], ttl="10m")["auth"]["client_token"]
    hub = v.VaultClient(v.VaultSettings(addr=openbao.addr, auth_method="token", token=token, retry=fast_retry()))
    sv = fp.site_vault(node(f"{unique}w"), "fedcare")
    res = fp.ensure(hub, sv, fs)
    assert res.missing == [f"policy {sv.policy}", f"policy {sv.training_policy}", f"auth role {fs.mount}/{sv.role}"]
    msg = fp.missing_message(sv, fs, res)
    assert fp.policy_hcl(sv) in msg and f"auth/{fs.mount}/role/{sv.role}" in msg
    assert token not in msg
    # The administrator applies exactly what the message says (here: with the root token).
    root.sys.create_or_update_acl_policy(sv.policy, fp.policy_hcl(sv))
    root.sys.create_or_update_acl_policy(sv.training_policy, fp.training_policy_hcl(sv))
    root.adapter.post(f"/v1/auth/{fs.mount}/role/{sv.role}", json=fp.role_body(sv, fs))
    assert fp.ensure(hub, sv, fs).ok                                  # now found, nothing to create
    # A hub that may not even read them says so.
    blind = root.auth.token.create(policies=["default"], ttl="10m")["auth"]["client_token"]
    res = fp.ensure(v.VaultClient(v.VaultSettings(addr=openbao.addr, auth_method="token", token=blind,
                                                  retry=fast_retry())), sv, fs)
    assert "may not even read it" in res.missing[0] and len(res.missing) == 4   # and no KV write


def test_hub_policy_is_enough_for_enrollment_and_removal(openbao: DevServer, jwt_mount, unique: str,
                                                          tmp_path: Path) -> None:
    fs, issuer = jwt_mount
    root = openbao.client()
    root.sys.create_or_update_acl_policy(f"hub-{unique}", fp.hub_policy_hcl("fedcare", fs))
    token = root.auth.token.create(policies=[f"hub-{unique}"], ttl="10m")["auth"]["client_token"]
    hub = v.VaultClient(v.VaultSettings(addr=openbao.addr, auth_method="token", token=token, retry=fast_retry()))
    sv = fp.site_vault(node(f"{unique}h"), "fedcare")
    assert fp.ensure(hub, sv, fs).ok
    agent = agent_client(openbao, issuer, fs, sv, tmp_path)
    assert agent.read(sv.path("enrollment"))["role"] == sv.role
    done = fp.remove(hub, sv, fs)
    assert done["revoked_tokens"] == 1 and f"policy {sv.policy}" in done["deleted"]


def test_deletion_revokes_and_removes_only_what_fedcare_made(openbao: DevServer, root_client: v.VaultClient,
                                                             jwt_mount, unique: str, tmp_path: Path) -> None:
    fs, issuer = jwt_mount
    sv = fp.site_vault(node(f"{unique}d"), "fedcare")
    assert fp.ensure(root_client, sv, fs).ok
    root_client.write(sv.path("hub-credential"), {"token": "t"})
    root_client.write(sv.path("nested/deeper"), {"x": "y"})
    root = openbao.client()
    root.secrets.kv.v2.create_or_update_secret(sv.path("hospital-own"), secret={"keep": "me"},
                                                mount_point="fedcare")     # not fedcare's
    agent = agent_client(openbao, issuer, fs, sv, tmp_path)
    agent.read(sv.path("hub-credential"))
    agent_token = agent.hvac.token
    done = fp.remove(root_client, sv, fs)
    assert done["revoked_tokens"] == 1
    assert set(done["deleted"]) == {f"role {fs.mount}/{sv.role}", f"policy {sv.policy}", f"policy {sv.training_policy}",
                                    f"secret fedcare/{sv.path('enrollment')}",
                                    f"secret fedcare/{sv.path('hub-credential')}",
                                    f"secret fedcare/{sv.path('nested/deeper')}"}
    assert done["kept"] == [f"secret fedcare/{sv.path('hospital-own')} (not created by fedcare)"]
    assert root.secrets.kv.v2.read_secret_version(sv.path("hospital-own"), mount_point="fedcare",
                                                  raise_on_deleted_version=True)["data"]["data"] == {"keep": "me"}
    with pytest.raises(hx.Forbidden):
        hvac.Client(url=openbao.addr, token=agent_token).auth.token.lookup_self()
    with pytest.raises(v.VaultError):                                 # the role is gone: no new login
        agent_client(openbao, issuer, fs, sv, tmp_path).read(sv.path("enrollment"))
    assert fp.remove(root_client, sv, fs)["deleted"] == []            # idempotent


def test_an_administrators_policy_is_kept_at_deletion(openbao: DevServer, root_client: v.VaultClient,
                                                      jwt_mount, unique: str) -> None:
    fs, _ = jwt_mount
    sv = fp.site_vault(node(f"{unique}k"), "fedcare")
    openbao.client().sys.create_or_update_acl_policy(sv.policy, 'path "fedcare/data/x" { capabilities = ["read"] }')
    assert fp.ensure(root_client, sv, fs).ok       # we may write: ours replaces it (same name, our text)
    openbao.client().sys.create_or_update_acl_policy(sv.policy, 'path "fedcare/data/x" { capabilities = ["read"] }')
    done = fp.remove(root_client, sv, fs)
    assert f"policy {sv.policy} (not written by fedcare)" in done["kept"]
