"""The emulated API (fedcare.sandbox) over HTTP: each test pins a behaviour kopf or our code relies on."""

from __future__ import annotations

import asyncio
from typing import Any

import kmock
import pytest

from fedcare.api.resources import FEDERATED_ROUNDS, HOSPITAL_NODES, ROUND_ASSIGNMENTS, Resource
from fedcare.sandbox.emulator import RealisticEmulator, fedcare_emulator
from fedcare.sandbox.selectors import match_fields, match_labels
from tests.support.kube import APPLY, JSON_PATCH, KubeClient

FR, HN, RA = FEDERATED_ROUNDS, HOSPITAL_NODES, ROUND_ASSIGNMENTS
NS, LEASES = "v1/namespaces", "coordination.k8s.io/v1/leases"


def obj(res: Resource | str, name: str, ns: str | None = None, **fields: Any) -> dict[str, Any]:
    """A body for ``res``; the emulator does no schema validation (the CRD tests do)."""
    if isinstance(res, Resource):
        api_version, kind = res.api_version, res.kind
    else:  # 'coordination.k8s.io/v1/leases' -> 'coordination.k8s.io/v1', 'Lease'
        api_version, plural = res.rsplit("/", 1)
        kind = plural[:-1].capitalize()
    md: dict = {"name": name, **({"namespace": ns} if ns else {}), **fields.pop("metadata", {})}
    return {"apiVersion": api_version, "kind": kind, "metadata": md, "spec": {"size": 1}, **fields}


def rv(body: dict) -> int:
    return int(body["metadata"]["resourceVersion"])


async def test_create_populates_what_the_api_server_owns(kube: KubeClient):
    status, b = await kube.create(FR, {**obj(FR, "r1", "default"), "status": {"phase": "Forged"}})
    assert status == 201  # kubernetes_asyncio's custom-object API returns None on a 200
    md = b["metadata"]
    assert md["uid"] and md["creationTimestamp"].endswith("Z") and md["generation"] == 1
    assert "status" not in b  # the status subresource ignores .status on creation
    nons = obj(FR, "r2")  # no namespace in the body: the URL's is used
    assert (await kube.request("POST", "/apis/fedcare.io/v1alpha1/namespaces/default/federatedrounds",
                               body=nons)).ok()["metadata"]["namespace"] == "default"
    r2 = (await kube.get(FR, "r2", "default")).ok()
    assert rv(r2) > rv(b) and r2["metadata"]["uid"] != md["uid"]
    gen = obj(FR, "", "default", metadata={"generateName": "gen-"})
    names = {(await kube.create(FR, gen)).ok()["metadata"]["name"] for _ in range(3)}
    assert len(names) == 3 and all(n.startswith("gen-") for n in names)  # kopf's Events need this
    assert (await kube.create(FR, obj(FR, "", "default"))).status == 422  # no name, no generateName
    assert (await kube.create(FR, obj(FR, "r1", "default"))).status == 409
    node = (await kube.create(HN, obj(HN, "rouen", "ignored"))).ok()
    assert "namespace" not in node["metadata"]  # cluster-scoped
    assert (await kube.create(FR, obj(FR, "r9", "nowhere"))).status == 404  # no such namespace
    assert (await kube.create("fedcare.io/v1alpha1/typos", obj(FR, "x", "default"))).status == 404
    assert (await kube.delete(FR, "r1", "default")).status == 200
    assert (await kube.get(FR, "r1", "default")).status == 404


async def test_status_is_a_separate_subresource_and_generation_tracks_spec(kube: KubeClient):
    await kube.create(FR, obj(FR, "r1", "default"))
    b = (await kube.patch_status(FR, "r1", {"status": {"p": 1}, "spec": {"size": 99}}, "default")).ok()
    assert b["spec"]["size"] == 1 and b["status"] == {"p": 1} and b["metadata"]["generation"] == 1
    b = (await kube.patch(FR, "r1", {"status": {"p": "hacked"}, "spec": {"size": 2}}, "default")).ok()
    assert b["status"] == {"p": 1} and b["metadata"]["generation"] == 2
    before = rv(b)
    b = (await kube.patch(FR, "r1", {"metadata": {"labels": {"a": "b"}}}, "default")).ok()
    assert b["metadata"]["generation"] == 2 and rv(b) > before  # metadata: no generation bump
    same = (await kube.patch(FR, "r1", {"spec": {"size": 2}}, "default")).ok()
    assert rv(same) == rv(b)  # a no-op write makes no new version (and no watch event)
    b = (await kube.replace(FR, "r1", obj(FR, "r1", "default", spec={"size": 7}), "default")).ok()
    assert b["metadata"]["generation"] == 3 and b["status"] == {"p": 1}  # PUT keeps status too
    assert (await kube.patch_status(HN, "nope", {"status": {}})).status == 404


