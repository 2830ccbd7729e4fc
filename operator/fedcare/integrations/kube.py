"""The Kubernetes API, as fedcare's controllers use it: dicts in, dicts out.

kubernetes_asyncio does the hard parts (kubeconfig and in-cluster config, TLS, bearer
tokens); this module adds what every call of ours needs: a timeout, a bounded retry with
backoff on transient failures (429, 5xx, connection errors), typed errors, and paths built
from ``apiVersion``/plural so one code path serves core, RBAC, Leases and our own kinds.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import yarl
from kubernetes_asyncio import client as k8s
from kubernetes_asyncio import config as k8s_config
from kubernetes_asyncio.client.exceptions import ApiException

from .. import metrics

log = logging.getLogger(__name__)


class _NoResponseBodies(logging.Filter):
    """kubernetes_asyncio logs every response body at DEBUG: a Secret's data (TLS and SuperNode
    keys) would reach the logs. Dropped here, for every process that imports this module."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("response body")


logging.getLogger("kubernetes_asyncio.client.rest").addFilter(_NoResponseBodies())

TRANSIENT = {429, 500, 502, 503, 504}
MERGE = "application/merge-patch+json"


class KubeError(Exception):
    """An API call failed. ``status`` is the HTTP code (0 for a connection failure)."""

    def __init__(self, status: int, reason: str, message: str, *, path: str = ""):
        self.status, self.reason, self.path = status, reason, path
        super().__init__(f"{status} {reason}: {message}" + (f" ({path})" if path else ""))


class NotFound(KubeError):
    pass


class Conflict(KubeError):
    pass


class Forbidden(KubeError):
    pass


@dataclass(frozen=True)
class Ref:
    """Where an object lives: ``Ref('v1', 'namespaces', None, 'x')``."""

    api_version: str
    plural: str
    namespace: str | None = None
    name: str | None = None

    @property
    def path(self) -> str:
        base = f"/api/{self.api_version}" if "/" not in self.api_version else f"/apis/{self.api_version}"
        if self.namespace:
            base += f"/namespaces/{self.namespace}"
        base += f"/{self.plural}"
        return base + (f"/{self.name}" if self.name else "")


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 4
    base_delay: float = 0.2
    max_delay: float = 3.0
    timeout: float = 10.0

    def delay(self, attempt: int) -> float:
        return min(self.max_delay, self.base_delay * 2 ** attempt) * random.uniform(0.5, 1.0)


def _error(status: int, body: str, path: str) -> KubeError:
    reason, message = "Error", body[:300]
    try:
        doc = json.loads(body)
        reason, message = doc.get("reason") or reason, doc.get("message") or message
    except (ValueError, AttributeError):
        pass
    cls = {404: NotFound, 409: Conflict, 403: Forbidden}.get(status, KubeError)
    return cls(status, reason, message, path=path)


def _env_read_once(api_client: k8s.ApiClient) -> k8s.ApiClient:
    """kubernetes_asyncio opens its aiohttp session with ``trust_env=True``: every request then
    looks up ``~/.netrc`` and the proxy variables, each in a worker thread. That was half the CPU
    of a call to the sandbox's API server (2.5 -> 1.3 ms per GET, 300 sequential GETs) and a
    thread hop per request under a round's burst. Here the proxy variables are read once, for
    the API server's own URL (``HTTPS_PROXY``/``NO_PROXY`` keep working; aiohttp reads
    ``~/.netrc`` then, once, for a proxy's credentials), so variables changed after the client
    is built are not seen. Replacing the session is the only way in: the client has no setting
    for it (``detach`` hands its connector over, open). ``aiohttp.helpers.get_env_proxy_for_url``
    is aiohttp's own lookup (what ``trust_env`` calls per request); the session keeps the
    arguments kubernetes_asyncio 36 gives its own (connector, ``read_bufsize``)."""
    rest = api_client.rest_client
    old = rest.pool_manager
    if not getattr(old, "trust_env", False):
        return api_client
    connector = old.connector
    old.detach()
    rest.pool_manager = aiohttp.ClientSession(connector=connector, trust_env=False, read_bufsize=2**21)
    if not rest.proxy:
        try:
            proxy, auth = aiohttp.helpers.get_env_proxy_for_url(yarl.URL(api_client.configuration.host))
        except LookupError:     # no proxy variable for this URL, or NO_PROXY names it
            return api_client
        if auth is not None:    # back into the URL: aiohttp sends it as Proxy-Authorization from there
            # (as the env variable had it; aiohttp's proxy errors then print that URL: this module
            # keeps only an error's type name, never its text)
            proxy = proxy.with_user(auth.login).with_password(auth.password)
        rest.proxy = str(proxy)
    return api_client


