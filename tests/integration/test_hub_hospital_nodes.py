"""HospitalNode enrollment by the real hub operator (kopf) against the emulated API."""

from __future__ import annotations

import copy
import pathlib

import pytest
import yaml

from fedcare.api.resources import API_VERSION, FINALIZER
from fedcare.integrations.kube import Ref
from tests.support.harness import eventually

ROOT = pathlib.Path(__file__).resolve().parents[2]
NODES = Ref(API_VERSION, "hospitalnodes")
NODE = yaml.safe_load((ROOT / "examples" / "hospitalnode-rouen.yaml").read_text())
SITE_NS = "fedcare-site-rouen"


def node_ref(name="rouen"):
    return Ref(API_VERSION, "hospitalnodes", None, name)


CHILDREN = [
    Ref("v1", "namespaces", None, SITE_NS),
    Ref("v1", "serviceaccounts", SITE_NS, "fedcare-agent"),
    Ref("rbac.authorization.k8s.io/v1", "rolebindings", SITE_NS, "fedcare-site"),
    Ref("rbac.authorization.k8s.io/v1", "clusterroles", None, "fedcare-site-rouen"),
    Ref("rbac.authorization.k8s.io/v1", "clusterrolebindings", None, "fedcare-site-rouen"),
    Ref("coordination.k8s.io/v1", "leases", SITE_NS, "fedcare-agent"),
]


def condition(obj, ctype):
    for cond in (obj.get("status") or {}).get("conditions") or []:
        if cond["type"] == ctype:
            return cond
    return None


async def children(api):
    return [await api.get_or_none(ref) for ref in CHILDREN]


async def enrolled(api, name="rouen"):
    obj = await api.get_or_none(node_ref(name))
    cond = obj and condition(obj, "Enrolled")
    return obj if cond and cond["status"] == "True" else None


@pytest.mark.tiers
async def test_create_enrolls_the_site(hub, api):
    async with hub() as logs:
        await api.create(NODES, copy.deepcopy(NODE))
        obj = await eventually(lambda: enrolled(api), timeout=15)
    assert all(await children(api))
    status = obj["status"]
    assert status["siteNamespace"] == SITE_NS
    assert status["observedGeneration"] == 1
    assert condition(obj, "Available")["status"] == "Unknown"
    assert condition(obj, "Available")["reason"] == "AgentNotConnected"
    ready = condition(obj, "Ready")
    assert ready["status"] == "False" and ready["reason"] == "SiteUnavailable"
    assert status["phase"] == "NotReady"
    assert FINALIZER in obj["metadata"]["finalizers"]
    binding = await api.get(CHILDREN[2])
    assert binding["metadata"]["ownerReferences"][0]["uid"] == obj["metadata"]["uid"]
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                                  "name": "fedcare:site-agent"}     # the chart's, not one per site
    assert logs.grep("Created Namespace fedcare-site-rouen")


async def test_invalid_node_is_reported_and_creates_nothing(hub, api):
    bad = copy.deepcopy(NODE)
    bad["spec"]["gpu"]["count"] = -3
    bad["spec"]["leaseDurationSeconds"] = 5

    async def reported():
        obj = await api.get_or_none(node_ref())
        cond = obj and condition(obj, "Ready")
        return obj if cond and cond["reason"] == "InvalidSpec" else None

    async with hub() as logs:
        await api.create(NODES, bad)
        obj = await eventually(reported, timeout=15)
        events = await eventually(lambda: _events_for(api, "rouen"), timeout=10)
    ready = condition(obj, "Ready")
    assert ready["status"] == "False"
    assert "spec.gpu.count" in ready["message"] and "spec.leaseDurationSeconds" in ready["message"]
    assert obj["status"]["phase"] == "Invalid"
    assert any(e["reason"] == "InvalidSpec" and e["type"] == "Warning" and "spec.gpu.count" in e["message"]
               for e in events)
    assert await children(api) == [None] * len(CHILDREN)
    # a permanent error: kopf did not retry it in a loop
    assert len(logs.grep("failed permanently")) <= 1


async def test_fixing_an_invalid_node_enrolls_it(hub, api):
    bad = copy.deepcopy(NODE)
    bad["spec"]["cordoned"] = "maybe"
    async with hub():
        await api.create(NODES, bad)
        await eventually(lambda: _reason_is(api, "Ready", "InvalidSpec"), timeout=15)
        await api.patch(node_ref(), {"spec": {"cordoned": True}})
        obj = await eventually(lambda: enrolled(api), timeout=15)
        obj = await eventually(lambda: _reason_is(api, "Ready", "SiteUnavailable"), timeout=10)
    assert obj["status"]["observedGeneration"] == 2


@pytest.mark.tiers
async def test_delete_removes_every_child(hub, api):
    async with hub() as logs:
        await api.create(NODES, copy.deepcopy(NODE))
        await eventually(lambda: enrolled(api), timeout=15)
        await api.delete(node_ref())

        async def gone():
            return await api.get_or_none(node_ref()) is None

        await eventually(gone, timeout=15)

    async def all_children_gone():   # a real namespace is Terminating until its controller empties it
        return await children(api) == [None] * len(CHILDREN)

    await eventually(all_children_gone, timeout=60, interval=0.5)
    assert logs.grep("Deleted Namespace fedcare-site-rouen")


