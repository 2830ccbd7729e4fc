"""fedcare's Vault client against a real OpenBao: auth, renewal, re-login, cache, guard, faults."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from fedcare.integrations import vault as v
from tests.support.openbao import DevServer, FileServer, free_port
from tests.support.sa_issuer import SAIssuer
from tests.vault.conftest import fast_retry, root_settings


# -- the path guard: refused before any request ------------------------------------------------

@pytest.mark.parametrize("path", ["sites/a/../b/x", "../sys/policy", "sites/a/./x", "sites//a", "", "/",
                                  "sites/a/x y", "sites/a/%2e%2e"])
def test_bad_paths_are_refused_before_any_call(path: str) -> None:
    # Nothing listens on this port: a request would fail differently (VaultUnavailable).
    client = v.VaultClient(v.VaultSettings(addr=f"http://127.0.0.1:{free_port()}", auth_method="token",
                                           token="x", retry=fast_retry()))
    with pytest.raises(v.VaultPathRefused):
        client.read(path)
    assert client.stats["requests"] == 0


def test_a_site_client_may_not_name_another_site() -> None:
    client = v.VaultClient(v.VaultSettings(addr=f"http://127.0.0.1:{free_port()}", auth_method="token",
                                           token="x", retry=fast_retry()), site="rouen")
    for path in ("sites/lyon/hub-credential", "sites/lyon", "x/sites/lyon/y"):
        with pytest.raises(v.VaultPathRefused, match="another site"):
            client.read(path)
    with pytest.raises(v.VaultPathRefused):
        client.write("sites/lyon/x", {"a": "b"})
    assert client.stats["requests"] == 0
    assert v.check_path("sites/rouen/hub-credential", site="rouen") == "sites/rouen/hub-credential"


# -- KV reads, cache ---------------------------------------------------------------------------

def test_reads_are_cached_with_their_ttl(openbao: DevServer, unique: str) -> None:
    now = [1000.0]
    client = v.VaultClient(root_settings(openbao), clock=lambda: now[0])
    client.write(f"sites/{unique}/a", {"k": "1"}, ttl=30)
    client.write(f"sites/{unique}/b", {"k": "2"})            # no ttl: settings.cache_ttl (60 s)
    for _ in range(5):
        assert client.read(f"sites/{unique}/a") == {"k": "1"}
        assert client.read(f"sites/{unique}/b") == {"k": "2"}
    assert client.stats["reads"] == 2 and client.stats["cache_hits"] == 8
    openbao.client().secrets.kv.v2.create_or_update_secret(f"sites/{unique}/a", secret={"k": "new"},
                                                            mount_point="fedcare")
    now[0] += 29
    assert client.read(f"sites/{unique}/a") == {"k": "1"}      # still cached
    now[0] += 2
    assert client.read(f"sites/{unique}/a") == {"k": "new"}    # TTL over: read again
    assert client.read(f"sites/{unique}/b") == {"k": "2"}      # 31 s < 60 s
    assert client.stats["reads"] == 3
    assert client.read(f"sites/{unique}/a", fresh=True) == {"k": "new"}
    assert client.stats["reads"] == 4


def test_written_secrets_are_marked_as_fedcares(root_client: v.VaultClient, unique: str) -> None:
    version = root_client.write(f"sites/{unique}/x", {"a": "b"})
    assert version == 1
    meta = root_client.metadata(f"sites/{unique}/x")
    assert meta["custom_metadata"]["managed-by"] == "fedcare"
    assert root_client.list(f"sites/{unique}") == ["x"]
    root_client.destroy(f"sites/{unique}/x")
    assert root_client.metadata(f"sites/{unique}/x") is None
    with pytest.raises(v.VaultNotFound):
        root_client.read(f"sites/{unique}/x")


# -- 403: a site token reading another site's path ----------------------------------------------

def test_403_from_another_sites_path(openbao: DevServer, unique: str) -> None:
    root = openbao.client()
    root.sys.create_or_update_policy(f"p-{unique}", f'path "fedcare/data/sites/{unique}-a/*" '
                                                     '{ capabilities = ["read"] }')
    token = root.auth.token.create(policies=[f"p-{unique}"], ttl="10m")["auth"]["client_token"]
    root.secrets.kv.v2.create_or_update_secret(f"sites/{unique}-b/x", secret={"s": "other"}, mount_point="fedcare")
    root.secrets.kv.v2.create_or_update_secret(f"sites/{unique}-a/x", secret={"s": "mine"}, mount_point="fedcare")
    # Unscoped client (the guard is tested above): the server's policy must refuse on its own.
    client = v.VaultClient(v.VaultSettings(addr=openbao.addr, auth_method="token", token=token,
                                           retry=fast_retry()))
    assert client.read(f"sites/{unique}-a/x") == {"s": "mine"}
    with pytest.raises(v.VaultForbidden) as err:
        client.read(f"sites/{unique}-b/x")
    assert err.value.status == 403 and token not in str(err.value) and "other" not in str(err.value)
    assert client.stats["retries"] == 0                   # a 403 is not retried


# -- unreachable, 500, slow, sealed -------------------------------------------------------------

def test_unreachable_retries_within_bounds() -> None:
    policy = v.RetryPolicy(attempts=4, base_delay=0.05, max_delay=0.1, timeout=1)
    client = v.VaultClient(v.VaultSettings(addr=f"http://127.0.0.1:{free_port()}", auth_method="token",
                                           token="tok-secret", retry=policy))
    with pytest.raises(v.VaultUnavailable, match="unreachable after 4 attempt") as err:
        client.read("sites/a/x")
    assert client.stats["retries"] == 3 and client.stats["requests"] == 4
    assert "tok-secret" not in str(err.value)
    # The backoff steps themselves: jittered within [50 %, 100 %] of 0.05 s doubling, capped at 0.1 s.
    for attempt in range(6):
        assert 0.5 * min(0.1, 0.05 * 2 ** attempt) <= policy.delay(attempt) <= min(0.1, 0.05 * 2 ** attempt)


def test_500_is_retried_then_reported(openbao: DevServer, root_client: v.VaultClient, unique: str) -> None:
    # A real 500: issuing from a PKI mount that has no CA yet.
    root = openbao.client()
    root.sys.enable_secrets_engine("pki", path=f"pki-{unique}")
    root.secrets.pki.create_or_update_role("r", {"allow_any_name": True}, mount_point=f"pki-{unique}")
    with pytest.raises(v.VaultUnavailable, match="answered 500") as err:
        root_client.call(lambda c: c.secrets.pki.generate_certificate("r", "x.example",
                                                                      mount_point=f"pki-{unique}"),
                         f"pki-{unique}/issue/r")
    assert err.value.status == 500
    assert root_client.stats["retries"] == root_client.settings.retry.attempts - 1


@pytest.fixture(scope="module")
def file_bao(tmp_path_factory: pytest.TempPathFactory):
    server = FileServer(tmp_path_factory.mktemp("bao-file"))
    server.start()
    c = server.client()
    c.sys.enable_secrets_engine("kv", path="fedcare", options={"version": "2"})
    yield server
    server.stop()


def test_slow_server_times_out_then_recovers(file_bao: FileServer, unique: str) -> None:
    policy = v.RetryPolicy(attempts=2, base_delay=0.05, max_delay=0.1, timeout=0.5)
    client = v.VaultClient(v.VaultSettings(addr=file_bao.addr, auth_method="token", token=file_bao.root_token,
                                           retry=policy))
    client.write(f"sites/{unique}/x", {"k": "v"})
    os.kill(file_bao.proc.pid, signal.SIGSTOP)       # the real server, frozen: connects, never answers
    try:
        before = client.stats["retries"]
        with pytest.raises(v.VaultUnavailable, match="timed out after 2 attempt"):
            client.read(f"sites/{unique}/x", fresh=True)
        assert client.stats["retries"] - before == 1    # bounded: 2 attempts, one backoff
    finally:
        os.kill(file_bao.proc.pid, signal.SIGCONT)
    assert client.read(f"sites/{unique}/x", fresh=True) == {"k": "v"}


def test_sealed_then_unsealed(file_bao: FileServer, unique: str) -> None:
    client = v.VaultClient(v.VaultSettings(addr=file_bao.addr, auth_method="token", token=file_bao.root_token,
                                           retry=fast_retry()))
    client.write(f"sites/{unique}/x", {"k": "v"})
    file_bao.client().sys.seal()
    try:
        with pytest.raises(v.VaultSealed, match="sealed") as err:
            client.read(f"sites/{unique}/x", fresh=True)
        assert err.value.reason == "VaultSealed"
        assert client.stats["retries"] >= 1
    finally:
        file_bao.unseal()
    assert client.read(f"sites/{unique}/x", fresh=True) == {"k": "v"}


def test_restart_of_an_on_disk_server(file_bao: FileServer, unique: str) -> None:
    client = v.VaultClient(v.VaultSettings(addr=file_bao.addr, auth_method="token", token=file_bao.root_token,
                                           retry=v.RetryPolicy(attempts=6, base_delay=0.2, max_delay=1,
                                                               timeout=2)))
    client.write(f"sites/{unique}/x", {"k": "kept"})
    file_bao.stop()
    with pytest.raises(v.VaultUnavailable):
        client.read(f"sites/{unique}/x", fresh=True)
    file_bao.start()                                   # same port, same data, unsealed
    assert client.read(f"sites/{unique}/x", fresh=True) == {"k": "kept"}


# -- auth: renewal, re-login, expiry mid-operation -----------------------------------------------

@pytest.fixture()
def jwt_site(openbao: DevServer, unique: str, tmp_path: Path):
    """A JWT auth role bound to ServiceAccount fedcare-site-<unique>/fedcare-agent, short TTLs."""
    issuer = SAIssuer()
    mount = f"jwt-{unique}"
    root = openbao.client()
    issuer.configure(root, mount)
    root.sys.create_or_update_policy(f"p-{unique}", f'path "fedcare/data/sites/{unique}/*" '
                                                     '{ capabilities = ["read"] }')
    root.secrets.kv.v2.create_or_update_secret(f"sites/{unique}/x", secret={"k": "v"}, mount_point="fedcare")
    ns = f"fedcare-site-{unique}"
    root.adapter.post(f"/v1/auth/{mount}/role/agent", json={
        "role_type": "jwt", "bound_audiences": [issuer.audience], "user_claim": "sub",
        "bound_subject": f"system:serviceaccount:{ns}:fedcare-agent", "token_policies": [f"p-{unique}"],
        "token_ttl": "3s", "token_max_ttl": "6s"})
    jwt = issuer.write(tmp_path / "token", ns, "fedcare-agent")
    settings = v.VaultSettings(addr=openbao.addr, auth_method="jwt", role="agent", auth_mount=mount,
                               jwt_path=str(jwt), retry=fast_retry())
    return settings, issuer, root


def test_jwt_login_renewal_and_relogin_at_max_ttl(jwt_site) -> None:
    settings, _, _ = jwt_site
    client = v.VaultClient(settings, site=settings.auth_mount[4:])
    site = settings.auth_mount[4:]
    assert client.read(f"sites/{site}/x") == {"k": "v"} and client.stats["logins"] == 1
    deadline = time.monotonic() + 9           # beyond the 6 s max TTL: renewals, then a fresh login
    while time.monotonic() < deadline:
        assert client.read(f"sites/{site}/x", fresh=True) == {"k": "v"}
        time.sleep(0.5)
    assert client.stats["renewals"] >= 1
    assert client.stats["logins"] >= 2


def test_token_revoked_mid_operation_logs_in_again(jwt_site) -> None:
    settings, _, root = jwt_site
    site = settings.auth_mount[4:]
    client = v.VaultClient(settings, site=site)
    assert client.read(f"sites/{site}/x") == {"k": "v"}
    root.auth.token.revoke(client.hvac.token)         # the token dies under the client
    assert client.read(f"sites/{site}/x", fresh=True) == {"k": "v"}
    assert client.stats["logins"] == 2


def test_wrong_identity_cannot_log_in(jwt_site, tmp_path: Path) -> None:
    settings, issuer, _ = jwt_site
    other = issuer.write(tmp_path / "other", "fedcare-site-someone-else", "fedcare-agent")
    client = v.VaultClient(v.VaultSettings(addr=settings.addr, auth_method="jwt", role="agent",
                                           auth_mount=settings.auth_mount, jwt_path=str(other),
                                           retry=fast_retry()))
    with pytest.raises(v.VaultError) as err:
        client.read(f"sites/{settings.auth_mount[4:]}/x")
    assert other.read_text() not in str(err.value)


def test_expired_development_token_is_reported(openbao: DevServer, unique: str) -> None:
    root = openbao.client()
    token = root.auth.token.create(policies=["default"], ttl="2s", renewable=False)["auth"]["client_token"]
    client = v.VaultClient(v.VaultSettings(addr=openbao.addr, auth_method="token", token=token,
                                           retry=fast_retry()))
    client.login()
    time.sleep(2.5)
    with pytest.raises(v.VaultAuthError, match="new token") as err:
        client.read(f"sites/{unique}/x", fresh=True)
    assert token not in str(err.value)


def test_missing_service_account_token_file(openbao: DevServer, tmp_path: Path) -> None:
    client = v.VaultClient(v.VaultSettings(addr=openbao.addr, auth_method="kubernetes", role="r",
                                           jwt_path=str(tmp_path / "absent"), retry=fast_retry()))
    with pytest.raises(v.VaultAuthError, match="FEDCARE_VAULT_JWT_PATH"):
        client.read("sites/a/x")


def test_settings_from_env_and_bad_settings() -> None:
    s = v.VaultSettings.from_env({"FEDCARE_VAULT_ADDR": "http://v:8200", "FEDCARE_VAULT_ROLE": "hub",
                                  "FEDCARE_VAULT_TOKEN": "sekrit"})
    assert s.auth_method == "kubernetes" and s.role == "hub" and s.mount == "kubernetes"
    assert "sekrit" not in repr(s)
    with pytest.raises(ValueError, match="FEDCARE_VAULT_ADDR"):
        v.VaultSettings.from_env({})
    with pytest.raises(ValueError, match="needs a role"):
        v.VaultSettings(addr="http://x", auth_method="kubernetes")
    with pytest.raises(ValueError, match="expected kubernetes, jwt or token"):
        v.VaultSettings(addr="http://x", auth_method="userpass")


def test_one_client_per_process(openbao: DevServer) -> None:
    v.reset_client()
    try:
        a = v.get_client(root_settings(openbao))
        assert v.get_client() is a
        with pytest.raises(RuntimeError, match="already has a Vault client"):
            v.get_client(root_settings(openbao, kv_mount="other"))
    finally:
        v.reset_client()


def test_secrets_backend_seam(caplog) -> None:
    from fedcare.integrations import secrets_backend as sb

    with caplog.at_level("WARNING"):
        assert sb.vault_from_env({"FEDCARE_SECRETS_BACKEND": "kubernetes"}) is None
    assert "WITHOUT Vault" in caplog.text and "never with patient data" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING"):
        assert sb.vault_from_env({}) is None               # a bare shell: kubernetes, loudly
    assert "WITHOUT Vault" in caplog.text
    with pytest.raises(ValueError, match="no Vault address"):
        sb.vault_from_env({"FEDCARE_SECRETS_BACKEND": "vault"})
    with pytest.raises(ValueError, match="expected vault or kubernetes"):
        sb.backend({"FEDCARE_SECRETS_BACKEND": "consul"})
    v.reset_client()
    try:
        client = sb.vault_from_env({"FEDCARE_VAULT_ADDR": "http://127.0.0.1:1", "FEDCARE_VAULT_ROLE": "hub"})
        assert client is v.get_client() and client.settings.auth_method == "kubernetes"
    finally:
        v.reset_client()