class Kube:
    """A small async client. Build with ``await Kube.from_kubeconfig(path)`` or ``Kube.from_url(url)``."""

    def __init__(self, api_client: k8s.ApiClient, policy: RetryPolicy | None = None):
        self.api = _env_read_once(api_client)
        self.policy = policy or RetryPolicy()

    @classmethod
    async def from_kubeconfig(cls, path: str | None = None, *, context: str | None = None,
                              policy: RetryPolicy | None = None) -> "Kube":
        cfg = k8s.Configuration()
        if path is None:
            try:
                k8s_config.load_incluster_config(client_configuration=cfg)
            except k8s_config.ConfigException:
                await k8s_config.load_kube_config(client_configuration=cfg, context=context)
        else:
            await k8s_config.load_kube_config(config_file=path, client_configuration=cfg, context=context)
        return cls(k8s.ApiClient(cfg), policy)

    @classmethod
    def from_url(cls, url: str, *, token: str = "", policy: RetryPolicy | None = None) -> "Kube":
        cfg = k8s.Configuration(host=url.rstrip("/"))
        cfg.verify_ssl = False
        if token:   # kubernetes_asyncio sends api_key["BearerToken"] with its prefix, nothing else
            cfg.api_key = {"BearerToken": token}
            cfg.api_key_prefix = {"BearerToken": "Bearer"}
        return cls(k8s.ApiClient(cfg), policy)

    def with_policy(self, policy: RetryPolicy) -> "Kube":
        """The same connection with another timeout/retry policy (a heartbeat wants fail-fast)."""
        return Kube(self.api, policy)

    async def close(self) -> None:
        await self.api.close()

    async def request(self, method: str, path: str, *, body: Any = None, query: dict[str, str] | None = None,
                      content_type: str = "application/json") -> dict[str, Any]:
        resource = metrics.resource_of(path)
        started = time.perf_counter()
        try:
            return await self._request(method, path, resource, body=body, query=query, content_type=content_type)
        finally:
            metrics.KUBE_REQUEST_DURATION.labels(method).observe(time.perf_counter() - started)

    async def _request(self, method: str, path: str, resource: str, *, body: Any, query: dict[str, str] | None,
                       content_type: str) -> dict[str, Any]:
        headers = {"Accept": "application/json", "Content-Type": content_type}
        for attempt in range(self.policy.attempts):
            try:
                result = await self.api.call_api(
                    path, method, query_params=list((query or {}).items()), header_params=dict(headers),
                    body=body, response_types_map={200: "object", 201: "object", 202: "object"},
                    auth_settings=["BearerToken"], _return_http_data_only=True,
                    _request_timeout=self.policy.timeout) or {}
                metrics.KUBE_REQUESTS.labels(method, resource, "2xx").inc()   # success (the client hides which 2xx)
                return result
            except ApiException as exc:
                metrics.KUBE_REQUESTS.labels(method, resource, str(exc.status or 0)).inc()
                err = _error(exc.status or 0, exc.body.decode() if isinstance(exc.body, bytes) else
                             str(exc.body or exc.reason), path)
                if exc.status not in TRANSIENT:
                    raise err from None
            except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
                metrics.KUBE_REQUESTS.labels(method, resource, "0").inc()
                err = KubeError(0, type(exc).__name__, "the API server could not be reached", path=path)
            if attempt + 1 < self.policy.attempts:
                metrics.KUBE_RETRIES.labels(method, resource).inc()
                delay = self.policy.delay(attempt)
                log.debug("Retrying %s %s in %.2fs after %s", method, path, delay, err)
                await asyncio.sleep(delay)
        raise err

    async def watch(self, ref: Ref, *, label_selector: str = "", resource_version: str = "",
                    timeout_seconds: int = 300, field_selector: str = "") -> AsyncIterator[tuple[str, dict[str, Any]]]:
        """Yield ``(type, object)`` from one watch stream until the server ends it.

        One connection, no retry: the caller re-lists and re-watches (it must, after a 410).
        The server closes the stream after ``timeout_seconds``; a silent connection is cut
        after that plus a margin, so a dead server cannot hang us.
        """
        query = [("watch", "true"), ("allowWatchBookmarks", "true"), ("timeoutSeconds", str(timeout_seconds))]
        if label_selector:
            query.append(("labelSelector", label_selector))
        if field_selector:
            query.append(("fieldSelector", field_selector))
        if resource_version:
            query.append(("resourceVersion", resource_version))
        try:
            resp = await self.api.call_api(
                ref.path, "GET", query_params=query, header_params={"Accept": "application/json"},
                auth_settings=["BearerToken"], _preload_content=False,
                _request_timeout=aiohttp.ClientTimeout(total=None, sock_connect=self.policy.timeout,
                                                       sock_read=timeout_seconds + 30))
        except ApiException as exc:
            raise _error(exc.status or 0, str(exc.body or exc.reason), ref.path) from None
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
            raise KubeError(0, type(exc).__name__, "the API server could not be reached", path=ref.path) from None
        if not 200 <= resp.status <= 299:   # unread content skips the client's status check: an error,
            try:                            # not a Status object streamed as if it were an event
                body = (await resp.read()).decode(errors="replace")
            except (aiohttp.ClientError, asyncio.TimeoutError):
                body = ""
            finally:
                resp.release()
            raise _error(resp.status, body or str(resp.reason or ""), ref.path)
        try:
            async for line in resp.content:
                if line.strip():
                    event = json.loads(line)
                    yield event.get("type", ""), event.get("object") or {}
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            raise KubeError(0, type(exc).__name__, "the watch stream broke", path=ref.path) from None
        except ValueError:      # a line cut off (a proxy dropping the stream): not JSON
            raise KubeError(0, "BadWatchEvent", "the watch stream sent a line that is not JSON",
                            path=ref.path) from None
        finally:
            resp.release()

    async def pod_log(self, namespace: str, name: str, *, container: str = "", tail_lines: int = 200,
                      limit_bytes: int = 262144) -> str:
        """The tail of a pod's container log (``pods/log``), as text; same timeout and bounded
        retry as every other call. 404 (pod gone) raises NotFound; 400 (container not started
        yet) gives ''."""
        path = f"/api/v1/namespaces/{namespace}/pods/{name}/log"
        query = [("tailLines", str(tail_lines)), ("limitBytes", str(limit_bytes))] + \
            ([("container", container)] if container else [])
        err: KubeError | None = None
        for attempt in range(self.policy.attempts):
            try:
                resp = await self.api.call_api(path, "GET", query_params=query, header_params={"Accept": "*/*"},
                                               auth_settings=["BearerToken"], _preload_content=False,
                                               _request_timeout=self.policy.timeout)
                try:
                    status = resp.status
                    async with asyncio.timeout(self.policy.timeout):   # (wait_for can swallow a cancel on 3.11)
                        text = await resp.text(errors="replace")
                finally:
                    resp.release()
                metrics.KUBE_REQUESTS.labels("GET", "pods/log", "2xx" if status < 300 else str(status)).inc()
                if status < 300:
                    return text
                if status == 400:
                    return ""
                err = _error(status, text[:2000], path)
                if status not in TRANSIENT:
                    raise err from None
            except ApiException as exc:
                metrics.KUBE_REQUESTS.labels("GET", "pods/log", str(exc.status or 0)).inc()
                err = _error(exc.status or 0, str(exc.body or exc.reason), path)
                if exc.status not in TRANSIENT:
                    raise err from None
            except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
                metrics.KUBE_REQUESTS.labels("GET", "pods/log", "0").inc()
                err = KubeError(0, type(exc).__name__, "the API server could not be reached", path=path)
            if attempt + 1 < self.policy.attempts:
                await asyncio.sleep(self.policy.delay(attempt))
        assert err is not None
        raise err

    # -- verbs --------------------------------------------------------------------------------
    async def get(self, ref: Ref) -> dict[str, Any]:
        return await self.request("GET", ref.path)

    async def get_or_none(self, ref: Ref) -> dict[str, Any] | None:
        try:
            return await self.get(ref)
        except NotFound:
            return None

    async def list(self, ref: Ref, *, label_selector: str = "") -> list[dict[str, Any]]:
        query = {"labelSelector": label_selector} if label_selector else None
        return (await self.request("GET", ref.path, query=query)).get("items") or []

    async def create(self, ref: Ref, body: dict[str, Any]) -> dict[str, Any]:
        return await self.request("POST", ref.path, body=body)

    async def patch(self, ref: Ref, patch: dict[str, Any], *, status: bool = False) -> dict[str, Any]:
        return await self.request("PATCH", ref.path + ("/status" if status else ""), body=patch, content_type=MERGE)

    async def delete(self, ref: Ref) -> bool:
        """Delete; True if something was deleted, False if it was already gone."""
        try:
            await self.request("DELETE", ref.path, body={"propagationPolicy": "Background"})
            return True
        except NotFound:
            return False


