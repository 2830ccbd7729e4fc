"""TLS and SuperNode authentication for a round's SuperLink, every credential from Vault.

Per round, when the hub has Vault (``HubContext.vault``) and does not run with the explicit
development flag (``--insecure-flower``):

1. **Server certificate** from Vault PKI (role ``fedcare-superlink``, fresh key, TTL until the
   round's deadline): SANs are the Service's DNS names (``<svc>.<ns>.svc``,
   ``<svc>.<ns>.svc.cluster.local``), the external Fleet address when one is set,
   ``127.0.0.1`` (the SuperLink's own SuperExec dials it), and the address the hub calls the
   Control API at: the Service's ClusterIP on a real cluster; where Services have none (the
   emulator), the pod's IP, which is also what the sandbox kubelet translates the Service name
   to. Certificate, key and CA go into the Secret ``<round>-superlink-tls``, owned by the round,
   mounted into the SuperLink pod; nothing sensitive is in a pod spec or logged.
2. **SuperNode keys**: each participant's public key, read from ``<kv>/sites/<site>/supernode-public``
   (the site created the pair with its own identity; the hub's policy denies the private key),
   registered over the SuperLink's Control API (``hub/flower_control.py``, the request ``flwr supernode
   register`` sends) before any assignment is dispatched,
   so a SuperNode is never refused for a registration race.
3. **Site identities** for the ServerApp: ``site-identities`` = ``<site>=key:<sha256 of the
   registered public key>`` (workloads/trust.py): a reply's site is the one whose key the
   SuperLink authenticated, never the name in the reply.

Vault is synchronous (hvac): every call runs in a worker thread.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import hashlib
import ipaddress
import logging
import ssl
import time
from typing import Any

from cryptography.hazmat.primitives import serialization

from ..integrations import flower_credentials as fc
from ..integrations.kube import Kube, Ref
from ..integrations.vault import VaultClient

log = logging.getLogger(__name__)

MOUNT = "/etc/fedcare/superlink-tls"
CERT, KEY, CA = "tls.crt", "tls.key", "ca.crt"
SANS_ANNOTATION = "fedcare.io/ip-sans"
MAX_TTL = 72 * 3600          # the fedcare-superlink PKI role's max_ttl (flower_credentials)
CA_CACHE_SECONDS = 600.0
ABSENT_FIRST_DELAY, ABSENT_MAX_DELAY = 1.0, 10.0   # pauses between lookups of a key not published yet
#: Vault reads of the participants' public keys at once (18 sites one after another took ~0.15 s); few,
#: as they share the default executor with other Vault calls.
READ_CONCURRENCY = 4


def superlink_args() -> list[str]:
    """The SuperLink's TLS and node-authentication flags (files from the mounted Secret)."""
    return ["--ssl-certfile", f"{MOUNT}/{CERT}", "--ssl-keyfile", f"{MOUNT}/{KEY}",
            "--ssl-ca-certfile", f"{MOUNT}/{CA}", "--enable-supernode-auth"]


