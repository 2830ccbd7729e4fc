"""The site agent's credential to the hub: short-lived, minted by the hub, delivered through Vault.

No person rotates it. The hub asks its own API server for a token of the site's ServiceAccount
(``fedcare-site-<site>/fedcare-agent``) with the TokenRequest API (``expirationSeconds`` = the
configured TTL, bound to the ServiceAccount: deleting the ServiceAccount invalidates it), and
writes it to ``<kv>/sites/<site>/hub-credential`` with its expiry. The agent reads that path
with its own Vault identity (policy ``fedcare-site-<site>``: read-only, that path only) and
swaps the token in before it expires (``site/hub_credential.py``).

The hub re-mints when less than ``refresh_fraction`` of the TTL is left, so the agent always
finds a token with at least that much life; a failed mint is retried with backoff while the
old token is still valid.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from dataclasses import dataclass
from typing import Any

from ..api import resources as r
from ..integrations.kube import Kube, Ref
from ..integrations.vault import VaultClient, VaultNotFound
from . import enrollment as e

log = logging.getLogger(__name__)

KEY = "hub-credential"


@dataclass(frozen=True)
class HubCredentialSettings:
    ttl_seconds: int = 3600            # TokenRequest expirationSeconds (the API server's minimum is 600)
    refresh_fraction: float = 0.5      # re-mint when less than this fraction of the TTL is left
    audiences: tuple[str, ...] = ()    # empty: the API server's default audience
    server: str = ""                   # the hub API URL as the sites reach it (written beside the token)
    ca_data: str = ""                  # base64 PEM of the hub API's CA, for the agent's kubeconfig


def settings_from_env(env: dict[str, str] | None = None) -> HubCredentialSettings | None:
    """Enabled by FEDCARE_HUB_CREDENTIAL_TTL (the chart's vault.hubCredential); the server URL and CA
    written beside the token default to the hub pod's own view of its API (in-cluster)."""
    import os

    e = os.environ if env is None else env
    ttl = e.get("FEDCARE_HUB_CREDENTIAL_TTL", "")
    if not ttl:
        return None
    ca_data = ""
    ca_path = e.get("FEDCARE_HUB_CREDENTIAL_CA", "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt")
    try:
        import base64

        with open(ca_path, "rb") as fh:
            ca_data = base64.b64encode(fh.read()).decode()
    except OSError:
        pass
    return HubCredentialSettings(ttl_seconds=int(ttl), server=e.get("FEDCARE_HUB_CREDENTIAL_SERVER", ""),
                                 ca_data=ca_data)


def path(site: str, prefix: str | None = None) -> str:
    return f"{prefix or f'sites/{site}'}/{KEY}"


def _parse_time(value: str) -> dt.datetime:
    return dt.datetime.fromisoformat(value.replace("Z", "+00:00"))


async def mint(kube: Kube, site: str, settings: HubCredentialSettings) -> tuple[str, dt.datetime]:
    """A fresh token of the site's agent ServiceAccount (TokenRequest). Never logged."""
    sa = Ref("v1", "serviceaccounts", r.site_namespace(site), e.AGENT_SA)
    spec: dict[str, Any] = {"expirationSeconds": settings.ttl_seconds}
    if settings.audiences:
        spec["audiences"] = list(settings.audiences)
    body = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": spec}
    resp = await kube.request("POST", sa.path + "/token", body=body)
    status = resp.get("status") or {}
    return status["token"], _parse_time(status["expirationTimestamp"])


def _remaining(data: dict[str, Any] | None, now: dt.datetime) -> float:
    try:
        return (_parse_time(str((data or {})["expirationTimestamp"])) - now).total_seconds()
    except (KeyError, ValueError):
        return -1.0


async def rotate(kube: Kube, vault: VaultClient, site: str, settings: HubCredentialSettings, *,
                 prefix: str | None = None, kv_mount: str | None = None, force: bool = False,
                 now: dt.datetime | None = None) -> dt.datetime | None:
    """Mint and store a new token if the stored one is missing or due; returns the new expiry,
    or None when the stored token is still fresh enough."""
    now = now or dt.datetime.now(dt.UTC)
    key = path(site, prefix)
    try:
        current = await asyncio.to_thread(vault.read, key, mount=kv_mount, fresh=True)
    except VaultNotFound:
        current = None
    if not force and _remaining(current, now) > settings.ttl_seconds * settings.refresh_fraction:
        return None
    token, expires = await mint(kube, site, settings)
    left = (expires - now).total_seconds()
    data = {"token": token, "expirationTimestamp": expires.isoformat().replace("+00:00", "Z"),
            "server": settings.server, "certificate-authority-data": settings.ca_data}
    # Readers cache it until a third of its life is left at most: they then read the next one.
    await asyncio.to_thread(vault.write, key, data, mount=kv_mount, ttl=max(1, int(left / 3)))
    log.info("Stored a new hub credential for site %s (expires %s)", site, data["expirationTimestamp"])
    return expires
