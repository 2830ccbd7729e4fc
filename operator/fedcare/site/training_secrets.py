"""Secrets for training pods: short-lived, least-privilege material at pod start, never a value
in a pod spec stored in the API. Two paths (docs/architecture.md, "Secrets for training pods"):

1. **Vault Agent injector** (real clusters running it): :func:`injector_annotations` — the pod
   logs in to Vault itself with its own ServiceAccount and the injector writes the secrets into
   a shared memory volume before the container starts (``agent-pre-populate-only``). The pod
   spec carries only Vault paths and a role name.
2. **Agent-written Secret** (no injector): :func:`pod_secret` — the site agent mints a child
   token with only the ``fedcare-site-<site>-training`` policy (read ``<prefix>/training/*``)
   and a short TTL, puts it in a Secret the pod mounts, and deletes the Secret and revokes the
   token when the pod is done. The pod spec references the Secret by name only.

The training pod launcher (round execution) calls one of them; nothing here starts pods.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from ..api import resources as r
from ..integrations.kube import Kube, Ref
from ..integrations.vault import VaultClient, VaultError

log = logging.getLogger(__name__)

TOKEN_KEY = "vault-token"
ADDR_KEY = "vault-addr"


def injector_annotations(*, role: str, secrets: dict[str, str], kv_mount: str = "fedcare",
                         auth_path: str = "auth/kubernetes", ttl: str = "15m") -> dict[str, str]:
    """Pod annotations for the Vault Agent injector: one file per secret under /vault/secrets/.
    ``secrets`` maps a file name to a KV v2 path inside ``kv_mount`` (e.g. sites/rouen/training/x)."""
    ann = {"vault.hashicorp.com/agent-inject": "true", "vault.hashicorp.com/role": role,
           "vault.hashicorp.com/auth-path": auth_path, "vault.hashicorp.com/agent-pre-populate-only": "true",
           "vault.hashicorp.com/agent-inject-token": "false",
           "vault.hashicorp.com/agent-run-as-same-user": "true", "vault.hashicorp.com/auth-config-token-ttl": ttl}
    for name, path in secrets.items():
        ann[f"vault.hashicorp.com/agent-inject-secret-{name}"] = f"{kv_mount}/data/{path.strip('/')}"
    return ann


@dataclass(frozen=True)
class PodToken:
    token: str = field(repr=False)
    accessor: str
    expires: dt.datetime


def mint_pod_token(vault: VaultClient, policy: str, *, ttl: str = "15m", pod: str = "") -> PodToken:
    """A child token of the agent's with ``policy`` only, not renewable, ``ttl`` long (capped by the
    agent's own token). Revoked by :func:`revoke_pod_token` or at expiry."""
    auth = vault.call(lambda c: c.auth.token.create(policies=[policy], ttl=ttl, renewable=False,
                                                    meta={"fedcare-pod": pod} if pod else None),
                      "auth/token/create")["auth"]
    expires = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=int(auth["lease_duration"]))
    return PodToken(auth["client_token"], auth["accessor"], expires)


def revoke_pod_token(vault: VaultClient, token: PodToken) -> None:
    """The token revokes itself (the default policy allows revoke-self; the agent's policy needs
    no revoke rights over other tokens)."""
    import hvac

    own = hvac.Client(url=vault.settings.addr, token=token.token, timeout=vault.settings.retry.timeout,
                      verify=vault.settings.ca_cert or True)
    vault._raw(lambda: own.auth.token.revoke_self(), "auth/token/revoke-self", authed=False)


def secret_manifest(name: str, namespace: str, token: PodToken, vault_addr: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
            "metadata": {"name": name, "namespace": namespace,
                         "labels": {r.MANAGED_BY_LABEL: r.MANAGED_BY},
                         "annotations": {"fedcare.io/expires": token.expires.isoformat().replace("+00:00", "Z")}},
            "stringData": {TOKEN_KEY: token.token, ADDR_KEY: vault_addr}}


@contextlib.asynccontextmanager
async def pod_secret(kube: Kube, vault: VaultClient, *, name: str, namespace: str, policy: str,
                     ttl: str = "15m") -> AsyncIterator[str]:
    """Mint a pod token, store it in Secret ``name`` for the pod to mount; on exit delete the Secret
    and revoke the token (both even if the block failed). Yields the Secret's name."""
    token = await asyncio.to_thread(mint_pod_token, vault, policy, ttl=ttl, pod=f"{namespace}/{name}")
    try:
        await kube.create(Ref("v1", "secrets", namespace), secret_manifest(name, namespace, token,
                                                                            vault.settings.addr))
        log.info("Created Secret %s/%s with a pod token (expires %s)", namespace, name, token.expires.isoformat())
        yield name
    finally:
        try:
            await kube.delete(Ref("v1", "secrets", namespace, name))
        finally:
            try:
                await asyncio.to_thread(revoke_pod_token, vault, token)
            except VaultError as err:       # it expires on its own within ttl
                log.warning("Could not revoke the pod token of %s/%s (%s); it expires at %s", namespace, name,
                            err.reason, token.expires.isoformat())
