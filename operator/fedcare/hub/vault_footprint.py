"""A site's footprint in Vault: made at enrollment, removed at deletion.

Per HospitalNode ``<site>`` (names overridable by ``spec.vault``):

- KV v2 path ``<kv mount>/sites/<site>/`` (``spec.vault.path``: ``<mount>/<prefix>``, whose last
  segment must be the site name so two sites can never share a path), holding the agent's
  hub credential, its SuperNode key and an ``enrollment`` marker the hub writes;
- ACL policy ``fedcare-site-<site>``: read that path, and write only its ``supernode`` key
  (the site creates its key pair itself);
- auth role ``fedcare-site-<site>`` (``spec.vault.role``) on the Kubernetes (or JWT) auth
  mount, bound to the agent's ServiceAccount ``fedcare-agent`` in ``fedcare-site-<site>``,
  granting that policy only, with short token TTLs.

When the hub may not create the policy or role, it checks whether an administrator already
did (same text / same binding) and otherwise reports ``CredentialsReady=False`` with reason
``VaultPolicyMissing`` and the exact policy text to apply. Deletion revokes the tokens issued
through the site's role, deletes the role and policy only if they are fedcare's (marker line,
binding), and destroys only KV secrets marked ``managed-by: fedcare``.

Everything here is synchronous (hvac); :func:`reconcile_site` and :func:`remove_site` run it in
a worker thread for the async hub.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Any

from ..api import conditions as c
from ..api import resources as r
from ..api.base import Condition
from ..integrations import vault as v
from ..integrations.vault import VaultClient, VaultError, VaultForbidden, VaultNotFound, VaultPathRefused
from . import enrollment as e

log = logging.getLogger(__name__)

POLICY_MARKER = "# managed-by: fedcare"


@dataclass(frozen=True)
class FootprintSettings:
    auth_method: str = "kubernetes"     # the method site agents log in with: kubernetes | jwt
    auth_mount: str = ""                # default: the method's name
    audience: str = "fedcare-vault"     # JWT audience (jwt method); kubernetes: the role's audience, if set
    token_ttl: str = "15m"
    token_max_ttl: str = "1h"

    @property
    def mount(self) -> str:
        return self.auth_mount or self.auth_method

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> "FootprintSettings":
        """Site roles are made on the auth mount the chart names for sites (vault.siteAuth)."""
        import os

        e = os.environ if env is None else env
        return cls(auth_method=e.get("FEDCARE_VAULT_SITE_AUTH_METHOD", "kubernetes"),
                   auth_mount=e.get("FEDCARE_VAULT_SITE_AUTH_MOUNT", ""),
                   audience=e.get("FEDCARE_VAULT_SITE_AUDIENCE", "fedcare-vault"),
                   token_ttl=e.get("FEDCARE_VAULT_SITE_TOKEN_TTL", "15m"),
                   token_max_ttl=e.get("FEDCARE_VAULT_SITE_TOKEN_MAX_TTL", "1h"))


@dataclass(frozen=True)
class SiteVault:
    """Names of one site's footprint; pure data, computed from the HospitalNode."""

    site: str
    kv_mount: str
    prefix: str                 # path inside the mount, e.g. sites/rouen
    policy: str
    role: str
    namespace: str
    service_account: str = e.AGENT_SA

    @property
    def training_policy(self) -> str:
        """What a training pod's token may do: read <prefix>/training/* and nothing else."""
        return f"{self.policy}-training"

    def path(self, key: str) -> str:
        return f"{self.prefix}/{key}"


def site_vault(node: dict[str, Any], kv_mount: str) -> SiteVault:
    """The footprint's names; ``spec.vault`` is honoured. Raises VaultPathRefused for a path
    that could reach beyond the site."""
    site = node["metadata"]["name"]
    spec = ((node.get("spec") or {}).get("vault") or {})
    raw_path = str(spec.get("path") or "")
    mount, prefix = kv_mount, f"sites/{site}"
    if raw_path:
        mount, _, prefix = v.check_path(raw_path, site=site).partition("/")
        if not prefix or prefix.rsplit("/", 1)[-1] != site:
            raise VaultPathRefused(f"spec.vault.path must be <kv mount>/<prefix>/{site} (its last segment the "
                                   "site name, so no two sites share a path); leave it empty for "
                                   f"{kv_mount}/sites/{site}")
    role = str(spec.get("role") or f"fedcare-site-{site}")
    return SiteVault(site=site, kv_mount=mount, prefix=prefix, policy=f"fedcare-site-{site}", role=role,
                     namespace=r.site_namespace(site))


