"""Drift is repaired: a deleted Lease comes back, a failed answer is retried, and only a write
that reconciled the spec moves observedGeneration."""

from __future__ import annotations

import copy
import pathlib

import kmock
import yaml

from fedcare.api.resources import API_VERSION, site_namespace
from fedcare.hub.hospital_node_service import write_hub_status
from fedcare.integrations.kube import Ref
from tests.integration.test_site_agent import FakeNVML, condition_is, enrolled, gpus, make_agent  # noqa: F401
from tests.support.harness import eventually, run_operator

ROOT = pathlib.Path(__file__).resolve().parents[2]
LEASE = Ref("coordination.k8s.io/v1", "leases", site_namespace("rouen"), "fedcare-agent")


async def test_a_deleted_lease_is_recreated_by_the_resync(hub, api):
    async with hub(resync_seconds=5) as logs:
        await enrolled(hub, api)
        await api.delete(LEASE)
        assert await api.get_or_none(LEASE) is None
        lease = await eventually(lambda: api.get_or_none(LEASE), timeout=20, interval=0.2)
    assert lease["metadata"]["ownerReferences"][0]["kind"] == "HospitalNode"
    assert logs.grep("Created Lease fedcare-site-rouen/fedcare-agent")


async def test_a_failed_answer_is_retried_without_a_new_event(hub, api, make_agent, apiserver):
    ns = site_namespace("rouen")
    body = {"apiVersion": API_VERSION, "kind": "RoundAssignment", "metadata": {"name": "r1-rouen", "namespace": ns},
            "spec": {"roundRef": {"namespace": "default", "name": "r1"}, "nodeName": "rouen",
                     "training": {"image": "ghcr.io/fedcare/train@sha256:" + "b" * 64, "gpusPerSite": 1}}}
    async with hub():
        await enrolled(hub, api)
        async with make_agent(FakeNVML(gpus(2))) as agent:
            agent.answer_resync_seconds = 1.0
            await eventually(lambda: condition_is(api, "GPUReady", "True"), timeout=15)
            # every status write to the assignment fails for a while: more than the client's retries
            fault = apiserver.emulator.inject(
                kmock.K8sCriteria(method=kmock.method.PATCH, namespace=ns, name="r1-rouen"),
                kmock.KubernetesError(500, "InternalError", "injected"), times=4)
            async with run_operator(apiserver, agent.registry(), namespaces=[ns]) as logs:
                await api.create(Ref(API_VERSION, "roundassignments", ns), body)

                async def answered():
                    obj = await api.get(Ref(API_VERSION, "roundassignments", ns, "r1-rouen"))
                    return obj if (obj.get("status") or {}).get("phase") else None

                obj = await eventually(answered, timeout=20, interval=0.2)
    assert obj["status"]["phase"] == "Accepted"
    assert fault.exhausted if hasattr(fault, "exhausted") else True
    assert logs.grep("Could not answer the assignment")


async def test_only_a_reconcile_moves_observed_generation(hub, api):
    async with hub():
        obj = await enrolled(hub, api)
    node = await api.get(Ref(API_VERSION, "hospitalnodes", None, "rouen"))
    assert node["status"]["observedGeneration"] == 1
    # a heartbeat-style write for a newer generation that nobody reconciled
    await write_hub_status(api, "rouen", [], generation=7, cordoned=False)
    node = await api.get(Ref(API_VERSION, "hospitalnodes", None, "rouen"))
    assert node["status"]["observedGeneration"] == 1
    await write_hub_status(api, "rouen", [], generation=7, cordoned=False, observed=True)
    node = await api.get(Ref(API_VERSION, "hospitalnodes", None, "rouen"))
    assert node["status"]["observedGeneration"] == 7
