"""The site agent against the real hub operator, both on the emulated API, NVML faked."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import pathlib

import kmock
import pytest
import yaml

from fedcare.api.hospital_node import AgentVersions
from fedcare.api.resources import API_VERSION, site_namespace
from fedcare.integrations.kube import Kube, Ref
from fedcare.integrations.nvml import NVMLReader
from fedcare.site.agent import SiteAgent
from fedcare.site.heartbeat import Heartbeat
from fedcare.site.reporter import InventoryReporter
from tests.integration.conftest import FAST
from tests.support.fake_nvml import FakeNVML, gpus
from tests.support.harness import eventually, run_operator

ROOT = pathlib.Path(__file__).resolve().parents[2]
NODES = Ref(API_VERSION, "hospitalnodes")
LEASE = 10      # the API's minimum: renewals every 2.5 s, Unknown after 10 s of silence


def node_body(name="rouen", gpu_count=2):
    body = yaml.safe_load((ROOT / "examples" / "hospitalnode-rouen.yaml").read_text())
    body["metadata"]["name"] = name
    body["spec"]["leaseDurationSeconds"] = LEASE
    body["spec"]["gpu"]["count"] = gpu_count
    return body


def cond(obj, ctype):
    for c in (obj or {}).get("status", {}).get("conditions", []):
        if c["type"] == ctype:
            return c
    return {}


def node_ref(name="rouen"):
    return Ref(API_VERSION, "hospitalnodes", None, name)


async def condition_is(api, ctype, status, name="rouen", reason=None):
    obj = await api.get_or_none(node_ref(name))
    c = cond(obj, ctype)
    return obj if c.get("status") == status and (reason is None or c.get("reason") == reason) else None


@pytest.fixture()
def make_agent(apiserver):
    """``async with make_agent(fake) as agent:`` runs one site agent until the block ends."""

    @contextlib.asynccontextmanager
    async def start(nvml, site="rouen", now=None, poll=0.3):
        hub = await apiserver.kube(FAST)
        reporter = InventoryReporter(hub, site, reader=NVMLReader(nvml), poll_interval=poll,
                                     versions=AgentVersions(agent="test", flwr="1.42.0"))
        agent = SiteAgent(site, hub, reporter, agent_id=f"{site}/agent-0",
                          heartbeat=Heartbeat(hub, site, f"{site}/agent-0", now=now))
        await agent.prepare()
        stop = asyncio.Event()
        task = asyncio.create_task(agent.run(stop))
        agent.task, agent.stop = task, stop
        try:
            yield agent
        finally:
            stop.set()
            await asyncio.wait_for(asyncio.gather(task, return_exceptions=True), 10)
            agent.reporter.reader.shutdown()
            await hub.close()

    return start


async def enrolled(hub, api, name="rouen", gpu_count=2):
    await api.create(NODES, node_body(name, gpu_count))
    await eventually(lambda: condition_is(api, "Enrolled", "True", name), timeout=15)


@pytest.mark.tiers
async def test_heartbeat_makes_the_site_available_and_ready(hub, api, make_agent):
    async with hub():
        await enrolled(hub, api)
        async with make_agent(FakeNVML(gpus(2))) as agent:
            obj = await eventually(lambda: condition_is(api, "Ready", "True"), timeout=15)
            assert agent.heartbeat.renewals >= 1
    assert cond(obj, "Available")["reason"] == "LeaseRenewed"
    assert cond(obj, "GPUReady")["status"] == "True"
    status = obj["status"]
    assert status["phase"] == "Ready" and status["gpuSummary"] == "2/2"
    assert status["capacity"]["gpusHealthy"] == 2 and status["versions"]["flwr"] == "1.42.0"
    assert len(status["gpus"]["devices"]) == 2 and status["lastHeartbeatTime"]
    lease = await api.get(Ref("coordination.k8s.io/v1", "leases", site_namespace("rouen"), "fedcare-agent"))
    assert lease["spec"]["holderIdentity"] == "rouen/agent-0"


@pytest.mark.tiers
async def test_stale_heartbeat_flips_available_and_recovers(hub, api, make_agent):
    async with hub():
        await enrolled(hub, api)
        fake = FakeNVML(gpus(1))
        async with make_agent(fake):
            await eventually(lambda: condition_is(api, "Available", "True"), timeout=15)
        # the agent is gone: one lease duration later the hub says Unknown
        obj = await eventually(lambda: condition_is(api, "Available", "Unknown", reason="LeaseUpdateStopped"),
                               timeout=LEASE + 8)
        assert cond(obj, "Ready")["status"] == "False" and obj["status"]["phase"] == "NotReady"
        assert "no Lease renewal for 10s" in cond(obj, "Available")["message"]
        async with make_agent(fake):
            obj = await eventually(lambda: condition_is(api, "Available", "True", reason="LeaseRenewed"),
                                   timeout=10)
    assert cond(obj, "Ready")["status"] == "True"


async def test_unhealthy_gpus_make_the_site_not_ready(hub, api, make_agent):
    fake = FakeNVML(gpus(2))
    async with hub():
        await enrolled(hub, api)
        async with make_agent(fake) as agent:
            await eventually(lambda: condition_is(api, "Ready", "True"), timeout=15)
            writes = agent.reporter.writes
            for g in fake.gpus:
                g.utilization, g.power_mw = 97, 300_000          # telemetry alone: no status write
            await asyncio.sleep(1.0)
            assert agent.reporter.writes == writes
            for g in fake.gpus:
                g.ecc_uncorrectable = 2
            obj = await eventually(lambda: condition_is(api, "Ready", "False", reason="GPUNotReady"), timeout=10)
    assert cond(obj, "GPUReady")["status"] == "False"
    assert "uncorrectable ECC" in cond(obj, "Ready")["message"]
    assert obj["status"]["gpuSummary"] == "0/2"


async def test_site_without_nvml_reports_no_nvml_not_a_crash(hub, api, make_agent):
    fake = FakeNVML(gpus(1), init_error=12)   # NVML_ERROR_LIBRARY_NOT_FOUND
    async with hub():
        await enrolled(hub, api)
        async with make_agent(fake) as agent:
            obj = await eventually(lambda: condition_is(api, "GPUReady", "False", reason="NoNVML"), timeout=15)
            assert not agent.task.done()
    assert obj["status"]["gpus"]["devices"] == [] and obj["status"]["gpus"]["nvmlError"]


async def test_cpu_only_site_is_ready_without_nvml(hub, api, make_agent):
    async with hub():
        await enrolled(hub, api, gpu_count=0)
        async with make_agent(FakeNVML(init_error=12)):
            await eventually(lambda: condition_is(api, "GPUReady", "False", reason="NoNVML"), timeout=15)
            obj = await eventually(lambda: condition_is(api, "Ready", "True"), timeout=15)
    assert obj["status"]["phase"] == "Ready"


async def test_clock_skew_does_not_matter(hub, api, make_agent):
    skewed = lambda: dt.datetime.now(dt.UTC) - dt.timedelta(days=3)  # noqa: E731
    async with hub():
        await enrolled(hub, api)
        async with make_agent(FakeNVML(gpus(1)), now=skewed):
            await eventually(lambda: condition_is(api, "Available", "True"), timeout=15)
            await asyncio.sleep(LEASE * 0.6)
            assert await condition_is(api, "Available", "True")


@pytest.mark.parametrize("code, reason", [(500, "InternalError"), (503, "ServiceUnavailable"),
                                          (409, "Conflict"), (403, "Forbidden")])
async def test_hub_api_errors_are_survived(hub, api, make_agent, emulator, code, reason):
    fake = FakeNVML(gpus(1))
    async with hub():
        await enrolled(hub, api)
        # every agent write fails for a while: Lease renewals and status reports alike
        error = kmock.KubernetesError(code, reason, "injected")
        fault = emulator.inject(kmock.K8sCriteria(method=kmock.method.PATCH, namespace=site_namespace("rouen")),
                                error, times=6)
        status_fault = emulator.inject(kmock.K8sCriteria(method=kmock.method.PATCH, name="rouen"), error, times=3)
        async with make_agent(fake) as agent:
            await eventually(lambda: condition_is(api, "Available", "True"), timeout=20)
            await eventually(lambda: condition_is(api, "GPUReady", "True"), timeout=10)
            assert not agent.task.done()
            assert agent.heartbeat.renewals >= 1
    assert fault.hits == 6 and status_fault.hits >= 1


async def test_hub_outage_keeps_the_inventory_and_reports_it_after(hub, api, make_agent, emulator):
    fake = FakeNVML(gpus(2))
    async with hub():
        await enrolled(hub, api)
        async with make_agent(fake) as agent:
            await eventually(lambda: condition_is(api, "GPUReady", "True"), timeout=15)
            outage = emulator.inject(kmock.K8sCriteria(method=kmock.method.PATCH),
                                     kmock.KubernetesError(503, "ServiceUnavailable", "hub down"), times=None)
            fake.gpus[0].ecc_uncorrectable = 1          # changes while the hub cannot hear it
            await eventually(lambda: outage.hits >= 4, timeout=10)
            assert agent.reporter.inventory.devices[0].healthy is False   # kept, not lost
            outage.times = 0                            # the hub is back
            obj = await eventually(lambda: _summary_is(api, "1/2"), timeout=15)
            assert not agent.task.done()
    assert cond(obj, "GPUReady")["reason"] == "SomeUnhealthy"


class Collect(logging.Handler):
    def __init__(self):
        super().__init__(logging.INFO)
        self.messages: list[str] = []

    def emit(self, record):
        self.messages.append(record.getMessage())


async def test_agent_stops_cleanly_when_its_site_is_deleted(hub, api, make_agent):
    collect = Collect()
    logging.getLogger("fedcare.site").addHandler(collect)
    async with hub():
        await enrolled(hub, api)
        async with make_agent(FakeNVML(gpus(1))) as agent:
            await eventually(lambda: condition_is(api, "Available", "True"), timeout=15)
            await api.delete(node_ref())
            await asyncio.wait_for(agent.task, timeout=20)
            assert agent.gone and "rouen" in agent.gone
    logging.getLogger("fedcare.site").removeHandler(collect)
    assert any("the agent for site rouen is stopping" in m for m in collect.messages)


async def test_agent_refuses_to_start_for_an_unknown_site(emulator):
    from fedcare.site.heartbeat import SiteGone

    hub = Kube.from_url(str(emulator.url), policy=FAST)
    agent = SiteAgent("nowhere", hub, InventoryReporter(hub, "nowhere", reader=None), agent_id="x")
    try:
        with pytest.raises(SiteGone, match="HospitalNode nowhere no longer exists"):
            await agent.prepare()
    finally:
        await hub.close()


@pytest.mark.tiers
async def test_assignments_are_accepted_or_rejected(hub, api, make_agent, apiserver):
    digest = "b" * 64
    ns = site_namespace("rouen")

    def assignment(name, gpus_needed):
        return {"apiVersion": API_VERSION, "kind": "RoundAssignment", "metadata": {"name": name, "namespace": ns},
                "spec": {"roundRef": {"namespace": "default", "name": "r1"}, "nodeName": "rouen",
                         "training": {"image": f"ghcr.io/fedcare/train@sha256:{digest}",
                                      "gpusPerSite": gpus_needed}}}

    async with hub():
        await enrolled(hub, api)
        async with make_agent(FakeNVML(gpus(2))) as agent:
            await eventually(lambda: condition_is(api, "GPUReady", "True"), timeout=15)
            async with run_operator(apiserver, agent.registry(), namespaces=[ns]):
                ras = Ref(API_VERSION, "roundassignments", ns)

                async def phase(name):
                    obj = await api.get(Ref(API_VERSION, "roundassignments", ns, name))
                    return obj if (obj.get("status") or {}).get("phase") else None

                await api.create(ras, assignment("r1-rouen", 1))
                ok = await eventually(lambda: phase("r1-rouen"), timeout=15)
                await api.create(ras, assignment("r2-rouen", 4))
                no = await eventually(lambda: phase("r2-rouen"), timeout=15)
                # two more at once: one GPU is left, so exactly one of them gets it
                await api.create(ras, assignment("r3-rouen", 1))
                await api.create(ras, assignment("r4-rouen", 1))
                third = await eventually(lambda: phase("r3-rouen"), timeout=15)
                fourth = await eventually(lambda: phase("r4-rouen"), timeout=15)
                rv = ok["metadata"]["resourceVersion"]
                await asyncio.sleep(1.0)   # no further writes: answers are idempotent
                assert (await api.get(Ref(API_VERSION, "roundassignments", ns, "r1-rouen")))["metadata"][
                    "resourceVersion"] == rv
    assert ok["status"]["phase"] == "Accepted" and cond(ok, "Accepted")["status"] == "True"
    assert ok["status"]["agentId"] == "rouen/agent-0" and ok["status"]["attempt"] == 1
    assert no["status"]["phase"] == "Rejected"
    assert cond(no, "Accepted")["reason"] == "InsufficientGPU"
    assert no["status"]["message"] == "4 GPU(s) needed, 1 healthy and free (1 reserved by accepted assignments)"
    assert sorted([third["status"]["phase"], fourth["status"]["phase"]]) == ["Accepted", "Rejected"]


@pytest.mark.tiers
async def test_the_agents_kopf_serves_its_namespace_even_when_it_is_created_later(hub, api, apiserver):
    """Started before enrollment creates its namespace, the agent's kopf still answers there
    (restricted mode watches the namespace's path, which may not exist yet). The race that
    restricted mode removes (kopf's namespace scan missing a namespace created between its two
    listings) is not reproduced here; tests/unit/test_kopf_setup.py checks the setting and
    test_real_cluster.py that the agent's real identity meets no 403."""
    ns = site_namespace("rouen")
    kube = await apiserver.kube(FAST)
    reporter = InventoryReporter(kube, "rouen", reader=NVMLReader(FakeNVML(gpus(0))), poll_interval=0.3,
                                 versions=AgentVersions(agent="test", flwr="1.42.0"))
    agent = SiteAgent("rouen", kube, reporter, agent_id="rouen/agent-0")
    try:
        async with run_operator(apiserver, agent.registry(), namespaces=[ns]), hub():
            assert await api.get_or_none(Ref("v1", "namespaces", None, ns)) is None
            await enrolled(hub, api)        # the hub creates the namespace now
            await api.create(Ref(API_VERSION, "roundassignments", ns), {
                "apiVersion": API_VERSION, "kind": "RoundAssignment", "metadata": {"name": "r1-rouen", "namespace": ns},
                "spec": {"roundRef": {"namespace": "default", "name": "r1"}, "nodeName": "rouen",
                         "training": {"image": "ghcr.io/fedcare/train@sha256:" + "b" * 64, "gpusPerSite": 0}}})

            async def answered():
                obj = await api.get(Ref(API_VERSION, "roundassignments", ns, "r1-rouen"))
                return obj if (obj.get("status") or {}).get("phase") else None

            obj = await eventually(answered, timeout=15)
    finally:
        reporter.reader.shutdown()
        await kube.close()
    assert obj["status"]["agentId"] == "rouen/agent-0"


async def _summary_is(api, summary):
    obj = await api.get_or_none(node_ref())
    return obj if (obj or {}).get("status", {}).get("gpuSummary") == summary else None


async def test_malformed_inventory_is_rejected_and_explained(hub, api, make_agent):
    fake = FakeNVML(gpus(2))
    async with hub():
        await enrolled(hub, api)
        async with make_agent(fake) as agent:
            await eventually(lambda: condition_is(api, "GPUReady", "True"), timeout=15)
            fake.gpus[1].memory_total_mib = -4096          # a driver answering nonsense
            obj = await eventually(lambda: condition_is(api, "GPUReady", "False", reason="InvalidInventory"),
                                   timeout=10)
            assert not agent.task.done()
            message = cond(obj, "GPUReady")["message"]
            assert "memoryTotalMiB" in message or "memory_total_mi_b" in message, message
            assert "greater than or equal to 0" in message
            assert len(obj["status"]["gpus"]["devices"]) == 2       # the last good inventory is kept
            fake.gpus[1].memory_total_mib = 81559
            await eventually(lambda: condition_is(api, "GPUReady", "True"), timeout=10)


async def test_hub_lease_watch_recovers_from_api_errors(hub, api, make_agent, emulator):
    """The hub's own Lease list/watch fails for a while: it backs off, re-lists, and catches up."""
    leases = kmock.K8sCriteria(method=kmock.method.GET, resource=kmock.resource("coordination.k8s.io/v1/leases"),
                               namespace=None)
    fault = emulator.inject(leases, kmock.KubernetesError(500, "InternalError", "injected"), times=3)
    async with hub() as logs:
        await enrolled(hub, api)
        async with make_agent(FakeNVML(gpus(1))):
            await eventually(lambda: condition_is(api, "Available", "True"), timeout=20)
    assert fault.hits == 3
    assert logs.grep("Lease watch failed")


async def test_hung_nvml_for_several_polls_makes_gpus_unknown_and_work_refused(hub, api, make_agent, emulator,
                                                                              monkeypatch):
    # A GPU that fell off the bus hangs NVML: after MAX_NVML_TIMEOUTS polls in a row GPUReady is
    # Unknown (NVMLUnresponsive), no GPU counts as healthy, and assignments are refused.
    from fedcare.site import reporter as reporter_module

    monkeypatch.setattr(reporter_module, "NVML_TIMEOUT", 0.1)
    fake = FakeNVML(gpus(2))
    ns = site_namespace("rouen")
    digest = "c" * 64
    ra = {"apiVersion": API_VERSION, "kind": "RoundAssignment", "metadata": {"name": "r9-rouen", "namespace": ns},
          "spec": {"roundRef": {"namespace": "default", "name": "r9"}, "nodeName": "rouen",
                   "training": {"image": f"ghcr.io/fedcare/train@sha256:{digest}", "gpusPerSite": 1}}}
    async with hub():
        await enrolled(hub, api)
        async with make_agent(fake) as agent:
            await eventually(lambda: condition_is(api, "GPUReady", "True"), timeout=15)
            fake.hang_on = "nvmlDeviceGetCount"
            try:
                obj = await eventually(lambda: condition_is(api, "GPUReady", "Unknown", reason="NVMLUnresponsive"),
                                       timeout=15)
                assert agent.reporter.timeouts >= reporter_module.MAX_NVML_TIMEOUTS
                assert agent.reporter.free_gpus == 0 and agent.reporter.gpu_ready_status == "Unknown"
                async with run_operator(emulator, agent.registry(), namespaces=[ns]):
                    await api.create(Ref(API_VERSION, "roundassignments", ns), ra)

                    async def answered():
                        got = await api.get(Ref(API_VERSION, "roundassignments", ns, "r9-rouen"))
                        return got if (got.get("status") or {}).get("phase") else None

                    rejected = await eventually(answered, timeout=15)
                ready = await eventually(lambda: condition_is(api, "Ready", "False", reason="GPUNotReady"),
                                         timeout=10)
            finally:
                fake.hang_on = None
                fake.release.set()
            # NVML answers again: the site recovers by itself.
            await eventually(lambda: condition_is(api, "GPUReady", "True", reason="AllHealthy"), timeout=15)
    assert "did not answer" in cond(obj, "GPUReady")["message"]
    assert obj["status"]["gpuSummary"] == "0/2" and obj["status"]["capacity"]["gpusFree"] == 0
    assert all(not d["healthy"] for d in obj["status"]["gpus"]["devices"])
    assert rejected["status"]["phase"] == "Rejected" and cond(rejected, "Accepted")["reason"] == "InsufficientGPU"
    assert "GPUReady is Unknown" in rejected["status"]["message"]
    assert "NVML does not answer" in cond(ready, "Ready")["message"] or "did not answer" in cond(ready, "Ready")["message"]
