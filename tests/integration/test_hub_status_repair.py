"""The hub's part of a HospitalNode status is the hub's: an outside write to Available,
lastHeartbeatTime, Ready or Enrolled is put back (on the next event, or the next resync), and
an upgrade from the per-site Role to the chart's ClusterRole converges. On the emulator, where
no admission policy stops anyone (on a real cluster the policy stops site agents; see
test_hub_rbac_real.py): what is tested here is the hub's own repair."""

from __future__ import annotations

import asyncio
import copy

import pytest

from fedcare.api.resources import API_VERSION, site_namespace
from fedcare.hub import enrollment as e
from fedcare.hub.availability import AvailabilityMonitor
from fedcare.hub.heartbeats import HeartbeatTracker
from fedcare.hub.resync import resync_once
from fedcare.integrations.kube import Conflict, Ref
from tests.integration.test_site_agent import FakeNVML, cond, condition_is, enrolled, gpus, make_agent  # noqa: F401
from tests.support.harness import eventually

NODE = Ref(API_VERSION, "hospitalnodes", None, "rouen")
NS = site_namespace("rouen")
RBAC = "rbac.authorization.k8s.io/v1"


async def _forge(api, ctype: str | None = None, *, drop: bool = False, **fields) -> dict:
    """What a foreign writer does: patch the status subresource directly, as an admin could."""
    for _ in range(20):
        try:
            return await _forge_once(api, ctype, drop=drop, **fields)
        except Conflict:          # the hub wrote meanwhile: read again, as any careful writer does
            await asyncio.sleep(0.05)
    raise AssertionError("the status kept changing under the forging write")


async def _forge_once(api, ctype: str | None, *, drop: bool, **fields) -> dict:
    obj = await api.get(NODE)
    conds = []
    for c in obj["status"]["conditions"]:
        if c["type"] == ctype:
            if drop:
                continue
            c = dict(c, status="True" if c["status"] != "True" else "False", reason="Forged",
                     message="written outside the hub")
        conds.append(c)
    return await api.patch(NODE, {"metadata": {"resourceVersion": obj["metadata"]["resourceVersion"]},
                                  "status": {"conditions": conds, **fields}}, status=True)


async def _events(api, reason: str) -> list[dict]:
    return [ev for ev in await api.list(Ref("v1", "events"))
            if ev.get("reason") == reason]


async def test_a_forged_available_is_put_back_and_ready_follows(hub, api):
    async with hub() as logs:
        await enrolled(hub, api, gpu_count=0)
        before = await api.get(NODE)
        assert cond(before, "Available")["reason"] == "AgentNotConnected"
        assert cond(before, "Ready")["status"] == "False"
        forged = await _forge(api, "Available")
        assert cond(forged, "Available")["status"] == "True"
        obj = await eventually(lambda: condition_is(api, "Available", "Unknown", reason="AgentNotConnected"),
                               timeout=15, interval=0.1)
        obj = await eventually(lambda: condition_is(api, "Ready", "False", reason="SiteUnavailable"),
                               timeout=15, interval=0.1)
        assert cond(obj, "Available")["message"] == cond(before, "Available")["message"]
        repaired = await eventually(lambda: _events(api, "HubStatusRepaired"), timeout=10)
        # a dropped Available comes back too
        await _forge(api, "Available", drop=True)
        await eventually(lambda: condition_is(api, "Available", "Unknown", reason="AgentNotConnected"), timeout=15)
    assert repaired[0]["type"] == "Warning" and "found Available=True (Forged)" in repaired[0]["message"]
    assert logs.grep("the hub's status was changed outside the hub")


async def test_a_forged_lease_state_and_heartbeat_time_are_put_back_while_the_agent_runs(hub, api, make_agent):
    async with hub():
        await enrolled(hub, api, gpu_count=0)
        async with make_agent(FakeNVML(gpus(0))):
            await eventually(lambda: condition_is(api, "Ready", "True"), timeout=20)
            stamp = (await api.get(NODE))["status"]["lastHeartbeatTime"]
            await _forge(api, "Available", lastHeartbeatTime="2001-01-01T00:00:00Z")

            async def restored():
                obj = await condition_is(api, "Available", "True", reason="LeaseRenewed")
                return obj if obj and obj["status"]["lastHeartbeatTime"] != "2001-01-01T00:00:00Z" else None

            obj = await eventually(restored, timeout=15, interval=0.1)
    assert obj["status"]["lastHeartbeatTime"] >= stamp
    assert cond(obj, "Ready")["status"] == "True"