def policy_hcl(sv: SiteVault) -> str:
    data, meta = f"{sv.kv_mount}/data/{sv.prefix}", f"{sv.kv_mount}/metadata/{sv.prefix}"
    return (f"{POLICY_MARKER} (site {sv.site})\n"
            f'path "{data}/*" {{\n  capabilities = ["read"]\n}}\n'
            f'path "{meta}/*" {{\n  capabilities = ["read", "list"]\n}}\n'
            "# The site generates its SuperNode key pair: the private key stays in supernode (the hub's\n"
            "# policy denies it), the public key is published in supernode-public.\n"
            f'path "{data}/supernode" {{\n  capabilities = ["create", "read", "update"]\n}}\n'
            f'path "{meta}/supernode" {{\n  capabilities = ["read", "update"]\n}}\n'
            f'path "{data}/supernode-public" {{\n  capabilities = ["create", "read", "update"]\n}}\n'
            f'path "{meta}/supernode-public" {{\n  capabilities = ["read", "update"]\n}}\n'
            "# Short-lived child tokens for training pods (policy fedcare-site-<site>-training only).\n"
            'path "auth/token/create" {\n  capabilities = ["update"]\n}\n')


def training_policy_hcl(sv: SiteVault) -> str:
    return (f"{POLICY_MARKER} (site {sv.site}, training pods)\n"
            f'path "{sv.kv_mount}/data/{sv.prefix}/training/*" {{\n  capabilities = ["read"]\n}}\n')


def role_body(sv: SiteVault, fs: FootprintSettings) -> dict[str, Any]:
    common = {"token_policies": [sv.policy, sv.training_policy], "token_ttl": fs.token_ttl, "token_max_ttl": fs.token_max_ttl,
              "token_type": "service"}
    if fs.auth_method == "jwt":
        return {**common, "role_type": "jwt", "bound_audiences": [fs.audience], "user_claim": "sub",
                "bound_subject": f"system:serviceaccount:{sv.namespace}:{sv.service_account}"}
    return {**common, "bound_service_account_names": [sv.service_account],
            "bound_service_account_namespaces": [sv.namespace]}


def hub_policy_hcl(kv_mount: str = "fedcare", fs: FootprintSettings | None = None,
                   transit_mount: str = "transit", pki_mount: str = "pki", *, manage: bool = True) -> str:
    """What the hub's own Vault role needs for everything fedcare does (docs and the chart).

    ``manage=False``: the hub only checks site policies and roles an administrator creates."""
    fs = fs or FootprintSettings()
    verbs = '"create", "read", "update", "delete"' if manage else '"read"'
    return (
        "# fedcare hub\n"
        f'path "sys/policies/acl/fedcare-site-*" {{\n  capabilities = [{verbs}]\n}}\n'
        f'path "auth/{fs.mount}/role/fedcare-site-*" {{\n  capabilities = [{verbs}]\n}}\n'
        f'path "{kv_mount}/data/sites/*" {{\n  capabilities = ["create", "read", "update"]\n}}\n'
        f'path "{kv_mount}/metadata/sites/*" {{\n  capabilities = ["read", "list", "update", "delete"]\n}}\n'
        "# A site's SuperNode private key is the site's alone (the hub may still delete it at removal).\n"
        f'path "{kv_mount}/data/sites/+/supernode" {{\n  capabilities = ["deny"]\n}}\n'
        'path "auth/token/accessors" {\n  capabilities = ["list", "sudo"]\n}\n'
        'path "auth/token/lookup-accessor" {\n  capabilities = ["update"]\n}\n'
        'path "auth/token/revoke-accessor" {\n  capabilities = ["update"]\n}\n'
        f'path "{transit_mount}/keys/fedcare-release" {{\n  capabilities = ["create", "read", "update"]\n}}\n'
        "# The chain sending key (chain.keyRef vault:<kv mount>/chain/<name>#<field>): read only.\n"
        f'path "{kv_mount}/data/chain/*" {{\n  capabilities = ["read"]\n}}\n'
        f'path "{transit_mount}/sign/fedcare-release" {{\n  capabilities = ["update"]\n}}\n'
        f'path "{pki_mount}/issue/fedcare-superlink" {{\n  capabilities = ["update"]\n}}\n'
        f'path "{pki_mount}/issuer/default/json" {{\n  capabilities = ["read"]\n}}\n'
    )


