"""An emulated Kubernetes API realistic enough for kopf: kmock 0.8 plus a realism layer.

Pinned to ``kmock==0.8``: this subclasses ``kmock.KubernetesEmulator`` and relies on its
internals (``_objects``, ``_lock``, ``_payloads``, ``_requests``, the parser
module). kmock as is breaks kopf in ways that look like operator bugs (see
``shared/KMOCK.md``); each fix below exists for a reason that was observed:

* **Server-populated metadata** (uid, resourceVersion from one global counter,
  creationTimestamp, generation bumped on spec changes only). Without resourceVersions
  kopf's finalizer JSON-patch (``test /metadata/resourceVersion``) fails and its handlers
  never run; without uids kopf keys all objects' memories as ``''``: one daemon for all.
  Also: namespace defaulted from the URL, ``generateName`` (kopf's Events), 201 on create.
* **Optimistic concurrency**: 409 on a stale resourceVersion (PATCH/PUT bodies, DELETE
  preconditions) and on an existing name; 422 for a failed JSON-patch ``test`` (kmock: 500).
* **Status subresource isolation**: the main resource ignores ``.status``, ``/status``
  changes only ``.status`` — what our status writer and kopf's progress storage rely on.
* **PATCH by Content-Type**, ``apply-patch+yaml`` (approximated as merge, creates), PUT,
  DELETE collection (kmock: ignored, ignored, 404, 404) — see ``patching.py``.
* **Finalizers**: DELETE sets deletionTimestamp; no new finalizers while deleting; one
  DELETED event when the last finalizer goes.
* **Namespaces**: objects can only be created in an existing, non-terminating namespace
  (``require_namespaces``; otherwise an operator that forgets to create one would pass here
  and fail on a real cluster). Deleting a Namespace does what the namespace controller
  does: it turns Terminating, every object in it is deleted (finalizers respected: such
  objects wait for their controller), and the Namespace goes once it is empty.
* **No garbage collector**: ownerReferences are stored but never acted on, and
  ``propagationPolicy`` is ignored. A real cluster's GC is a controller; fedcare cleans up
  explicitly with its finalizer, and tests here prove it does.
* **Watch**: resume from resourceVersion without replay, selectors, bookmarks,
  timeoutSeconds, 410 when too old — see ``emulator_watch.py``.
* **Faults before state changes**, O(1) request matching, ``max_history`` — see
  ``emulator_dispatch.py``; parser fixes for ``/api/v1/namespaces/NAME`` and ``watch=True``
  — see ``parser_fixes.py``; kr8s' trailing-slash discovery paths and the core
  ``groupVersion: v1`` (kmock says ``/v1``) — here.
* **kubectl logs**: ``pods/NAME/log`` is proxied to the pod's node's kubelet endpoint, as
  the API server does (``emulator_pods.pod_log``; the sandbox process kubelet serves it).
* **kubectl**: watch streams say ``Content-Type: application/json`` (kmock: octet-stream,
  which ``kubectl get -w`` refuses); discovery lists no short names on subresources
  (kubectl warned on every command). kubectl sends typed builtins as protobuf (e.g.
  ``kubectl create namespace x``): they get 415, as from a server without protobuf, but
  kubectl does not retry as JSON. ``kubectl apply --validate=false -f ...`` sends JSON and
  works for every kind; no OpenAPI is served, hence ``--validate=false``.

Not emulated: admission (CRD schemas and CEL rules are checked in the unit tests), RBAC
(every request is allowed), ``limit``/``continue`` paging (one page), defaulting of builtin
kinds, protobuf, and any controller (GC, Deployments, ServiceAccount tokens).
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any

import attrs
import kmock
from kmock._internal import enums, rendering

from ..api.resources import RESOURCES, Resource
from . import patching as p
from .emulator_dispatch import Fault, Memo, apply_faults, dsl_handle, trim_history
from .emulator_pods import PODS, pod_log
from .emulator_state import NAMESPACES, StateEmulator, as_resource
from .emulator_watch import serve_list, serve_watch
from .parser_fixes import install_parser_fixes

#: A field of the emulator's ``/version`` answer (a real API server has no such field).
EMULATOR_MARKER = "fedcareEmulator"

__all__ = ["EMULATOR_MARKER", "RealisticEmulator", "Fault", "fedcare_emulator", "as_resource", "register_fedcare_resources"]


@attrs.define(kw_only=True)
class RealisticEmulator(StateEmulator):
    faults: list[Fault] = attrs.field(factory=list)
    bookmark_interval: float = 5.0
    _results: dict[Any, Any] = attrs.field(factory=dict, init=False)
    _inflight: set[Any] = attrs.field(factory=set, init=False)
    #: Requests received so far (benchmarks count an operation's API calls with it).
    received: int = attrs.field(default=0, init=False)
    #: Reaction order and criteria results (see ``emulator_dispatch.Memo``).
    dispatch_memo: Memo = attrs.field(factory=Memo, init=False)

    def __attrs_post_init__(self) -> None:
        install_parser_fixes()
        super().__attrs_post_init__()
        self.fallback[kmock.method.PUT] << self._serve_result  # kmock: 404 for PUT
        self.fallback[kmock.method.DELETE] << self._serve_result  # and DELETE collection
        self.fallback["get /version/"] << self._serve_server_version  # kr8s adds slashes
        self.fallback["get /api/"] << self._serve_api
        self.fallback["get /apis/"] << self._serve_apis

    # ---- public helpers ------------------------------------------------------------------
    @property
    def url(self) -> str:  # type: ignore[override]
        """The API server URL, without a trailing slash (kmock gives a ``yarl.URL``)."""
        return str(self._next_server().url).rstrip("/")

    def inject(self, criteria: Callable[[Any], Any], error: BaseException | None = None, *,
               delay: float = 0.0, times: int | None = 1) -> Fault:
        """Fail/delay matching requests BEFORE any state change; ``times=None``: forever."""
        fault = Fault(criteria=criteria, error=error, delay=delay, times=times)
        self.faults.append(fault)
        return fault

    def peek(self, res: Resource | str | kmock.resource, name: str,
             namespace: str | None = None) -> dict[str, Any] | None:
        """The stored object (a deep copy), or None if absent or deleted."""
        obj = self._get_live(self._key(as_resource(res), namespace, name))
        return None if obj is None else copy.deepcopy(obj.raw)

    def watching(self, res: Resource | str | kmock.resource) -> int:
        """How many watch streams of this resource are open now."""
        return self.watchers[as_resource(res)]

    async def create_object(self, res: Resource | str | kmock.resource, body: dict[str, Any],
                            namespace: str | None = None) -> dict[str, Any]:
        """Create as a POST would (metadata, events, 409s), without HTTP: for seeding."""
        async with self._lock:
            return await self._create(as_resource(res), namespace, body)

    # ---- dispatch ------------------------------------------------------------------------
    async def _handle(self, request: rendering.Request) -> Any:
        # NB: no `await` before this point: the request was just appended to the log.
        self._inflight.add(request)
        self.received += 1
        if self.max_history is not None:
            trim_history(self, self.max_history, self._inflight)
        try:
            await apply_faults(self.faults, request)
            op = self._write_op(request)
            if op is not None and "protobuf" in p.content_type(request.headers):
                # kubectl sends builtins as protobuf; 415 makes client-go fall back to JSON.
                raise p.error(415, "UnsupportedMediaType", "the emulator only reads JSON and YAML")
            if op is None:
                return await dsl_handle(self, request)  # reads and non-Kubernetes paths
            async with self._lock:
                self._results[request] = await op(request)
            try:  # user reactions still apply; the fallbacks below render the result
                response = await dsl_handle(self, request)
                if request in self._created and response.status == 200 and not response.prepared:
                    # Set here: a kmock.Response(status=201) payload would stick to the
                    # shared fallback reaction and turn every later PATCH into a 201.
                    response.set_status(201)
                return response
            finally:
                self._results.pop(request, None)
                self._created.discard(request)
        finally:
            self._inflight.discard(request)

    def _write_op(self, request: rendering.Request) -> Callable[[Any], Any] | None:
        if request.resource is None or request.resource.plural is None:
            return None
        if request.action == enums.action.CREATE:
            return self._post
        if request.action == enums.action.UPDATE:
            return self._patch
        if request.action == enums.action.DELETE:
            return self._delete_one
        if request.method == kmock.method.PUT and request.name:
            return self._replace
        if request.method == kmock.method.DELETE and not request.name:
            return self._delete_collection
        return None

    # ---- serving (results are computed in _handle under the lock) ------------------------
    async def _serve_result(self, request: rendering.Request) -> Any:
        if request not in self._results:
            raise kmock.KubernetesEndpointNotFoundError()
        return self._results[request]

    _serve_create = _serve_update = _serve_delete = _serve_result  # 201s: see _handle()

    async def _serve_fetch(self, request: rendering.Request) -> Any:  # O(1): kmock scans all
        if request.subresource == "log" and request.resource == PODS:   # kubectl logs: ask the kubelet
            pod = self._get_live(self._key(request.resource, request.namespace, request.name))
            if pod is None:
                raise p.not_found(request.resource, request.name)
            node = self._get_live(self._key(NODES, None, (pod.raw.get("spec") or {}).get("nodeName") or ""))
            return await pod_log(pod.raw, node.raw if node else None, request.params, p.error)
        self._check_subresource(request)
        obj = self._get_live(self._key(request.resource, request.namespace, request.name))
        if obj is None:
            raise p.not_found(request.resource, request.name)
        return obj.raw

    async def _serve_list(self, request: rendering.Request) -> Any:
        return await serve_list(self, request)

    def _serve_watch(self, request: rendering.Request) -> Any:  # type: ignore[override]
        # kmock streams an async generator as application/octet-stream; kubectl needs JSON.
        # (kmock copies these headers onto the WATCH fallback reaction: the same for all.)
        return kmock.Response(headers={"Content-Type": "application/json"}, payload=serve_watch(self, request))

    async def _serve_server_version(self, request: rendering.Request) -> Any:
        # /version: kmock's (a K3s one) plus a marker, so the sandbox kubelet knows that no
        # scheduler runs here and binds pods itself (see sandbox/kubelet.py).
        return {**await super()._serve_server_version(request), EMULATOR_MARKER: "true"}

    async def _serve_version(self, request: rendering.Request) -> Any:
        result = await super()._serve_version(request)
        if isinstance(result, dict) and result.get("groupVersion", "").startswith("/"):
            result["groupVersion"] = result["groupVersion"][1:]  # kmock: '/v1' for the core API
        for entry in result.get("resources", []) if isinstance(result, dict) else []:
            if "/" in entry["name"]:  # kmock copies short names to subresources: kubectl warns
                entry.update(shortNames=[], categories=[], singularName="")
        return result


# ---- the fedcare sandbox ---------------------------------------------------------------------
ALL_VERBS = {"get", "list", "watch", "create", "update", "patch", "delete", "deletecollection"}
#: The builtins fedcare and kopf use; kmock's bundle (a K3s cluster) has them all today.
BUILTINS: dict[str, tuple[str, bool]] = {
    "v1/namespaces": ("Namespace", False), "v1/events": ("Event", True),
    "v1/pods": ("Pod", True), "v1/services": ("Service", True),
    "v1/serviceaccounts": ("ServiceAccount", True), "v1/nodes": ("Node", False),
    "apps/v1/deployments": ("Deployment", True),
    "rbac.authorization.k8s.io/v1/roles": ("Role", True),
    "rbac.authorization.k8s.io/v1/rolebindings": ("RoleBinding", True),
    "rbac.authorization.k8s.io/v1/clusterroles": ("ClusterRole", False),
    "rbac.authorization.k8s.io/v1/clusterrolebindings": ("ClusterRoleBinding", False),
    "coordination.k8s.io/v1/leases": ("Lease", True),
}
NODES = kmock.resource("v1/nodes")
DEFAULT_NAMESPACES = ("default", "kube-system", "kube-public", "kube-node-lease")


def ensure_builtins(k: kmock.KubernetesEmulator) -> list[str]:
    """Register the builtins that kmock's bundle lacks; returns their names (normally none)."""
    missing = [name for name in BUILTINS if kmock.resource(name) not in k.resources]
    for name in missing:
        kind, namespaced = BUILTINS[name]
        subresources = {"status"} if kind in {"Namespace", "Pod", "Node", "Deployment", "Service"} else set()
        k.resources[name] = kmock.ResourceInfo(kind=kind, singular=kind.lower(), namespaced=namespaced,
                                               verbs=ALL_VERBS, subresources=subresources)
    return missing