async def test_a_forged_enrolled_is_put_back_by_the_resync(hub, api):
    async with hub(resync_seconds=5):
        await enrolled(hub, api, gpu_count=0)
        await _forge(api, "Enrolled", phase="Ready", siteNamespace="elsewhere")
        assert await condition_is(api, "Enrolled", "False", reason="Forged")
        obj = await eventually(lambda: condition_is(api, "Enrolled", "True", reason="SiteNamespaceReady"),
                               timeout=20, interval=0.2)
    assert obj["status"]["siteNamespace"] == NS and obj["status"]["phase"] == "NotReady"


async def test_the_resync_repairs_available_when_the_event_was_missed(api):
    """No watch here: only the resync pass shows the monitor the node."""
    await api.create(Ref(API_VERSION, "hospitalnodes"), {"apiVersion": API_VERSION, "kind": "HospitalNode",
                                                         "metadata": {"name": "rouen"}, "spec": {"gpu": {"count": 0}}})
    monitor = AvailabilityMonitor(lambda: api, HeartbeatTracker())
    await resync_once(api, monitor.node_seen)          # enrolls: Available Unknown/AgentNotConnected
    monitor.node_seen(await api.get(NODE))             # the monitor learns what the hub wrote
    await _forge(api, "Available")
    assert (await condition_is(api, "Available", "True", reason="Forged"))
    await resync_once(api, monitor.node_seen)
    await eventually(lambda: condition_is(api, "Available", "Unknown", reason="AgentNotConnected"), timeout=10)
    await monitor.close()