async def test_stale_versions_conflict_and_bad_patches_are_rejected(kube: KubeClient):
    b = (await kube.create(FR, obj(FR, "r1", "default"))).ok()
    old = b["metadata"]["resourceVersion"]
    await kube.patch(FR, "r1", {"spec": {"size": 2}}, "default")
    stale = {"metadata": {"resourceVersion": old}, "spec": {"size": 3}}
    assert (await kube.patch(FR, "r1", stale, "default")).status == 409
    assert (await kube.patch_status(FR, "r1", {**stale, "status": {"x": 1}}, "default")).status == 409
    assert (await kube.replace(FR, "r1", {**obj(FR, "r1", "default"), **stale}, "default")).status == 409
    assert (await kube.delete(FR, "r1", "default", preconditions={"resourceVersion": old})).status == 409
    assert (await kube.delete(FR, "r1", "default", preconditions={"uid": "someone-else"})).status == 409
    test_op = [{"op": "test", "path": "/metadata/resourceVersion", "value": old}]
    assert (await kube.patch(FR, "r1", test_op, "default", content_type=JSON_PATCH)).status == 422
    assert (await kube.patch(FR, "r1", {"spec": {}}, "default", content_type=JSON_PATCH)).status == 400
    b = (await kube.get(FR, "r1", "default")).ok()
    assert b["spec"] == {"size": 2}  # none of the rejected writes changed anything


async def test_apply_patch_and_delete_collection(kube: KubeClient):
    await kube.create(FR, obj(FR, "r1", "default", metadata={"labels": {"app": "x"}}))
    await kube.create(FR, obj(FR, "r2", "default", metadata={"labels": {"app": "y"}}))
    b = (await kube.patch(FR, "r1", "spec:\n  size: 7\n", "default", content_type=APPLY)).ok()
    assert b["spec"]["size"] == 7  # kmock silently ignored YAML bodies
    created = await kube.patch(FR, "r3", "spec: {size: 3}\n", "default", content_type=APPLY)
    assert created.status == 201 and created.body["metadata"]["name"] == "r3"  # apply creates
    assert (await kube.patch(FR, "r3", {"spec": {"size": 4}}, "default")).status == 200  # not 201 again
    gone = (await kube.request("DELETE", "/apis/fedcare.io/v1alpha1/namespaces/default/federatedrounds",
                               params={"labelSelector": "app=x"})).ok()
    assert [i["metadata"]["name"] for i in gone["items"]] == ["r1"]
    left = (await kube.list(FR, "default")).ok()["items"]
    assert sorted(i["metadata"]["name"] for i in left) == ["r2", "r3"]


@pytest.mark.parametrize(("selector", "expected"), [
    ("app=x", True), ("app==x", True), ("app!=x", False), ("app in (x, y)", True), ("app notin (x)", False),
    ("tier", True), ("!tier", False), ("app=x,tier=db", True), ("app=x,tier=web", False), ("", True),
])
def test_label_selector_grammar(selector: str, expected: bool):
    assert match_labels(selector, {"app": "x", "tier": "db"}) is expected


def test_field_selector_grammar():
    body = {"metadata": {"name": "a", "namespace": "n"}, "spec": {"unschedulable": True}}
    assert match_fields("metadata.name=a,metadata.namespace!=m", body)
    assert match_fields("spec.unschedulable=true", body) and not match_fields("metadata.name==b", body)


async def test_list_selectors_scope_and_version(kube: KubeClient):
    await kube.create(NS, {"metadata": {"name": "other"}})
    await kube.create(FR, obj(FR, "a", "default", metadata={"labels": {"app": "x", "tier": "db"}}))
    await kube.create(FR, obj(FR, "b", "default", metadata={"labels": {"app": "y"}}))
    await kube.create(FR, obj(FR, "c", "other", metadata={"labels": {"app": "x"}}))
    names = lambda reply: sorted(i["metadata"]["name"] for i in reply.ok()["items"])  # noqa: E731
    assert names(await kube.list(FR, "default", labels="app=x")) == ["a"]
    assert names(await kube.list(FR, labels="app=x")) == ["a", "c"]  # all namespaces
    assert names(await kube.list(FR, labels="app in (x,y),!tier")) == ["b", "c"]
    assert names(await kube.list(FR, fields="metadata.namespace=other")) == ["c"]
    listed = (await kube.list(FR)).ok()
    assert listed["kind"] == "FederatedRoundList" and listed["apiVersion"] == "fedcare.io/v1alpha1"
    assert int(listed["metadata"]["resourceVersion"]) == max(rv(i) for i in listed["items"])


async def test_faults_fire_before_any_state_change(emulator: RealisticEmulator, kube: KubeClient):
    before = (await kube.create(FR, obj(FR, "r1", "default"))).ok()
    fault = emulator.inject(kmock.K8sCriteria(method=kmock.method.PATCH, name="r1"),
                            kmock.KubernetesError(500, "InternalError", "injected"), times=2)
    for _ in range(2):
        status, b = await kube.patch(FR, "r1", {"spec": {"size": 2}}, "default")
        assert (status, b["reason"]) == (500, "InternalError")
        assert (await kube.get(FR, "r1", "default")).ok() == before  # untouched, same version
    assert (await kube.patch(FR, "r1", {"spec": {"size": 3}}, "default")).status == 200
    assert fault.hits == 2 and not fault.active
    emulator.inject(lambda req: req.method == "POST", kmock.KubernetesError(403, "Forbidden", "no"))
    assert (await kube.create(FR, obj(FR, "r9", "default"))).status == 403
    assert emulator.peek(FR, "r9", "default") is None  # the refused create stored nothing
    slow = emulator.inject(lambda req: req.method == "GET" and req.name == "r1", delay=0.3, times=None)
    loop = asyncio.get_running_loop()
    start = loop.time()
    assert (await kube.get(FR, "r1", "default")).status == 200
    assert loop.time() - start >= 0.3 and slow.hits == 1 and slow.active


