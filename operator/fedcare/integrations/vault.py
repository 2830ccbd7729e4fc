"""Vault (or OpenBao), as fedcare uses it: one client per process, built on hvac.

hvac does the HTTP, the auth methods and the engines' request shapes; this module adds
what every call of ours needs and hvac does not do:

- **Auth that lasts**: Kubernetes auth (the process's ServiceAccount token and a role from
  the Helm values), JWT auth (the same ServiceAccount token checked against the issuer's
  keys instead of TokenReview) and token auth for development. The token is renewed when
  a third of its TTL is left and re-acquired by a fresh login when renewal fails; a call
  that meets a 403 because the token died under it logs in again and is retried once.
- **A timeout on every call** and a **bounded, jittered retry** on transient failures
  (connection errors, timeouts, 429, 5xx, sealed/standby 503).
- **Typed errors** (:class:`VaultError` and subclasses) whose messages name the path and
  what to do, never a token or a secret value (hvac's own exception texts can quote the
  server's answer; they are never passed on).
- **Reads cached with their lease/TTL** so a round costs at most one read per secret.
- **A path guard**: a path with ``..``/``.``/empty segments, or under another site's
  ``sites/<name>/``, is refused before any call is made.

hvac is synchronous (requests); async callers use ``await asyncio.to_thread(...)``.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import random
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import hvac
import hvac.exceptions as hx
import requests

log = logging.getLogger(__name__)

T = TypeVar("T")

SA_TOKEN_PATH = "/var/run/secrets/kubernetes.io/serviceaccount/token"
#: Marker written into every KV secret's custom metadata and every policy fedcare creates, so
#: that deletion removes only what fedcare made.
MANAGED_BY = "fedcare"


# -- errors ------------------------------------------------------------------------------------

class VaultError(Exception):
    """A Vault call failed. ``reason`` is a CamelCase word for conditions; the message names the
    path and the remedy and never contains a token or secret value."""

    reason = "VaultError"

    def __init__(self, message: str, *, path: str = "", status: int = 0):
        self.path, self.status = path, status
        super().__init__(message + (f" (path {path})" if path else ""))


class VaultUnavailable(VaultError):
    """Unreachable, timed out, or answering 5xx after every retry."""
    reason = "VaultUnavailable"


class VaultSealed(VaultUnavailable):
    reason = "VaultSealed"


class VaultForbidden(VaultError):
    reason = "VaultForbidden"


class VaultNotFound(VaultError):
    reason = "VaultNotFound"


class VaultAuthError(VaultError):
    """Login or renewal failed and no fresh login was possible."""
    reason = "VaultAuthFailed"


class VaultPathRefused(VaultError, ValueError):
    """A path the caller may never use (``..``, another site's name): refused before any call."""
    reason = "VaultPathRefused"


class VaultInvalidRequest(VaultError):
    reason = "VaultInvalidRequest"


# -- settings ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 4
    base_delay: float = 0.1
    max_delay: float = 2.0
    timeout: float = 5.0          # seconds, per HTTP request

    def delay(self, attempt: int) -> float:
        """Full-range jitter in [50 %, 100 %] of an exponential step, capped."""
        return min(self.max_delay, self.base_delay * 2 ** attempt) * random.uniform(0.5, 1.0)


@dataclass(frozen=True)
class VaultSettings:
    """Where Vault is and how this process logs in. ``from_env`` reads the Helm-rendered env."""

    addr: str
    auth_method: str = "kubernetes"          # kubernetes | jwt | token
    role: str = ""                           # kubernetes/jwt role
    auth_mount: str = ""                     # default: the method's name
    token: str = dataclasses.field(default="", repr=False)  # token auth (development)
    jwt_path: str = SA_TOKEN_PATH            # the ServiceAccount token to log in with
    kv_mount: str = "fedcare"
    transit_mount: str = "transit"
    pki_mount: str = "pki"
    ca_cert: str = ""                        # PEM bundle path for Vault's TLS; "" = system store
    namespace: str = ""                      # Vault Enterprise namespace (OpenBao: unused)
    cache_ttl: float = 60.0                  # default cache lifetime of a KV read without a lease
    renew_fraction: float = 1 / 3            # renew when this fraction of the TTL is left
    retry: RetryPolicy = field(default_factory=RetryPolicy)

    def __post_init__(self) -> None:
        if self.auth_method not in ("kubernetes", "jwt", "token"):
            raise ValueError(f"vault auth method {self.auth_method!r}: expected kubernetes, jwt or token")
        if self.auth_method in ("kubernetes", "jwt") and not self.role:
            raise ValueError(f"vault auth method {self.auth_method} needs a role (FEDCARE_VAULT_ROLE / "
                             "vault.authRole in the Helm values)")

    @property
    def mount(self) -> str:
        return self.auth_mount or self.auth_method

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> "VaultSettings":
        e = os.environ if env is None else env
        addr = e.get("FEDCARE_VAULT_ADDR") or e.get("VAULT_ADDR") or ""
        if not addr:
            raise ValueError("no Vault address: set FEDCARE_VAULT_ADDR (vault.address in the Helm values)")
        return cls(addr=addr, auth_method=e.get("FEDCARE_VAULT_AUTH_METHOD", "kubernetes"),
                   role=e.get("FEDCARE_VAULT_ROLE", ""), auth_mount=e.get("FEDCARE_VAULT_AUTH_MOUNT", ""),
                   token=e.get("FEDCARE_VAULT_TOKEN") or e.get("VAULT_TOKEN", ""),
                   jwt_path=e.get("FEDCARE_VAULT_JWT_PATH", SA_TOKEN_PATH),
                   kv_mount=e.get("FEDCARE_VAULT_KV_MOUNT", "fedcare"),
                   transit_mount=e.get("FEDCARE_VAULT_TRANSIT_MOUNT", "transit"),
                   pki_mount=e.get("FEDCARE_VAULT_PKI_MOUNT", "pki"),
                   ca_cert=e.get("FEDCARE_VAULT_CACERT", ""),
                   namespace=e.get("FEDCARE_VAULT_NAMESPACE", ""))


# -- the path guard ----------------------------------------------------------------------------

_SEGMENT = re.compile(r"^[A-Za-z0-9_.@=+-]+$")


def check_path(path: str, *, site: str | None = None) -> str:
    """The path, normalised, or :class:`VaultPathRefused`.

    Refused: empty, ``.``/``..``/empty segments, characters outside ``[A-Za-z0-9_.@=+-]`` per
    segment, and — for a client scoped to ``site`` — any path under ``sites/<other>``.
    Runs before any request, so a refused path never reaches the server.
    """
    stripped = path.strip("/")
    if not stripped:
        raise VaultPathRefused("empty Vault path")
    parts = stripped.split("/")
    for part in parts:
        if part in ("", ".", ".."):
            raise VaultPathRefused(f"Vault path segment {part!r} is not allowed (no '..', '.' or '//')")
        if not _SEGMENT.match(part):
            raise VaultPathRefused("Vault path segments may contain only letters, digits and _.@=+-")
    if site is not None:
        for i, part in enumerate(parts[:-1]):
            if part == "sites" and parts[i + 1] != site:
                raise VaultPathRefused(f"site {site!r} may not use another site's Vault path")
    return stripped


# -- the client --------------------------------------------------------------------------------

@dataclass
class _Cached:
    value: Any
    expires: float


def _status(err: hx.VaultError) -> int:
    code = getattr(err, "status_code", None)
    if isinstance(code, int):
        return code
    return {hx.InvalidRequest: 400, hx.Unauthorized: 401, hx.Forbidden: 403, hx.InvalidPath: 404,
            hx.RateLimitExceeded: 429, hx.InternalServerError: 500, hx.VaultNotInitialized: 501,
            hx.VaultDown: 503, hx.BadGateway: 502}.get(type(err), 0)


class VaultClient:
    """One per process (:func:`get_client`). Thread-safe; every public method is synchronous."""

    def __init__(self, settings: VaultSettings, *, site: str | None = None,
                 clock: Callable[[], float] = time.monotonic):
        self.settings = settings
        self.site = site                 # a site agent's client may not touch another site's path
        self._clock = clock
        self._lock = threading.RLock()
        self._cache: dict[tuple[str, str], _Cached] = {}
        self._token_expires: float | None = None   # monotonic; None: no expiry (root/dev token)
        self._token_ttl = 0.0
        self._renewable = False
        self.stats = {"requests": 0, "reads": 0, "cache_hits": 0, "logins": 0, "renewals": 0, "retries": 0}
        verify: bool | str = settings.ca_cert or True
        self.hvac = hvac.Client(url=settings.addr, timeout=settings.retry.timeout, verify=verify,
                                namespace=settings.namespace or None)
        self._logged_in = False

    # -- auth ---------------------------------------------------------------------------------
    def _read_jwt(self) -> str:
        try:
            with open(self.settings.jwt_path, encoding="utf-8") as fh:
                return fh.read().strip()
        except OSError as err:
            raise VaultAuthError(f"cannot read the ServiceAccount token file {self.settings.jwt_path}: "
                                 f"{err.strerror}; mount a projected token there or set "
                                 "FEDCARE_VAULT_JWT_PATH") from None

    def _set_expiry(self, ttl: float, renewable: bool) -> None:
        self._token_ttl = float(ttl)
        self._renewable = renewable
        self._token_expires = self._clock() + ttl if ttl > 0 else None

    def login(self) -> None:
        """Log in (or, for token auth, check the token) and record its TTL."""
        s = self.settings
        with self._lock:
            if s.auth_method == "token":
                if not s.token:
                    raise VaultAuthError("token auth without a token: set FEDCARE_VAULT_TOKEN")
                self.hvac.token = s.token
                data = self._raw(lambda: self.hvac.auth.token.lookup_self(), "auth/token/lookup-self",
                                 authed=False)["data"]
                self._set_expiry(data.get("ttl") or 0, bool(data.get("renewable")))
            else:
                jwt = self._read_jwt()
                if s.auth_method == "kubernetes":
                    call = lambda: self.hvac.auth.kubernetes.login(s.role, jwt, use_token=True,  # noqa: E731
                                                                   mount_point=s.mount)
                else:
                    call = lambda: self.hvac.auth.jwt.jwt_login(s.role, jwt, use_token=True,  # noqa: E731
                                                                path=s.mount)
                auth = self._raw(call, f"auth/{s.mount}/login", authed=False)["auth"]
                self._set_expiry(auth.get("lease_duration") or 0, bool(auth.get("renewable")))
            self.stats["logins"] += 1
            self._logged_in = True
            log.debug("Vault login ok (method %s, ttl %ss)", s.auth_method, int(self._token_ttl))

    def _ensure_token(self) -> None:
        with self._lock:
            if not self._logged_in:
                self.login()
                return
            if self._token_expires is None:
                return
            left = self._token_expires - self._clock()
            if left > self._token_ttl * self.settings.renew_fraction:
                return
            if self._renewable and left > 0:
                try:
                    auth = self._raw(lambda: self.hvac.auth.token.renew_self(), "auth/token/renew-self")["auth"]
                    granted = auth.get("lease_duration") or 0
                    # Vault caps renewals at the token's max TTL: a grant shorter than asked for
                    # means the end is near, so log in afresh before it runs out.
                    if granted >= self._token_ttl * self.settings.renew_fraction:
                        self._set_expiry(granted, bool(auth.get("renewable")))
                        self.stats["renewals"] += 1
                        log.debug("Vault token renewed (ttl %ss)", int(granted))
                        return
                except VaultError as err:
                    log.info("Vault token renewal failed (%s); logging in again", err.reason)
            if self.settings.auth_method == "token":
                if left <= 0:
                    raise VaultAuthError("the development Vault token expired and token auth cannot log in "
                                         "again: issue a new token or use kubernetes/jwt auth")
                return
            self.login()

    # -- calls --------------------------------------------------------------------------------
    def _raw(self, fn: Callable[[], T], path: str, *, authed: bool = True) -> T:
        """One logical call: timeout (hvac's session), bounded jittered retry, typed error."""
        policy = self.settings.retry
        relogged = False
        attempt = 0
        while True:
            self.stats["requests"] += 1
            try:
                return fn()
            except (requests.ConnectionError, requests.Timeout) as err:
                kind = "timed out" if isinstance(err, requests.Timeout) else "unreachable"
                failure: VaultError = VaultUnavailable(
                    f"Vault at {self.settings.addr} {kind} after {attempt + 1} attempt(s); check the address "
                    "(vault.address) and that the server is running", path=path)
            except hx.VaultDown as err:
                sealed = "sealed" in " ".join(map(str, getattr(err, "errors", None) or [str(err)])).lower()
                failure = (VaultSealed("Vault is sealed: an operator must unseal it", path=path, status=503)
                           if sealed else VaultUnavailable("Vault answered 503 (standby or down)", path=path,
                                                           status=503))
            except (hx.InternalServerError, hx.BadGateway, hx.RateLimitExceeded, hx.UnexpectedError) as err:
                code = _status(err)
                failure = VaultUnavailable(f"Vault answered {code or 'an unexpected error'} after "
                                           f"{attempt + 1} attempt(s)", path=path, status=code)
                if code and code < 500 and code != 429:
                    raise VaultError(f"Vault answered {code}", path=path, status=code) from None
            except hx.Forbidden:
                if authed and not relogged and not self._token_alive():
                    # The token died under us (expired, revoked): one fresh login, then once more.
                    relogged = True
                    if self.settings.auth_method == "token":
                        raise VaultAuthError("the development Vault token is no longer valid and token auth "
                                             "cannot log in again: issue a new token", path=path,
                                             status=403) from None
                    log.info("Vault token no longer valid at %s; logging in again", path)
                    self.login()
                    continue
                raise VaultForbidden("permission denied: this identity's Vault policy does not allow it",
                                     path=path, status=403) from None
            except hx.InvalidPath:
                raise VaultNotFound("not found in Vault", path=path, status=404) from None
            except hx.Unauthorized:
                raise VaultAuthError("Vault refused the credentials (401)", path=path, status=401) from None
            except hx.InvalidRequest as err:
                # The server's reason (never a secret: requests carry no secret in their path, and
                # Vault's messages name fields) is useful; keep it short.
                detail = "; ".join(str(e) for e in (getattr(err, "errors", None) or []))[:200]
                raise VaultInvalidRequest(f"Vault rejected the request (400): {detail}", path=path,
                                          status=400) from None
            except hx.VaultError as err:
                code = _status(err)
                raise VaultError(f"Vault answered {code or 'an error'}", path=path, status=code) from None
            if attempt + 1 >= policy.attempts:
                raise failure from None
            delay = policy.delay(attempt)
            self.stats["retries"] += 1
            log.debug("Vault %s: %s; retrying in %.2fs", path, failure.reason, delay)
            time.sleep(delay)
            attempt += 1

    def _token_alive(self) -> bool:
        """True if the current token still works (a 403 then means the policy refuses)."""
        try:
            self.stats["requests"] += 1
            self.hvac.auth.token.lookup_self()
            return True
        except hx.Forbidden:
            return False
        except (hx.VaultError, requests.RequestException):
            return True     # cannot tell: report the 403 as it is

    def call(self, fn: Callable[[hvac.Client], T], path: str) -> T:
        """Run ``fn(hvac_client)`` with a valid token, retries and typed errors. ``path`` (checked
        by the guard) is what error messages name."""
        check_path(path, site=self.site)
        self._ensure_token()
        return self._raw(lambda: fn(self.hvac), path)

    # -- KV v2 --------------------------------------------------------------------------------
    def kv_path(self, path: str) -> str:
        return check_path(path, site=self.site)

    def read(self, path: str, *, mount: str | None = None, fresh: bool = False) -> dict[str, Any]:
        """The latest version of a KV v2 secret's data, from cache while its TTL lasts.

        The cache lifetime is the response's ``lease_duration`` when it has one, else the
        secret's own ``ttl`` custom metadata (seconds), else ``settings.cache_ttl``.
        """
        mount = mount or self.settings.kv_mount
        path = check_path(path, site=self.site)
        key = (mount, path)
        with self._lock:
            hit = self._cache.get(key)
            if hit is not None and not fresh and hit.expires > self._clock():
                self.stats["cache_hits"] += 1
                return hit.value
        resp = self.call(lambda c: c.secrets.kv.v2.read_secret_version(path, mount_point=mount,
                                                                      raise_on_deleted_version=True),
                         f"{mount}/data/{path}")
        self.stats["reads"] += 1
        data = resp["data"]["data"] or {}
        meta = (resp["data"].get("metadata") or {}).get("custom_metadata") or {}
        ttl = float(resp.get("lease_duration") or 0)
        if not ttl:
            try:
                ttl = float(meta.get("ttl", self.settings.cache_ttl))
            except ValueError:
                ttl = self.settings.cache_ttl
        with self._lock:
            self._cache[key] = _Cached(data, self._clock() + ttl)
        return data

    def write(self, path: str, data: dict[str, Any], *, mount: str | None = None,
              ttl: float | None = None) -> int:
        """Write a KV v2 secret marked as fedcare's; returns the new version."""
        mount = mount or self.settings.kv_mount
        path = check_path(path, site=self.site)
        resp = self.call(lambda c: c.secrets.kv.v2.create_or_update_secret(path, secret=data, mount_point=mount),
                         f"{mount}/data/{path}")
        custom = {"managed-by": MANAGED_BY, **({"ttl": str(int(ttl))} if ttl else {})}
        self.call(lambda c: c.secrets.kv.v2.update_metadata(path, custom_metadata=custom, mount_point=mount),
                  f"{mount}/metadata/{path}")
        with self._lock:
            self._cache.pop((mount, path), None)
        return int(resp["data"]["version"])

    def metadata(self, path: str, *, mount: str | None = None) -> dict[str, Any] | None:
        mount = mount or self.settings.kv_mount
        path = check_path(path, site=self.site)
        try:
            return self.call(lambda c: c.secrets.kv.v2.read_secret_metadata(path, mount_point=mount),
                             f"{mount}/metadata/{path}")["data"]
        except VaultNotFound:
            return None

    def list(self, path: str, *, mount: str | None = None) -> list[str]:
        mount = mount or self.settings.kv_mount
        path = check_path(path, site=self.site)
        try:
            return list(self.call(lambda c: c.secrets.kv.v2.list_secrets(path, mount_point=mount),
                                  f"{mount}/metadata/{path}")["data"]["keys"])
        except VaultNotFound:
            return []

    def destroy(self, path: str, *, mount: str | None = None) -> None:
        """Delete a secret with every version and its metadata."""
        mount = mount or self.settings.kv_mount
        path = check_path(path, site=self.site)
        self.call(lambda c: c.secrets.kv.v2.delete_metadata_and_all_versions(path, mount_point=mount),
                  f"{mount}/metadata/{path}")
        with self._lock:
            self._cache.pop((mount, path), None)

    def invalidate(self, path: str | None = None) -> None:
        with self._lock:
            if path is None:
                self._cache.clear()
            else:
                self._cache = {k: v for k, v in self._cache.items() if k[1] != path.strip("/")}

    def healthy(self) -> bool:
        try:
            return bool(self._raw(lambda: self.hvac.sys.read_health_status(method="GET"), "sys/health",
                                  authed=False))
        except VaultError:
            return False


# -- one client per process --------------------------------------------------------------------

_client: VaultClient | None = None
_client_lock = threading.Lock()


def get_client(settings: VaultSettings | None = None, *, site: str | None = None) -> VaultClient:
    """The process's Vault client, built on first use from ``settings`` (or the environment)."""
    global _client
    with _client_lock:
        if _client is None:
            _client = VaultClient(settings or VaultSettings.from_env(), site=site)
        elif settings is not None and (settings != _client.settings or site != _client.site):
            raise RuntimeError("get_client: this process already has a Vault client with other settings")
        return _client


def reset_client() -> None:
    """Forget the process's client (tests; a process that changes its identity)."""
    global _client
    with _client_lock:
        _client = None