@pytest.mark.tiers
async def test_the_per_site_role_of_earlier_versions_is_replaced(hub, api):
    async with hub():
        await enrolled(hub, api, gpu_count=0)
    node = await api.get(NODE)
    binding = Ref(RBAC, "rolebindings", NS, e.SITE_ROLE)
    old = copy.deepcopy(await api.get(binding))
    await api.delete(binding)
    for gone in ("resourceVersion", "uid", "creationTimestamp", "managedFields"):
        old["metadata"].pop(gone, None)
    old["roleRef"] = {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": e.SITE_ROLE}
    await api.create(Ref(RBAC, "rolebindings", NS), old)
    role = {"apiVersion": RBAC, "kind": "Role",
            "metadata": {"name": e.SITE_ROLE, "namespace": NS, "ownerReferences": [e.owner_reference(node)]},
            "rules": e.site_role_rules()}
    await api.create(Ref(RBAC, "roles", NS), role)
    async with hub() as logs:                           # the upgraded hub resumes the site

        async def migrated():
            now = await api.get_or_none(binding)     # absent for a moment: roleRef is immutable, the
            return now if now and now["roleRef"]["kind"] == "ClusterRole" else None   # hub deletes + creates

        now = await eventually(migrated, timeout=20, interval=0.2)
        await eventually(lambda: _gone(api, Ref(RBAC, "roles", NS, e.SITE_ROLE)), timeout=10)
    assert now["roleRef"]["name"] == e.SITE_AGENT_CLUSTER_ROLE
    assert logs.grep("Deleted the earlier per-site Role fedcare-site-rouen/fedcare-site")


async def _gone(api, ref) -> bool:
    await asyncio.sleep(0)
    return await api.get_or_none(ref) is None


class _EchoingKube:
    """The API client as the hub sees it under load: the watch event of each status write is
    handed to the monitor *before* the PATCH answer returns (and GETs are counted)."""

    def __init__(self, api, monitor_of):
        self.api, self.monitor_of, self.gets = api, monitor_of, 0

    def __getattr__(self, name):
        return getattr(self.api, name)

    async def get_or_none(self, ref):
        self.gets += 1
        return await self.api.get_or_none(ref)

    async def get(self, ref):
        self.gets += 1
        return await self.api.get(ref)

    async def patch(self, ref, body, **kw):
        obj = await self.api.patch(ref, body, **kw)
        if kw.get("status") and ref.plural == "hospitalnodes":
            self.monitor_of().node_seen(copy.deepcopy(obj))      # the event, ahead of the answer
        return obj


def _lease(renew: str) -> dict:
    return {"metadata": {"name": e.LEASE_NAME, "namespace": NS},
            "spec": {"renewTime": renew, "holderIdentity": "rouen/agent"}}


async def test_the_hubs_own_writes_are_not_repaired_when_their_event_comes_first(api):
    """Each lastHeartbeatTime / Available write of the monitor comes back on the watch; when
    that event overtakes the PATCH answer it is still the hub's own write: no re-read, no
    repair, no HubStatusRepaired (at 1,000 sites these re-reads filled the transition slots)."""
    await api.create(Ref(API_VERSION, "hospitalnodes"), {"apiVersion": API_VERSION, "kind": "HospitalNode",
                                                         "metadata": {"name": "rouen"},
                                                         "spec": {"gpu": {"count": 0}, "leaseDurationSeconds": 10}})
    await resync_once(api)                                  # enrolled: Available Unknown (AgentNotConnected)
    now = [1000.0]
    monitor: AvailabilityMonitor | None = None
    kube = _EchoingKube(api, lambda: monitor)
    monitor = AvailabilityMonitor(lambda: kube, HeartbeatTracker(clock=lambda: now[0]))
    monitor.node_seen(await api.get(NODE))
    monitor.lease_seen(_lease("2026-12-01T10:00:00.000000Z"))      # first sight: not a renewal
    monitor.lease_seen(_lease("2026-12-01T10:00:02.500000Z"))      # renewal: Available True + stamp
    await eventually(lambda: condition_is(api, "Available", "True", reason="LeaseRenewed"), timeout=10)
    stamped = (await api.get(NODE))["status"]["lastHeartbeatTime"]
    for i in range(3):                                      # later renewals, one stamp write per duration
        now[0] += 11
        await asyncio.sleep(1.1)                            # a new second: a new lastHeartbeatTime value
        monitor.lease_seen(_lease(f"2026-12-01T10:00:{5 + i}.000000Z"))
        await asyncio.sleep(0.2)
    await asyncio.gather(*monitor._writes)
    after = await api.get(NODE)
    assert after["status"]["lastHeartbeatTime"] != stamped             # the stamps were written
    assert kube.gets == 0, "the monitor re-read the node for its own writes"
    assert not await _events(api, "HubStatusRepaired")
    await monitor.close()


async def test_enrollment_from_an_old_event_keeps_the_monitors_available(api):
    """The HospitalNode handler may run on an event older than the monitor's last write (kopf
    queues events while the API server is busy; at 1,000 sites enrollment outlasts a lease
    duration). It must not write its first Available (AgentNotConnected) over the monitor's,
    and the monitor must then find nothing to repair (they fought at scale: HubStatusRepaired)."""
    await api.create(Ref(API_VERSION, "hospitalnodes"), {"apiVersion": API_VERSION, "kind": "HospitalNode",
                                                         "metadata": {"name": "rouen"},
                                                         "spec": {"gpu": {"count": 0}, "leaseDurationSeconds": 10}})
    stale = await api.get(NODE)                             # the event a late handler run sees: no status
    now = [1000.0]
    monitor = AvailabilityMonitor(lambda: api, HeartbeatTracker(clock=lambda: now[0]))
    monitor.node_seen(stale)
    runner = asyncio.create_task(monitor.run())
    now[0] += 11                                            # a lease duration before enrollment is done:
    monitor._wakeup.set()                                   # no Available yet, so the monitor leaves it
    await asyncio.sleep(0.2)
    assert cond(await api.get(NODE), "Available") == {}
    await resync_once(api)                                  # enrollment: Available Unknown (AgentNotConnected)
    monitor.node_seen(await api.get(NODE))
    monitor.lease_seen(_lease("2026-12-01T10:00:00.000000Z"))
    monitor.lease_seen(_lease("2026-12-01T10:00:02.500000Z"))      # the agent connects: Available True
    await eventually(lambda: condition_is(api, "Available", "True", reason="LeaseRenewed"), timeout=10)
    from fedcare.hub import hospital_node_service as nodes
    import logging

    await nodes.reconcile(api, stale, logging.getLogger("test"))          # the handler, on the old event
    obj = await api.get(NODE)
    assert cond(obj, "Enrolled")["status"] == "True"
    assert cond(obj, "Available")["reason"] == "LeaseRenewed"
    monitor.node_seen(obj)
    await asyncio.sleep(0.3)
    await asyncio.gather(*monitor._writes)
    assert not await _events(api, "HubStatusRepaired")
    assert cond(await api.get(NODE), "Available")["reason"] == "LeaseRenewed"
    runner.cancel()
    await monitor.close()