async def test_finalizers_hold_deletion_until_released(kube: KubeClient):
    await kube.create(FR, obj(FR, "f", "default", metadata={"finalizers": ["fedcare.io/finalizer"]}))
    marked = (await kube.delete(FR, "f", "default")).ok()
    assert marked["metadata"]["deletionTimestamp"]
    assert (await kube.get(FR, "f", "default")).status == 200  # still there, being deleted
    more = {"metadata": {"finalizers": ["fedcare.io/finalizer", "other/x"]}}
    assert (await kube.patch(FR, "f", more, "default")).status == 422  # none added while deleting
    await kube.patch(FR, "f", {"metadata": {"finalizers": None}}, "default")
    assert (await kube.get(FR, "f", "default")).status == 404


async def test_deleting_a_namespace_deletes_what_is_in_it(emulator: RealisticEmulator, kube: KubeClient):
    for ns in ("site-a", "site-b"):
        await kube.create(NS, {"metadata": {"name": ns}})
    assert (await kube.get(NS, "site-a")).ok()["status"]["phase"] == "Active"
    await kube.create(FR, obj(FR, "round", "site-a"))
    await kube.create(LEASES, obj(LEASES, "lease", "site-a"))
    held = obj(RA, "held", "site-a", metadata={"finalizers": ["fedcare.io/finalizer"]})
    await kube.create(RA, held)
    await kube.create(FR, obj(FR, "round", "site-b"))
    await kube.create(HN, obj(HN, "rouen"))
    ns = (await kube.delete(NS, "site-a")).ok()
    assert ns["status"]["phase"] == "Terminating" and ns["metadata"]["deletionTimestamp"]
    assert (await kube.get(FR, "round", "site-a")).status == 404
    assert (await kube.get(LEASES, "lease", "site-a")).status == 404
    assert (await kube.get(RA, "held", "site-a")).ok()["metadata"]["deletionTimestamp"]  # waits for its controller
    assert (await kube.create(FR, obj(FR, "late", "site-a"))).status == 403  # terminating: no new content
    assert (await kube.get(NS, "site-a")).status == 200  # Terminating until empty
    await kube.patch(RA, "held", {"metadata": {"finalizers": []}}, "site-a")
    assert (await kube.get(RA, "held", "site-a")).status == 404
    assert (await kube.get(NS, "site-a")).status == 404  # the last object went: so did the namespace
    assert (await kube.get(FR, "round", "site-b")).status == 200  # other namespaces are untouched
    assert (await kube.get(HN, "rouen")).status == 200  # and cluster-scoped objects too
    await kube.create(NS, {"metadata": {"name": "empty"}})
    assert (await kube.delete(NS, "empty")).status == 200 and (await kube.get(NS, "empty")).status == 404


async def test_no_garbage_collection_of_owned_objects(kube: KubeClient):
    """Documented: no GC controller here, so fedcare's finalizer must delete its children."""
    owner = (await kube.create(HN, obj(HN, "rouen"))).ok()
    ref = {"apiVersion": HN.api_version, "kind": HN.kind, "name": "rouen", "uid": owner["metadata"]["uid"]}
    await kube.create(LEASES, obj(LEASES, "child", "default", metadata={"ownerReferences": [ref]}))
    await kube.delete(HN, "rouen")
    assert (await kube.get(LEASES, "child", "default")).status == 200


async def test_request_matching_is_linear_and_dsl_reactions_still_work(emulator: RealisticEmulator,
                                                                        kube: KubeClient):
    calls: list[object] = []
    # A criteria that records every request it sees and never matches:
    emulator[lambda req: calls.append(req) and False] << 500  # type: ignore[index,func-returns-value]
    emulator["get /custom"] << {"hello": "world"}
    for _ in range(10):
        await kube.request("GET", "/version")
    assert len(calls) == 10  # kmock itself re-filters the whole log: 55 calls
    assert (await kube.request("GET", "/custom")).ok() == {"hello": "world"}


async def test_max_history_bounds_request_log_and_object_versions():
    async with fedcare_emulator(max_history=5) as k, KubeClient(k.url) as kube:
        await kube.create(FR, obj(FR, "r1", "default"))
        for size in range(30):
            await kube.patch(FR, "r1", {"spec": {"size": size}}, "default")
        assert len(k._requests) <= 2 * 5 + 1
        assert len(k.objects[kmock.resource("fedcare.io/v1alpha1/federatedrounds"), "default", "r1"].history) == 5
        assert (k.peek(FR, "r1", "default") or {}).get("spec") == {"size": 29}
