"""The SuperNode's TLS trust and authentication key, from Vault, for one training pod.

The site agent, with its own site-scoped Vault identity:

- creates the site's SuperNode key pair once (``flower_credentials.ensure_supernode_key``: the
  private key stays at ``<kv>/sites/<site>/supernode``, which the hub's policy denies; the public
  key is published beside it for the hub to register);
- for each training pod, reads the private key and the PKI CA bundle (both cached: one read per
  secret per round) and writes them into a short-lived Secret ``<pod>-flower`` in the work
  namespace, owned by the pod (a real cluster's garbage collector removes it with the pod) and
  deleted by the agent when the pod ends. The pod mounts it by name: no key is in a pod spec.

The SuperNode then starts with ``--root-certificates`` and ``--auth-supernode-private-key``
(``--auth-supernode-public-key`` is deprecated in Flower 1.42: the key file holds both).
"""

from __future__ import annotations

import asyncio
import base64
import logging
import time
from typing import Any

from ..api import resources as r
from ..integrations import flower_credentials as fc
from ..integrations.kube import Conflict, Kube, Ref
from ..integrations.vault import VaultClient

log = logging.getLogger(__name__)

MOUNT = "/etc/fedcare/flower"
CA, KEY = "ca.crt", "supernode.key"
CREDENTIALS_LABEL = "fedcare.io/credentials"
CA_CACHE_SECONDS = 600.0


def secret_name(pod_name: str) -> str:
    return f"{pod_name}-flower"


def supernode_args() -> list[str]:
    return ["--root-certificates", f"{MOUNT}/{CA}", "--auth-supernode-private-key", f"{MOUNT}/{KEY}"]


def volume(pod_name: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(volume, volumeMount) of the pod's credentials Secret; the key file is 0400."""
    return ({"name": "flower-credentials",
             "secret": {"secretName": secret_name(pod_name), "defaultMode": 0o444,
                        "items": [{"key": CA, "path": CA}, {"key": KEY, "path": KEY, "mode": 0o400}]}},
            {"name": "flower-credentials", "mountPath": MOUNT, "readOnly": True})


class SupernodeCredentials:
    def __init__(self, vault: VaultClient, site: str):
        self.vault, self.site = vault, site
        self.key_ready = False
        self._ca: tuple[str, float] | None = None

    async def ensure_key(self) -> None:
        """The site's key pair exists in Vault (created with the site's own identity)."""
        if not self.key_ready:
            await asyncio.to_thread(fc.ensure_supernode_key, self.vault, self.site)
            self.key_ready = True

    async def _ca_pem(self) -> str:
        now = time.monotonic()
        if self._ca is None or self._ca[1] < now:
            self._ca = (await asyncio.to_thread(fc.ca_certificate, self.vault), now + CA_CACHE_SECONDS)
        return self._ca[0]

    async def _private_key(self) -> str:
        # VaultClient.read caches for the secret's TTL: re-created pods of a round reuse it.
        data = await asyncio.to_thread(self.vault.read, f"sites/{self.site}/supernode")
        return data["private_key"]

    async def ensure_secret(self, kube: Kube, pod: dict[str, Any], *, exists: bool | None = None) -> bool:
        """Create the pod's credentials Secret if missing; True when it was created now.
        ``exists``: what a fresh list of the site's credentials Secrets says (saves the GET);
        None: read it."""
        md = pod["metadata"]
        name = secret_name(md["name"])
        if exists is None:
            found = await kube.get_or_none(Ref("v1", "secrets", md["namespace"], name))
            owners = {o.get("uid") for o in ((found or {}).get("metadata") or {}).get("ownerReferences") or []}
            labels = ((found or {}).get("metadata") or {}).get("labels") or {}
            if found is not None and md.get("uid") and md["uid"] not in owners \
                    and labels.get(CREDENTIALS_LABEL) == "supernode" and labels.get(r.SITE_LABEL) == self.site:
                # an earlier pod's of the same name (the garbage collector would take it from the
                # new pod): made again for this one
                await kube.delete(Ref("v1", "secrets", md["namespace"], name))
                found = None
            exists = found is not None
        if exists:
            return False
        await self.ensure_key()
        data = {CA: await self._ca_pem(), KEY: await self._private_key()}
        manifest = {
            "apiVersion": "v1", "kind": "Secret", "type": "Opaque",
            "metadata": {"name": name, "namespace": md["namespace"],
                         "labels": {r.SITE_LABEL: self.site, CREDENTIALS_LABEL: "supernode",
                                    r.MANAGED_BY_LABEL: r.MANAGED_BY},
                         "ownerReferences": [{"apiVersion": "v1", "kind": "Pod", "name": md["name"],
                                              "uid": md["uid"], "blockOwnerDeletion": True}]},
            # data, not stringData: the emulator stores what it is given (no conversion)
            "data": {k: base64.b64encode(v.encode()).decode() for k, v in data.items()}}
        try:
            await kube.create(Ref("v1", "secrets", md["namespace"]), manifest)
        except Conflict:        # created meanwhile (the list was older): it is there, which is the point
            return False
        log.info("Site %s: SuperNode credentials (CA bundle, authentication key from Vault) in Secret %s/%s",
                 self.site, md["namespace"], name)
        return True


async def delete_secret(kube: Kube, namespace: str, pod_name: str) -> bool:
    return await kube.delete(Ref("v1", "secrets", namespace, secret_name(pod_name)))


async def sweep(kube: Kube, namespace: str, site: str, pods: set[str]) -> tuple[list[str], set[str]]:
    """Delete this site's credentials Secrets whose pod is gone (an agent stopped in between).
    Returns (deleted, kept): the names of the Secrets deleted and of those left in place."""
    gone, kept = [], set()
    for s in await kube.list(Ref("v1", "secrets", namespace),
                             label_selector=f"{r.SITE_LABEL}={site},{CREDENTIALS_LABEL}=supernode"):
        name = s["metadata"]["name"]
        if name.removesuffix("-flower") not in pods and await kube.delete(Ref("v1", "secrets", namespace, name)):
            gone.append(name)
        else:
            kept.add(name)
    return gone, kept