# -- ensure / remove (synchronous) --------------------------------------------------------------

@dataclass
class FootprintResult:
    missing: list[str] = field(default_factory=list)    # what an administrator must create
    created: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.missing


def _same_role(have: dict[str, Any], want: dict[str, Any]) -> bool:
    keys = ("bound_service_account_names", "bound_service_account_namespaces", "bound_subject", "token_policies")
    return all(sorted(have.get(k) or []) == sorted(want.get(k) or []) if isinstance(want.get(k), list)
               else have.get(k) == want.get(k) for k in keys if k in want)


def ensure(vault: VaultClient, sv: SiteVault, fs: FootprintSettings) -> FootprintResult:
    """Create or check the footprint. Raises VaultError for anything but a missing right."""
    res = FootprintResult()
    for name, hcl in ((sv.policy, policy_hcl(sv)), (sv.training_policy, training_policy_hcl(sv))):
        _ensure_policy(vault, name, hcl, res)
    rpath = f"auth/{fs.mount}/role/{sv.role}"
    want = role_body(sv, fs)
    try:
        have = vault.call(lambda cl: cl.adapter.get(f"/v1/{rpath}"), rpath)["data"]
    except VaultNotFound:
        have = None
    except VaultForbidden:
        have = {}
    if have and not _same_role(have, want):
        bound = have.get("bound_service_account_namespaces") or have.get("bound_subject")
        if bound and sv.namespace not in str(bound):
            # spec.vault.role names a role bound to another identity: never take it over.
            raise VaultPathRefused(f"Vault role {sv.role} exists and is bound to another identity; choose "
                                   "another spec.vault.role or leave it empty")
    if not have or not _same_role(have, want):
        try:
            vault.call(lambda cl: cl.adapter.post(f"/v1/{rpath}", json=want), rpath)
            res.created.append(f"role {fs.mount}/{sv.role}")
        except VaultForbidden:
            res.missing.append(f"auth role {fs.mount}/{sv.role}" + (" (the hub may not even read it to check)"
                                                                     if have == {} else ""))
    try:
        marker = {"site": sv.site, "policy": sv.policy, "role": sv.role}
        current_marker = None
        try:
            current_marker = vault.read(sv.path("enrollment"), mount=sv.kv_mount, fresh=True)
        except VaultNotFound:
            pass
        if current_marker != marker:
            vault.write(sv.path("enrollment"), marker, mount=sv.kv_mount)
    except VaultForbidden:
        res.missing.append(f"write access to {sv.kv_mount}/data/{sv.prefix}/*")
    return res


def _ensure_policy(vault: VaultClient, name: str, hcl: str, res: FootprintResult) -> None:
    ppath = f"sys/policies/acl/{name}"
    try:
        current = vault.call(lambda cl: cl.sys.read_acl_policy(name), ppath)["data"]["policy"]
    except VaultNotFound:
        current = None
    except VaultForbidden:
        current = ""          # cannot read: try writing, else report it
    if current != hcl:
        try:
            vault.call(lambda cl: cl.sys.create_or_update_acl_policy(name, hcl), ppath)
            res.created.append(f"policy {name}")
        except VaultForbidden:
            res.missing.append(f"policy {name}" + (" (the hub may not even read it to check)"
                                                   if current == "" else ""))


def missing_message(sv: SiteVault, fs: FootprintSettings, res: FootprintResult) -> str:
    role = role_body(sv, fs)
    args = " ".join(f"{k}={','.join(x) if isinstance(x, list) else x}" for k, x in role.items())
    return (f"the hub's Vault identity may not create {', '.join(res.missing)}. An administrator must either "
            f"grant the hub the fedcare hub policy (docs/architecture.md) or apply, as policy {sv.policy}:\n"
            f"{policy_hcl(sv)}as policy {sv.training_policy}:\n{training_policy_hcl(sv)}"
            f"and create the role: bao write auth/{fs.mount}/role/{sv.role} {args}")