def register_fedcare_resources(k: kmock.KubernetesEmulator) -> None:
    """Declare our CRs as their CRDs do: scope, names, status subresource (for discovery)."""
    for r in RESOURCES:
        k.resources[as_resource(r)] = kmock.ResourceInfo(
            kind=r.kind, singular=r.singular, namespaced=r.namespaced, verbs=ALL_VERBS,
            shortnames=set(r.short_names), categories={"fedcare"}, subresources={"status"})


def namespace_body(name: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}


@contextlib.asynccontextmanager
async def fedcare_emulator(*, host: str = "127.0.0.1", port: int | None = None,
                           namespaces: Iterable[str] = DEFAULT_NAMESPACES,
                           **kwargs: Any) -> AsyncIterator[RealisticEmulator]:
    """A running emulator with builtins, the fedcare CRs and the usual namespaces.

    ``kwargs`` go to :class:`RealisticEmulator` (``bookmark_interval``, ``max_history``,
    ``require_namespaces``, ...). ``k.url`` is the API server URL.
    """
    async with RealisticEmulator(**kwargs) as k, kmock.Server(k, host=host, port=port):
        k.resources.load_bundled()
        ensure_builtins(k)
        register_fedcare_resources(k)
        for name in namespaces:
            await k.create_object(NAMESPACES, namespace_body(name))
        yield k
