"""The state half of the realistic emulator: metadata, writes, deletion, namespaces.

Why each behaviour exists is in ``emulator.py``'s docstring; the watch side is in
``emulator_watch.py``. Every write method here runs under ``self._lock`` and records one
:class:`~.emulator_watch.WatchEvent` per change, with a fresh resourceVersion.
"""

from __future__ import annotations

import collections
import contextlib
import random
import uuid
from typing import Any

import attrs
import kmock
from kmock._internal import rendering

from ..api.resources import Resource
from . import patching as p
from .emulator_pods import PODS, graceful_delete, mark_deleting, requested_grace
from .emulator_watch import EventLog, Subscription, WatchEvent, publish
from .selectors import match_fields, match_labels

NAMESPACES = kmock.resource("v1/namespaces")
Key = tuple[Any, str | None, str]


def as_resource(res: Resource | str | kmock.resource) -> kmock.resource:
    """``kmock.resource`` from a fedcare Resource, ``'group/version/plural'`` or itself."""
    if isinstance(res, Resource):
        return kmock.resource(f"{res.group}/{res.version}/{res.plural}")
    return res if isinstance(res, kmock.resource) else kmock.resource(res)


@attrs.define(kw_only=True)
class StateEmulator(kmock.KubernetesEmulator):
    max_history: int | None = None  # keep the last N requests, and N versions per object
    watch_cache_size: int = 10_000  # events kept per resource for resuming watches
    require_namespaces: bool = True
    watchers: collections.Counter[Any] = attrs.field(factory=collections.Counter, init=False)
    events: EventLog = attrs.field(init=False)
    _rv: int = attrs.field(default=0, init=False)
    _created: set[Any] = attrs.field(factory=set, init=False)  # requests answered with 201
    #: The open watch streams per resource (see emulator_watch.Subscription).
    subscriptions: collections.defaultdict[Any, set[Subscription]] = attrs.field(
        factory=lambda: collections.defaultdict(set), init=False)

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        self.events = EventLog(self.watch_cache_size)

    @property
    def resource_version(self) -> int:
        return self._rv

    @property
    def lock(self) -> Any:
        return self._lock

    # ---- resource info, visibility -------------------------------------------------------
    def info(self, res: Any) -> kmock.ResourceInfo | None:
        if isinstance(res, kmock.resource):     # the direct lookup: kmock's own parses the key first
            return self.resources._resources.get(res)
        return self.resources[res] if res in self.resources else None

    def is_known(self, res: Any) -> bool:
        # Declared, or implied by a reaction; kmock's own check also scans all objects: O(n).
        return res in self.resources or res in kmock.KubernetesScaffold._get_resources(self)

    def kind_of(self, res: Any) -> tuple[str, str]:
        info = self.info(res)
        kind = info.kind if info and info.kind else res.plural.capitalize()
        return kind, "/".join(x for x in (res.group, res.version) if x)

    def _has_status(self, res: Any) -> bool:
        info = self.info(res)
        return bool(info and "status" in info.subresources)

    def visible(self, request: rendering.Request, raw: dict[str, Any]) -> bool:
        md = raw.get("metadata") or {}
        if request.namespace is not None and md.get("namespace", request.namespace) != request.namespace:
            return False
        if request.name is not None and md.get("name") != request.name:
            return False
        return (match_labels(request.params.get("labelSelector"), md.get("labels") or {})
                and match_fields(request.params.get("fieldSelector"), raw))

    def live_objects(self, request: rendering.Request) -> list[dict[str, Any]]:
        res = request.resource
        plural = getattr(res, "plural", None)    # a cheap first test: kmock's resource == is slow
        return [p.clone(obj.raw) for key, obj in self._objects.items()
                if getattr(key[0], "plural", None) == plural and key[0] == res and not obj.deleted
                and self.visible(request, obj.raw)]

    def _key(self, res: Any, namespace: str | None, name: str | None) -> Key:
        info = self.info(res)
        return (res, None if (info and info.namespaced is False) else namespace, name or "")

    def _get_live(self, key: Key) -> Any:
        obj = self._objects[key] if key in self._objects else None
        return None if obj is None or obj.deleted else obj

    def _check_subresource(self, request: rendering.Request) -> None:
        if request.subresource is not None and request.subresource != "status":
            raise p.error(404, "NotFound", f"the emulator does not serve {request.subresource!r}")
        if request.subresource == "status" and not self._has_status(request.resource):
            raise p.error(404, "NotFound", f"{getattr(request.resource, 'plural', '')} have no status subresource")

    # ---- writes (called under self._lock) ------------------------------------------------
    def _next_rv(self) -> str:
        self._rv += 1
        return str(self._rv)

    async def _emit(self, res: Any, etype: str, obj: dict[str, Any], old: dict[str, Any] | None) -> None:
        event = WatchEvent(int(obj["metadata"]["resourceVersion"]), etype, p.clone(obj), old)
        self.events.append(res, event)
        publish(self, self.subscriptions.get(res, ()), event)

    def _append_version(self, obj: Any, body: dict[str, Any]) -> None:
        obj.history.append(body)
        if self.max_history is not None and len(obj.history) > self.max_history:
            del obj.history[:-self.max_history]

    def _check_namespace(self, ns: str) -> None:
        if not self.require_namespaces:
            return
        nso = self._get_live((NAMESPACES, None, ns))
        if nso is None:
            raise p.error(404, "NotFound", f'namespaces "{ns}" not found')
        if nso.raw["metadata"].get("deletionTimestamp"):
            raise p.error(403, "Forbidden", f"unable to create new content in namespace {ns} "
                                            "because it is being terminated")

    async def _post(self, request: rendering.Request) -> Any:
        if not self.is_known(request.resource):
            raise p.not_found(request.resource)
        body = await self._create(request.resource, request.namespace, request.data)
        self._created.add(request)
        return body

    async def _create(self, res: Any, url_ns: str | None, data: Any) -> dict[str, Any]:
        if not isinstance(data, dict):
            raise p.error(400, "BadRequest", "the body must be a JSON object")
        body = p.clone(data)
        md = body.setdefault("metadata", {})
        info = self.info(res)
        ns: str | None = None
        if (info.namespaced if info and info.namespaced is not None else bool(url_ns)):
            ns = url_ns or md.get("namespace")
            if not ns:
                raise p.error(400, "BadRequest", "a namespace is required for a namespaced resource")
            if md.get("namespace") not in (None, ns):
                raise p.error(400, "BadRequest", "the namespace of the object does not match the URL")
            md["namespace"] = ns
            self._check_namespace(ns)
        else:
            md.pop("namespace", None)
        if not md.get("name"):
            if not md.get("generateName"):
                raise p.error(422, "Invalid", "metadata.name: Required value: name or generateName is required")
            md["name"] = md["generateName"] + "".join(random.choices("bcdfghjklmnpqrstvwxz2456789", k=5))
        key: Key = (res, ns, md["name"])
        if self._get_live(key) is not None:
            raise p.error(409, "AlreadyExists", f'{res.plural} "{md["name"]}" already exists')
        for field in ("deletionTimestamp", "deletionGracePeriodSeconds", "managedFields"):
            md.pop(field, None)
        md.update(uid=str(uuid.uuid4()), creationTimestamp=p.now(), generation=1, resourceVersion=self._next_rv())
        if self._has_status(res):
            body.pop("status", None)  # the status subresource ignores .status on creation
        if res == NAMESPACES:  # as the API server's namespace strategy does
            body.setdefault("spec", {}).setdefault("finalizers", ["kubernetes"])
            body["status"] = {"phase": "Active"}
        if key in self._objects:
            self._objects[key].create(body)
        else:
            self._objects[key] = body
        await self._emit(res, "ADDED", body, None)
        return body

    async def _patch(self, request: rendering.Request) -> Any:
        self._check_subresource(request)
        key = self._key(request.resource, request.namespace, request.name)
        ctype = p.content_type(request.headers)
        obj = self._get_live(key)
        patch = request.data
        if ctype == p.APPLY_PATCH:
            patch = p.parse_apply(request.text)
            if obj is None and request.subresource is None:  # server-side apply creates
                patch.setdefault("metadata", {})["name"] = request.name
                body = await self._create(request.resource, request.namespace, patch)
                self._created.add(request)
                return body
        if obj is None:
            raise p.not_found(key[0], key[2])
        old = p.clone(obj.raw)
        return await self._store(key, old, p.apply_patch(old, ctype, patch), request.subresource)

    async def _replace(self, request: rendering.Request) -> dict[str, Any]:
        self._check_subresource(request)
        key = self._key(request.resource, request.namespace, request.name)
        obj = self._get_live(key)
        if obj is None:
            raise p.not_found(key[0], key[2])
        if not isinstance(request.data, dict):
            raise p.error(400, "BadRequest", "the body must be a JSON object")
        old = p.clone(obj.raw)
        p.check_version(old, (request.data.get("metadata") or {}).get("resourceVersion"))
        return await self._store(key, old, p.clone(request.data), request.subresource)

    async def _store(self, key: Key, old: dict[str, Any], new: dict[str, Any], subresource: str | None) -> dict[str, Any]:
        res = key[0]
        p.keep_server_fields(old, new)
        if subresource == "status":
            new = {**old, "status": new.get("status")}
            if new["status"] is None:
                del new["status"]
        elif self._has_status(res):
            new.pop("status", None)
            if "status" in old:
                new["status"] = old["status"]
        omd, nmd = old["metadata"], new["metadata"]
        if omd.get("deletionTimestamp") and set(nmd.get("finalizers", [])) - set(omd.get("finalizers", [])):
            raise p.error(422, "Invalid", "Forbidden: no new finalizers can be added if the object is being deleted")
        if new == old:
            return old  # a no-op: no new resourceVersion, no watch event (as in Kubernetes)
        if p.spec_changed(old, new):
            nmd["generation"] = int(omd.get("generation", 0)) + 1
        nmd["resourceVersion"] = self._next_rv()
        obj = self._objects[key]
        self._append_version(obj, new)
        if self._released(key, nmd):
            await self._remove(key, new, old)
        else:
            await self._emit(res, "MODIFIED", new, old)
        return new

    # ---- deletion ------------------------------------------------------------------------
    def _children(self, ns: str) -> list[Key]:
        return [key for key, obj in self._objects.items() if key[1] == ns and not obj.deleted]

    def _released(self, key: Key, md: dict[str, Any]) -> bool:
        """Deleting, no finalizers left, and (a Namespace) nothing left inside."""
        if not md.get("deletionTimestamp") or md.get("finalizers"):
            return False
        return key[0] != NAMESPACES or not self._children(key[2])

    async def _remove(self, key: Key, last: dict[str, Any], old: dict[str, Any]) -> None:
        self._objects[key].delete()
        await self._emit(key[0], "DELETED", last, old)
        ns_key: Key = (NAMESPACES, None, key[1] or "")
        nso = self._get_live(ns_key) if key[1] is not None else None
        if nso is not None and self._released(ns_key, nso.raw["metadata"]):
            # The last object of a Terminating namespace is gone: the namespace goes too.
            ns_old = p.clone(nso.raw)
            ns_last = p.clone(ns_old)
            ns_last["metadata"]["resourceVersion"] = self._next_rv()
            self._append_version(nso, ns_last)
            await self._remove(ns_key, ns_last, ns_old)

    async def _delete_one(self, request: rendering.Request) -> dict[str, Any]:
        opts = dict(request.data) if isinstance(request.data, dict) else {}
        opts["gracePeriodSeconds"] = requested_grace(opts, request.params)
        return await self._delete(self._key(request.resource, request.namespace, request.name), opts)

    async def _delete(self, key: Key, opts: dict[str, Any]) -> dict[str, Any]:
        obj = self._get_live(key)
        if obj is None:
            raise p.not_found(key[0], key[2])
        old = p.clone(obj.raw)
        pre = opts.get("preconditions") or {}
        p.check_version(old, pre.get("resourceVersion"))
        if pre.get("uid") and pre["uid"] != old["metadata"].get("uid"):
            raise p.conflict()
        grace = graceful_delete(key[0], old, opts.get("gracePeriodSeconds"))
        if grace is not None:  # a pod on a node: its kubelet stops it, then deletes it for good
            if grace == old["metadata"].get("deletionGracePeriodSeconds"):
                return old
            new = p.clone(old)
            mark_deleting(new["metadata"], grace)
            new["metadata"]["resourceVersion"] = self._next_rv()
            self._append_version(obj, new)
            await self._emit(key[0], "MODIFIED", new, old)
            return new
        if old["metadata"].get("deletionTimestamp") and not (key[0] == PODS and old["metadata"].get(
                "deletionGracePeriodSeconds") and not old["metadata"].get("finalizers")):
            return old  # already being deleted
        new = p.clone(old)
        new["metadata"].update(deletionTimestamp=p.now(), deletionGracePeriodSeconds=0,
                               resourceVersion=self._next_rv())
        is_ns = key[0] == NAMESPACES
        if is_ns:
            new["status"] = {**(new.get("status") or {}), "phase": "Terminating"}
        if self._released(key, new["metadata"]):
            del new["metadata"]["deletionTimestamp"], new["metadata"]["deletionGracePeriodSeconds"]
            self._append_version(obj, new)
            await self._remove(key, new, old)
            return new
        self._append_version(obj, new)
        await self._emit(key[0], "MODIFIED", new, old)
        if is_ns:  # the namespace controller's job: delete everything inside
            for child in self._children(key[2]):
                with contextlib.suppress(kmock.KubernetesError):
                    await self._delete(child, {})
        return new

    async def _delete_collection(self, request: rendering.Request) -> dict[str, Any]:
        if not self.is_known(request.resource):
            raise p.not_found(request.resource)
        keys = [key for key, obj in self._objects.items() if key[0] == request.resource
                and not obj.deleted and self.visible(request, obj.raw)]
        items = [await self._delete(key, {}) for key in keys]
        kind, api_version = self.kind_of(request.resource)
        return {"apiVersion": api_version, "kind": f"{kind}List",
                "metadata": {"resourceVersion": str(self._rv)}, "items": items}