def _revoke_role_tokens(vault: VaultClient, sv: SiteVault, fs: FootprintSettings) -> int:
    """Revoke every token issued through the site's role. Needs list+sudo on auth/token/accessors;
    without it, outstanding tokens die within the role's token_max_ttl (logged)."""
    try:
        accessors = vault.call(lambda cl: cl.auth.token.list_accessors(), "auth/token/accessors")["data"]["keys"]
    except (VaultForbidden, VaultNotFound) as err:
        log.warning("Cannot list Vault token accessors (%s): tokens of role %s expire within %s instead of "
                    "being revoked now", err.reason, sv.role, fs.token_max_ttl)
        return 0
    revoked = 0
    for acc in accessors:
        try:
            info = vault.call(lambda cl: cl.auth.token.lookup_accessor(acc), "auth/token/lookup-accessor")["data"]
        except VaultError:
            continue                         # expired meanwhile, or not ours to see
        meta = info.get("meta") or {}
        if meta.get("role") == sv.role and str(info.get("path", "")).startswith(f"auth/{fs.mount}/login"):
            vault.call(lambda cl: cl.auth.token.revoke_accessor(acc), "auth/token/revoke-accessor")
            revoked += 1
    return revoked


def remove(vault: VaultClient, sv: SiteVault, fs: FootprintSettings) -> dict[str, Any]:
    """Undo :func:`ensure`, touching nothing fedcare did not create. Returns what was done."""
    done: dict[str, Any] = {"revoked_tokens": 0, "deleted": [], "kept": []}
    done["revoked_tokens"] = _revoke_role_tokens(vault, sv, fs)
    rpath = f"auth/{fs.mount}/role/{sv.role}"
    try:
        have = vault.call(lambda cl: cl.adapter.get(f"/v1/{rpath}"), rpath)["data"]
        if _same_role(have, role_body(sv, fs)):
            vault.call(lambda cl: cl.adapter.delete(f"/v1/{rpath}"), rpath)
            done["deleted"].append(f"role {fs.mount}/{sv.role}")
        else:
            done["kept"].append(f"role {fs.mount}/{sv.role} (not fedcare's binding)")
    except VaultNotFound:
        pass
    for name in (sv.policy, sv.training_policy):
        ppath = f"sys/policies/acl/{name}"
        try:
            text = vault.call(lambda cl: cl.sys.read_acl_policy(name), ppath)["data"]["policy"]
            if text.startswith(POLICY_MARKER):
                vault.call(lambda cl: cl.sys.delete_acl_policy(name), ppath)
                done["deleted"].append(f"policy {name}")
            else:
                done["kept"].append(f"policy {name} (not written by fedcare)")
        except VaultNotFound:
            pass
    for key in _walk(vault, sv.kv_mount, sv.prefix):
        meta = vault.metadata(key, mount=sv.kv_mount) or {}
        if (meta.get("custom_metadata") or {}).get("managed-by") == v.MANAGED_BY:
            vault.destroy(key, mount=sv.kv_mount)
            done["deleted"].append(f"secret {sv.kv_mount}/{key}")
        else:
            done["kept"].append(f"secret {sv.kv_mount}/{key} (not created by fedcare)")
    return done


def _walk(vault: VaultClient, mount: str, prefix: str) -> list[str]:
    out: list[str] = []
    for name in vault.list(prefix, mount=mount):
        if name.endswith("/"):
            out.extend(_walk(vault, mount, f"{prefix}/{name.rstrip('/')}"))
        else:
            out.append(f"{prefix}/{name}")
    return out


# -- the hub's hooks (async) ---------------------------------------------------------------------

def condition(status: bool, reason: c.Reason, message: str, generation: int | None) -> Condition:
    return c.make(c.ConditionType.CREDENTIALS_READY, status, reason, message, generation=generation)


