"""The sandbox federation's Vault: a dev OpenBao, bootstrapped the way an administrator would.

- engines: KV v2 at ``fedcare/``, transit at ``transit/`` (release signing), PKI at ``pki/``
  with a root CA and the ``fedcare-superlink`` role (server certificates for ``*.svc``,
  ``*.svc.cluster.local`` and ``localhost`` names and IP SANs);
- the hub's identity: a token with exactly ``vault_footprint.hub_policy_hcl()`` (it creates each
  site's footprint at enrollment, issues SuperLink certificates, reads sites' public keys and
  is denied their private keys);
- the sites' identities: JWT auth at ``jwt/`` trusting a sandbox ServiceAccount issuer (the
  emulator has no TokenReview); each agent logs in with a JWT for
  ``system:serviceaccount:fedcare-site-<site>:fedcare-agent`` through the role the hub made at
  enrollment, so it gets only its own site's policy;
- a file audit device (``audit.log``): every request Vault served, with paths in clear and
  values HMAC'd, which :func:`reads` counts (benchmarks/vault.py).
"""

from __future__ import annotations

import collections
import json
import pathlib
from dataclasses import dataclass, field

from ..hub import vault_footprint as fp
from ..integrations import flower_credentials as fc
from ..integrations.vault import RetryPolicy, VaultClient, VaultSettings
from .openbao import DevServer
from .sa_issuer import SAIssuer

HUB_POLICY = "fedcare-hub"
JWT_MOUNT = "jwt"
RETRY = RetryPolicy(attempts=4, base_delay=0.1, max_delay=1.0, timeout=10.0)


@dataclass
class SandboxVault:
    server: DevServer
    hub: VaultClient
    issuer: SAIssuer
    footprint: fp.FootprintSettings
    workdir: pathlib.Path
    sites: dict[str, VaultClient] = field(default_factory=dict)

    @property
    def addr(self) -> str:
        return self.server.addr

    @property
    def audit_log(self) -> pathlib.Path:
        return self.workdir / "audit.log"

    def site_client(self, site: str) -> VaultClient:
        """The site agent's own client: JWT login as its ServiceAccount, scoped to its path."""
        if site not in self.sites:
            sv = fp.site_vault({"metadata": {"name": site}, "spec": {}}, "fedcare")
            jwt = self.workdir / "jwt" / site
            jwt.parent.mkdir(parents=True, exist_ok=True)
            self.issuer.write(jwt, sv.namespace, sv.service_account, ttl=24 * 3600)
            jwt.chmod(0o600)
            self.sites[site] = VaultClient(VaultSettings(addr=self.addr, auth_method="jwt", role=sv.role,
                                                         auth_mount=self.footprint.mount, jwt_path=str(jwt),
                                                         retry=RETRY), site=site)
        return self.sites[site]

    def stop(self) -> None:
        self.server.stop()


def start(workdir: pathlib.Path) -> SandboxVault:
    """Start and bootstrap (blocking, ~1 s). Raises openbao.BaoMissing without the binary."""
    workdir.mkdir(parents=True, exist_ok=True)
    audit = ('audit "file" "sandbox" {\n  options {\n    file_path = "%s"\n  }\n}\n' % (workdir / "audit.log"))
    server = DevServer(workdir, config=audit).start()
    try:
        root = server.client()
        mounts = root.sys.list_mounted_secrets_engines()["data"]
        if "fedcare/" not in mounts:
            root.sys.enable_secrets_engine("kv", path="fedcare", options={"version": "2"})
        if "transit/" not in mounts:
            root.sys.enable_secrets_engine("transit", path="transit")
        admin = VaultClient(VaultSettings(addr=server.addr, auth_method="token", token=server.root_token,
                                          retry=RETRY))
        fc.ensure_pki(admin, common_name="fedcare sandbox CA")
        fc.ensure_superlink_role(admin, allowed_domains=["svc", "svc.cluster.local", "localhost"])
        issuer = SAIssuer()
        issuer.configure(root, JWT_MOUNT)
        fs = fp.FootprintSettings(auth_method="jwt", auth_mount=JWT_MOUNT, audience=issuer.audience)
        root.sys.create_or_update_acl_policy(HUB_POLICY, fp.hub_policy_hcl("fedcare", fs))
        token = root.auth.token.create(policies=[HUB_POLICY], ttl="24h", renewable=True,
                                       display_name="fedcare-hub")["auth"]["client_token"]
        hub = VaultClient(VaultSettings(addr=server.addr, auth_method="token", token=token, retry=RETRY))
        hub.login()
        return SandboxVault(server=server, hub=hub, issuer=issuer, footprint=fs, workdir=workdir)
    except BaseException:
        server.stop()
        raise


#: What a round reads: the sites' key material and the CA (not logins or token lookups).
def _secret(path: str) -> str | None:
    if "/data/sites/" in path and path.rsplit("/", 1)[-1] in ("supernode", "supernode-public"):
        return path.split("/data/", 1)[1]
    if path.endswith("issuer/default/json"):
        return "pki CA certificate"
    return None


def reads(audit_log: pathlib.Path, *, since_line: int = 0, missed: bool = False) -> dict[tuple[str, str], int]:
    """{(identity, secret): reads that delivered it} from the audit log's response entries after
    ``since_line``; with ``missed``, the lookups that found nothing instead (a key not published
    yet: Vault answered 404 and delivered no secret). identity is the token's display name
    (``token-fedcare-hub``, ``jwt-…fedcare-site-<site>…``)."""
    counts: collections.Counter[tuple[str, str]] = collections.Counter()
    if not audit_log.is_file():
        return {}
    with audit_log.open(encoding="utf-8") as fh:
        for i, line in enumerate(fh):
            if i < since_line:
                continue
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            req = entry.get("request") or {}
            if entry.get("type") != "response" or req.get("operation") != "read":
                continue
            secret = _secret(req.get("path") or "")
            auth = entry.get("auth") or {}
            if secret is None or "root" in (auth.get("policies") or []):
                continue            # the administrator (bootstrap, a test looking), not fedcare
            if bool((entry.get("response") or {}).get("data")) == missed:
                continue
            who = auth.get("display_name") or "unauthenticated"
            counts[(who, secret)] += 1
    return dict(counts)


def line_count(audit_log: pathlib.Path) -> int:
    if not audit_log.is_file():
        return 0
    with audit_log.open("rb") as fh:
        return sum(1 for _ in fh)