def ref_of(obj: dict[str, Any], plural: str) -> Ref:
    md = obj["metadata"]
    return Ref(obj["apiVersion"], plural, md.get("namespace"), md["name"])


class NotOurs(KubeError):
    """An object with the name we need exists but was not created by us: we never adopt it."""

    def __init__(self, ref: Ref, kind: str):
        self.kind = kind
        super().__init__(409, "NotOwned", f"{kind} {ref.namespace + '/' if ref.namespace else ''}{ref.name} "
                                          "exists and was not created by fedcare for this object", path=ref.path)


def owned_by(obj: dict[str, Any], owner_uid: str) -> bool:
    """True if ``obj`` has an ownerReference to the object with ``owner_uid``."""
    return any(o.get("uid") == owner_uid for o in (obj.get("metadata") or {}).get("ownerReferences") or [])


async def ensure(kube: Kube, plural: str, desired: dict[str, Any], *,
                 owner_uid: str | None = None) -> tuple[dict[str, Any], bool]:
    """Create ``desired`` or bring the existing object's labels and content in line. Idempotent.

    Returns (object, created). Only the keys we manage are patched, so fields the API server
    or others add are left alone. With ``owner_uid``, an existing object that has no
    ownerReference to that owner is somebody else's: ``NotOurs`` is raised and it is left
    untouched (never adopted, never deleted later).
    """
    ref = ref_of(desired, plural)
    current = await kube.get_or_none(ref)
    if current is None:
        try:
            return await kube.create(Ref(ref.api_version, plural, ref.namespace), desired), True
        except Conflict:        # created meanwhile (a restart, a second reconcile): converge below
            current = await kube.get(ref)
    if owner_uid is not None and not owned_by(current, owner_uid):
        raise NotOurs(ref, desired.get("kind", plural))
    patch = _difference(current, desired)
    if patch:
        current = await kube.patch(ref, patch)
    return current, False


def _difference(current: dict[str, Any], desired: dict[str, Any]) -> dict[str, Any]:
    patch: dict[str, Any] = {}
    for key, want in desired.items():
        if key in ("apiVersion", "kind"):
            continue
        have = current.get(key)
        if isinstance(want, dict) and isinstance(have, dict):
            sub = _difference(have, want)
            if sub:
                patch[key] = sub
        elif have != want:
            patch[key] = want
    return patch