async def reconcile_site(vault: VaultClient | None, fs: FootprintSettings, body: dict[str, Any],
                         logger: logging.Logger) -> Condition:
    """Ensure the site's footprint and return its CredentialsReady condition. Raises VaultError
    (after computing the condition) when the caller should retry later; the condition is
    attached to the exception as ``condition``."""
    generation = body["metadata"].get("generation")
    if vault is None:
        return condition(True, c.Reason.VAULT_DISABLED, "secrets.backend is kubernetes: no Vault footprint; "
                         "credentials are plain Kubernetes Secrets (development only)", generation)
    try:
        sv = site_vault(body, vault.settings.kv_mount)
        res = await asyncio.to_thread(ensure, vault, sv, fs)
    except VaultPathRefused as err:
        return condition(False, c.Reason.VAULT_PATH_REFUSED, str(err), generation)
    except VaultError as err:
        reason = c.Reason.VAULT_SEALED if isinstance(err, v.VaultSealed) else c.Reason.VAULT_UNAVAILABLE
        err.condition = condition(False, reason, f"Vault footprint not checked: {err}", generation)  # type: ignore[attr-defined]
        raise
    for what in res.created:
        logger.info("Created Vault %s for site %s", what, sv.site)
    if not res.ok:
        err = VaultForbidden("the hub may not create the site's Vault policy or role")
        err.condition = condition(False, c.Reason.VAULT_POLICY_MISSING,  # type: ignore[attr-defined]
                                  missing_message(sv, fs, res), generation)
        raise err
    return condition(True, c.Reason.CREDENTIALS_PROVISIONED,
                     f"Vault path {sv.kv_mount}/{sv.prefix}, policy {sv.policy} and role {fs.mount}/{sv.role} "
                     "exist", generation)


async def remove_site(vault: VaultClient | None, fs: FootprintSettings, body: dict[str, Any],
                      logger: logging.Logger) -> None:
    if vault is None:
        return
    try:
        sv = site_vault(body, vault.settings.kv_mount)
    except VaultPathRefused:
        return                      # never created: the path was refused at enrollment
    done = await asyncio.to_thread(remove, vault, sv, fs)
    logger.info("Removed the Vault footprint of site %s: revoked %d token(s); deleted %s; kept %s", sv.site,
                done["revoked_tokens"], ", ".join(done["deleted"]) or "nothing",
                ", ".join(done["kept"]) or "nothing")


async def enroll(ctx: Any, body: dict[str, Any], logger: logging.Logger) -> None:
    """The HospitalNode handler's hook (after Kubernetes enrollment): ensure the footprint and
    write CredentialsReady. A VaultError is re-raised after the condition is written, so the
    handler retries with backoff and recovers on its own when Vault does."""
    from .hospital_node_service import offers_gpus, write_hub_status

    md = body["metadata"]
    try:
        cond = await reconcile_site(ctx.vault, ctx.vault_footprint, body, logger)
        failure: VaultError | None = None
    except VaultError as err:
        cond, failure = getattr(err, "condition", None), err
        if cond is None:
            raise
    settings = getattr(ctx, "hub_credential", None)
    if failure is None and settings is not None and ctx.vault is not None and cond.status.value == "True":
        from .hub_credential import rotate

        sv = site_vault(body, ctx.vault.settings.kv_mount)
        try:
            await rotate(ctx.api, ctx.vault, sv.site, settings, prefix=sv.prefix, kv_mount=sv.kv_mount)
        except VaultError as err:
            cond = condition(False, c.Reason.VAULT_UNAVAILABLE, f"hub credential not stored: {err}",
                             md.get("generation"))
            failure = err
    await write_hub_status(ctx.api, md["name"], [cond], generation=md.get("generation"),
                           cordoned=bool((body.get("spec") or {}).get("cordoned")), offers_gpus=offers_gpus(body),
                           spec_checked=True)
    if failure is not None:
        raise failure


async def rotate_credential(ctx: Any, body: dict[str, Any], logger: logging.Logger) -> None:
    """Timer hook: re-mint the site's hub token when it is due (cheap when not: one Vault read)."""
    from .hub_credential import rotate

    if ctx.vault is None or ctx.hub_credential is None or (body.get("metadata") or {}).get("deletionTimestamp"):
        return
    try:
        sv = site_vault(body, ctx.vault.settings.kv_mount)
    except VaultPathRefused:
        return
    await rotate(ctx.api, ctx.vault, sv.site, ctx.hub_credential, prefix=sv.prefix, kv_mount=sv.kv_mount)
