"""Hub-side heartbeat tracking: its own clock, no flapping on restart, renewals only."""

from __future__ import annotations

import asyncio

from fedcare.hub.heartbeats import HeartbeatTracker


class Clock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t


def lease(site: str, renew: str | None, holder: str = "rouen/agent-0", namespace: str | None = None,
          name: str = "fedcare-agent") -> dict:
    spec = {"leaseDurationSeconds": 40}
    if renew:
        spec.update(renewTime=renew, holderIdentity=holder)
    return {"metadata": {"name": name, "namespace": namespace or f"fedcare-site-{site}",
                         "labels": {"fedcare.io/site": site, "app.kubernetes.io/managed-by": "fedcare"}},
            "spec": spec}


def test_first_sight_after_restart_is_not_a_renewal_but_grants_a_full_grace():
    clock = Clock()
    t = HeartbeatTracker(clock=clock)
    assert t.observe(lease("rouen", "2026-11-28T03:00:00.000000Z")) is None
    assert t.last_seen("rouen") is None
    assert t.deadline("rouen", 40) == 1040.0


def test_renewal_uses_the_hubs_clock_not_the_agents():
    clock = Clock()
    t = HeartbeatTracker(clock=clock)
    t.observe(lease("rouen", None))
    clock.t = 1010.0
    # the agent's clock is a day behind: irrelevant, only the change counts
    assert t.observe(lease("rouen", "2026-11-27T03:00:00.000000Z")) == "rouen"
    assert t.last_seen("rouen") == 1010.0 and t.deadline("rouen", 40) == 1050.0


def test_a_replayed_event_is_not_a_renewal():
    t = HeartbeatTracker(clock=Clock())
    t.observe(lease("rouen", "2026-11-28T03:00:00.000000Z"))
    assert t.observe(lease("rouen", "2026-11-28T03:00:00.000000Z")) is None


def test_unlabelled_leases_are_ignored():
    t = HeartbeatTracker(clock=Clock())
    assert t.observe({"metadata": {"name": "x"}, "spec": {"renewTime": "t"}}) is None


def test_only_the_sites_own_lease_counts_whatever_its_labels_say():
    """A Lease labelled for rouen in another namespace (anyone with a leader-election grant can
    make one) or with another name in rouen's namespace never keeps rouen available."""
    clock = Clock()
    t = HeartbeatTracker(clock=clock)
    for forged in (lease("rouen", None, namespace="kube-system"), lease("rouen", None, name="leader")):
        t.observe(forged)
    clock.t = 1010.0
    assert t.observe(lease("rouen", "2026-11-28T03:00:00Z", namespace="kube-system")) is None
    assert t.observe(lease("rouen", "2026-11-28T03:00:00Z", name="leader")) is None
    assert t.last_seen("rouen") is None
    # and the real one, labelled for nobody, counts: the place is the identity
    real = lease("rouen", None)
    real["metadata"]["labels"] = {}
    t.observe(real)
    real["spec"].update(renewTime="2026-11-28T03:00:10Z", holderIdentity="rouen/agent-0")
    assert t.observe(real) == "rouen"


async def test_wait_returns_on_renewal_or_times_out():
    t = HeartbeatTracker()
    t.observe(lease("rouen", None))
    assert await t.wait("rouen", 0.01) is False
    waiter = asyncio.create_task(t.wait("rouen", 5))
    await asyncio.sleep(0)
    t.observe(lease("rouen", "2026-11-28T03:00:10.000000Z"))
    assert await asyncio.wait_for(waiter, 1) is True
    assert await t.wait("rouen", 0.01) is False     # the signal was consumed
