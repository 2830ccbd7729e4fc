"""The chart's Vault values reach the process as the environment VaultSettings reads."""

from __future__ import annotations

from fedcare.hub.hub_credential import settings_from_env
from fedcare.hub.vault_footprint import FootprintSettings
from fedcare.integrations import secrets_backend as sb
from fedcare.integrations.vault import VaultSettings
from tests.unit.test_chart import container_of, helm, render, render_error  # noqa: F401 (fixture)

SITE = {"mode": "site", "site.name": "rouen"}


def env_of(docs: list[dict]) -> dict[str, str]:
    _, container = container_of(docs)
    return {e["name"]: e.get("value", "") for e in container["env"] if "value" in e}


def test_hub_defaults_to_vault_with_kubernetes_auth(helm) -> None:  # noqa: F811
    env = env_of(render(helm))
    s = VaultSettings.from_env(env)
    assert sb.backend(env) == "vault"
    assert (s.addr, s.auth_method, s.role, s.mount) == ("http://vault.vault.svc:8200", "kubernetes", "fedcare-hub",
                                                       "kubernetes")
    assert (s.kv_mount, s.transit_mount, s.pki_mount) == ("fedcare", "transit", "pki")
    fs = FootprintSettings.from_env(env)
    assert (fs.auth_method, fs.mount, fs.token_ttl, fs.token_max_ttl) == ("kubernetes", "kubernetes", "15m", "1h")
    assert settings_from_env(env) is None                                     # opt-in


def test_site_role_and_hub_credential_from_vault(helm) -> None:  # noqa: F811
    docs = render(helm, {**SITE, "vault.hubCredential.enabled": "true", "vault.authRole": "",
                         "vault.mounts.kv": "kv2", "vault.caConfigMap": "vault-ca"})
    env = env_of(docs)
    s = VaultSettings.from_env(env)
    assert s.role == "fedcare-site-rouen" and s.kv_mount == "kv2" and s.ca_cert == "/etc/fedcare/vault-ca/ca.crt"
    _, container = container_of(docs)
    assert container["args"][container["args"].index("--hub-credential") + 1] == "vault"
    assert "--hub-kubeconfig" not in container["args"]
    hub = env_of(render(helm, {"vault.hubCredential.enabled": "true", "vault.hubCredential.ttlSeconds": "1200",
                               "vault.hubCredential.server": "https://hub.example:6443"}))
    assert settings_from_env(hub).ttl_seconds == 1200


def test_kubernetes_backend_sets_no_vault(helm) -> None:  # noqa: F811
    env = env_of(render(helm, {"secrets.backend": "kubernetes"}))
    assert env["FEDCARE_SECRETS_BACKEND"] == "kubernetes" and "FEDCARE_VAULT_ADDR" not in env
    assert sb.vault_from_env(env) is None


def test_bad_vault_values_are_refused(helm) -> None:  # noqa: F811
    assert "does not match pattern" in render_error(helm, {"vault.address": "vault:8200"})
    assert "value must be one of" in render_error(helm, {"secrets.backend": "consul"})
    assert "hubKubeconfigSecret is required" in render_error(helm, SITE)
