"""The secrets backend seam: Vault (the default) or, for a development cluster without Vault,
plain Kubernetes Secrets (``secrets.backend: kubernetes`` in the Helm values).

With ``kubernetes`` nothing fedcare does involves Vault: no per-site footprint (HospitalNode
``CredentialsReady=True`` with reason ``VaultDisabled`` says so), the site agent uses the hub
kubeconfig Secret it was installed with, and Flower needs its explicit development flag for
``--insecure``. A loud warning is logged at every start-up, because every credential is then
a plain Kubernetes object readable by anyone with ``get secrets``.
"""

from __future__ import annotations

import logging
import os

from .vault import VaultClient, VaultSettings, get_client

log = logging.getLogger(__name__)

VAULT, KUBERNETES = "vault", "kubernetes"

LOUD = ("!!! secrets.backend=kubernetes: fedcare runs WITHOUT Vault. Credentials are plain Kubernetes "
        "Secrets, no short-lived per-site Vault identity exists, and nothing is revoked at site deletion. "
        "Development clusters only; never with patient data. !!!")


def backend(env: dict[str, str] | None = None) -> str:
    e = os.environ if env is None else env
    value = e.get("FEDCARE_SECRETS_BACKEND", VAULT).strip().lower() or VAULT
    if value not in (VAULT, KUBERNETES):
        raise ValueError(f"FEDCARE_SECRETS_BACKEND={value!r}: expected vault or kubernetes "
                         "(secrets.backend in the Helm values)")
    return value


def vault_from_env(env: dict[str, str] | None = None, *, site: str | None = None) -> VaultClient | None:
    """The process's Vault client, or None (with the loud warning) for the kubernetes backend.
    Vault is the default: with ``FEDCARE_SECRETS_BACKEND=vault`` and no address, start-up fails.
    Nothing configured at all (a developer's shell) counts as kubernetes, with the same warning."""
    e = os.environ if env is None else env
    addr = e.get("FEDCARE_VAULT_ADDR") or e.get("VAULT_ADDR")
    if backend(e) == KUBERNETES:
        log.warning(LOUD)
        return None
    if not addr and "FEDCARE_SECRETS_BACKEND" not in e:
        # A bare `fedcare hub` from a shell (the chart always sets the backend): as kubernetes, loudly.
        log.warning("No secrets backend configured (FEDCARE_SECRETS_BACKEND unset, no FEDCARE_VAULT_ADDR). %s", LOUD)
        return None
    if not addr:
        raise ValueError("secrets.backend is vault (the default) but no Vault address is set: set "
                         "FEDCARE_VAULT_ADDR (vault.address in the Helm values), or, on a development "
                         "cluster only, FEDCARE_SECRETS_BACKEND=kubernetes")
    return get_client(VaultSettings.from_env(e), site=site)