async def test_restart_mid_way_creates_no_duplicates(hub, api, emulator):
    async with hub():
        await api.create(NODES, copy.deepcopy(NODE))
        await eventually(lambda: enrolled(api), timeout=15)
    # while the hub is down: a second site arrives and someone deletes a child of the first
    second = copy.deepcopy(NODE)
    second["metadata"]["name"] = "lyon"
    await api.create(NODES, second)
    await api.delete(CHILDREN[3])
    before = await api.get(node_ref())
    async with hub() as logs:
        await eventually(lambda: enrolled(api, "lyon"), timeout=15)
        await eventually(lambda: api.get_or_none(CHILDREN[3]), timeout=15)
    assert all(await children(api))
    after = await api.get(node_ref())
    assert after["metadata"]["uid"] == before["metadata"]["uid"]
    namespaces = [n["metadata"]["name"] for n in await api.list(Ref("v1", "namespaces"))]
    assert namespaces.count(SITE_NS) == 1 and namespaces.count("fedcare-site-lyon") == 1
    # the Enrolled condition kept its transition time: the restart changed nothing observable
    assert condition(after, "Enrolled")["lastTransitionTime"] == condition(before, "Enrolled")["lastTransitionTime"]
    assert not logs.grep("Created Namespace fedcare-site-rouen")


async def _events_for(api, name):
    events = await api.list(Ref("v1", "events"))
    return [e for e in events if (e.get("involvedObject") or {}).get("name") == name] or None


async def _reason_is(api, ctype, reason, name="rouen"):
    obj = await api.get_or_none(node_ref(name))
    cond = obj and condition(obj, ctype)
    return obj if cond and cond["reason"] == reason else None


@pytest.mark.tiers
async def test_two_status_writers_never_overwrite_each_other(hub, api):
    """The hub and the agent write one status; resourceVersion preconditions make both survive."""
    import asyncio

    from fedcare.api import conditions as c
    from fedcare.status_writer import write_status

    async with hub():
        await api.create(NODES, copy.deepcopy(NODE))
        obj = await eventually(lambda: enrolled(api), timeout=15)
    stale = copy.deepcopy(obj)
    gpu = c.make("GPUReady", True, "Healthy", "2/2 healthy")
    enrolled_again = c.make("Enrolled", True, "Enrolled", "still enrolled, rewritten")
    # Both writers start from the same (soon stale) copy: one of them must get 409 and re-read.
    await asyncio.gather(
        write_status(api, node_ref(), owned_types={"GPUReady"}, updates=[gpu], known=copy.deepcopy(stale)),
        write_status(api, node_ref(), owned_types={"Enrolled"}, updates=[enrolled_again], known=copy.deepcopy(stale)))
    final = c.parse((await api.get(node_ref()))["status"]["conditions"])
    by_type = {x.type: x for x in final}
    assert by_type["GPUReady"].message == "2/2 healthy"
    assert by_type["Enrolled"].message == "still enrolled, rewritten"
    # a write with a stale resourceVersion is refused by the server itself
    from fedcare.integrations.kube import Conflict
    with pytest.raises(Conflict):
        await api.patch(node_ref(), {"metadata": {"resourceVersion": stale["metadata"]["resourceVersion"]},
                                     "status": {"phase": "Pending"}}, status=True)


@pytest.mark.tiers
async def test_a_pre_existing_namespace_is_never_taken_over_nor_deleted(hub, api):
    """A user's own `fedcare-site-rouen` namespace: enrollment refuses it, deletion leaves it."""
    ns_ref = Ref("v1", "namespaces", None, SITE_NS)
    await api.create(Ref("v1", "namespaces"), {"apiVersion": "v1", "kind": "Namespace",
                                                "metadata": {"name": SITE_NS, "labels": {"team": "radiology"}}})
    async with hub() as logs:
        await api.create(NODES, copy.deepcopy(NODE))

        async def refused():
            obj = await api.get_or_none(node_ref())
            cond = obj and condition(obj, "Enrolled")
            return obj if cond and cond["reason"] == "ObjectNotOwned" else None

        obj = await eventually(refused, timeout=15)
        msg = condition(obj, "Enrolled")["message"]
        assert "Namespace fedcare-site-rouen already exists and was not created by fedcare" in msg
        ns = await api.get(ns_ref)
        assert ns["metadata"]["labels"] == {"team": "radiology", **{k: v for k, v in ns["metadata"]["labels"].items()
                                                                     if k.startswith("kubernetes.io/")}}
        assert not ns["metadata"].get("ownerReferences")
        assert await api.get_or_none(Ref("v1", "serviceaccounts", SITE_NS, "fedcare-agent")) is None
        await api.delete(node_ref())

        async def gone():
            return await api.get_or_none(node_ref()) is None

        await eventually(gone, timeout=15)
        assert logs.grep("Left Namespace fedcare-site-rouen alone")
    assert (await api.get(ns_ref))["status"].get("phase", "Active") == "Active"