def volume(secret: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(volume, volumeMount) of the TLS Secret; the key file is 0400."""
    return ({"name": "tls", "secret": {"secretName": secret, "defaultMode": 0o444,
                                        "items": [{"key": CERT, "path": CERT}, {"key": CA, "path": CA},
                                                  {"key": KEY, "path": KEY, "mode": 0o400}]}},
            {"name": "tls", "mountPath": MOUNT, "readOnly": True})


def key_identity(openssh_public_key: str) -> str:
    """``key:<sha256>`` of a SuperNode public key as the SuperLink stores it (PEM
    SubjectPublicKeyInfo, flwr.supercore.primitives.asymmetric.public_key_to_bytes) and as
    the ServerApp sees it in ``grid.get_nodes()`` (workloads/trust.key_fingerprint)."""
    key = serialization.load_ssh_public_key(openssh_public_key.strip().encode())
    pem = key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    return "key:" + hashlib.sha256(pem).hexdigest()


def cluster_ip(service: dict[str, Any] | None) -> str:
    ip = ((service or {}).get("spec") or {}).get("clusterIP") or ""
    return "" if ip in ("", "None") else ip


def dns_names(service: str, namespace: str, external: str) -> list[str]:
    names = [f"{service}.{namespace}.svc", f"{service}.{namespace}.svc.cluster.local"]
    host = external.rpartition(":")[0] if external else ""
    if host and not _is_ip(host):
        names.append(host)
    return names


def _is_ip(value: str) -> bool:
    try:
        ipaddress.ip_address(value)
        return True
    except ValueError:
        return False


class SuperLinkTLS:
    """The hub's Vault side of round TLS. One per hub (it caches the CA certificate)."""

    def __init__(self, vault: VaultClient):
        self.vault = vault
        self._ca: tuple[str, float] | None = None
        #: {round key: (SuperLink pod uid, {site: the public key registered with it})}, this hub
        #: process; a restarted hub registers again and the SuperLink answers "already in use".
        #: ``site-identities`` is built from these very keys (no second read that could differ).
        #: A key a site rotates later is not picked up by a running round (its next round reads it).
        self.registered: dict[str, tuple[str, dict[str, str]]] = {}
        #: {site: (monotonic time before which its key is not looked up again, next delay)}: a
        #: site whose agent has not published its key yet is not polled on every pass.
        self._absent: dict[str, tuple[float, float]] = {}

    # -- CA --------------------------------------------------------------------------------
    async def ca_pem(self) -> str:
        """The PKI CA (public): what the flwr CLI, the health check and SuperNodes trust."""
        now = time.monotonic()
        if self._ca is None or self._ca[1] < now:
            pem = await asyncio.to_thread(fc.ca_certificate, self.vault)
            self._ca = (pem, now + CA_CACHE_SECONDS)
        return self._ca[0]

    async def ssl_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cadata=await self.ca_pem())

    # -- the Secret ---------------------------------------------------------------------------
    async def ensure_secret(self, kube: Kube, body: dict[str, Any], *, secret: str, service: dict[str, Any],
                            pod: dict[str, Any] | None, external: str, owner: dict[str, Any],
                            labels: dict[str, str]) -> str:
        """Issue the certificate into ``secret`` once its SANs are known; '' when it exists,
        else what it waits for. Called before the pod is created (``pod`` None) and after."""
        md = body["metadata"]
        ref = Ref("v1", "secrets", md["namespace"], secret)
        if await kube.get_or_none(ref) is not None:
            return ""
        ips = ["127.0.0.1"]
        host = external.rpartition(":")[0] if external else ""
        if host and _is_ip(host):
            ips.append(host)
        control = cluster_ip(service)
        if not control:
            # No ClusterIP (the emulator): the hub and the sandbox's translated Service name reach
            # the pod's own IP, known once the pod exists; the pod waits for this Secret meanwhile.
            if pod is None:
                return ""
            control = ((pod.get("status") or {}).get("podIP")) or ""
            if not control:
                return "waiting for the SuperLink pod's IP (its certificate names the address the hub calls)"
        ips.append(control)
        svc = service["metadata"]["name"]
        ttl = _ttl(body)
        cert = await asyncio.to_thread(
            fc.issue_superlink_certificate, self.vault, common_name=f"{svc}.{md['namespace']}.svc",
            dns_names=dns_names(svc, md["namespace"], external), ip_sans=sorted(set(ips)), ttl=f"{ttl}s")
        manifest = {"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
                    "metadata": {"name": secret, "namespace": md["namespace"], "labels": labels,
                                 "ownerReferences": [owner],
                                 "annotations": {SANS_ANNOTATION: ",".join(sorted(set(ips))),
                                                 "fedcare.io/certificate-serial": cert.serial_number,
                                                 "fedcare.io/expires": _iso(cert.expiration)}},
                    # data, not stringData: the emulator stores what it is given (no conversion)
                    "data": _b64({CERT: cert.certificate + "\n", KEY: cert.private_key + "\n",
                                  CA: cert.ca_chain + "\n"})}
        await kube.create(Ref("v1", "secrets", md["namespace"]), manifest)
        log.info("Round %s: SuperLink certificate from Vault PKI in Secret %s (serial %s, ttl %ss)",
                 md["name"], secret, cert.serial_number, ttl)
        return ""

    # -- SuperNode keys ------------------------------------------------------------------------
    async def public_keys(self, sites: list[str]) -> tuple[dict[str, str], list[str]]:
        """({site: OpenSSH public key}, [sites whose key is not in Vault yet]). The caller keeps
        what it registered (``registered``); reads are also cached by the Vault client for the
        secret's TTL. A key not there yet is looked up again after a growing pause (1 s doubling
        to ``ABSENT_MAX_DELAY``), not on every reconcile pass."""
        from ..integrations.vault import VaultNotFound

        keys, missing = {}, []
        bound = asyncio.Semaphore(READ_CONCURRENCY)

        async def read(site: str) -> None:
            now = time.monotonic()
            until, delay = self._absent.get(site, (0.0, ABSENT_FIRST_DELAY))
            if now < until:
                missing.append(site)
                return
            try:
                async with bound:
                    keys[site] = await asyncio.to_thread(fc.supernode_public_key, self.vault, site)
                self._absent.pop(site, None)
            except VaultNotFound:
                self._absent[site] = (now + delay, min(ABSENT_MAX_DELAY, 2 * delay))
                missing.append(site)

        results = await asyncio.gather(*(read(site) for site in sites), return_exceptions=True)
        for result in results:      # a Vault failure fails the pass as before, after the others finished
            if isinstance(result, BaseException):
                raise result
        return dict(sorted(keys.items())), sorted(missing)


def site_identities(keys: dict[str, str]) -> str:
    """run-config ``site-identities`` of workloads/: ``site=key:<sha256>,…``."""
    return ",".join(f"{site}={key_identity(pub)}" for site, pub in sorted(keys.items()))


def _ttl(body: dict[str, Any]) -> int:
    """Seconds until the round's deadline plus 10 minutes, within [10 min, the role's max]."""
    raw = (body.get("status") or {}).get("deadline")
    left = 3600
    if raw:
        deadline = dt.datetime.fromisoformat(str(raw).replace("Z", "+00:00"))
        left = int((deadline - dt.datetime.now(dt.UTC)).total_seconds())
    return max(600, min(MAX_TTL, left + 600))


def _b64(values: dict[str, str]) -> dict[str, str]:
    return {k: base64.b64encode(v.encode()).decode() for k, v in values.items()}


def _iso(unix: int) -> str:
    return dt.datetime.fromtimestamp(unix, dt.UTC).isoformat().replace("+00:00", "Z")
