"""The availability monitor repairs an Available that another write changed under it."""

from __future__ import annotations

import asyncio

from fedcare.hub.availability import AvailabilityMonitor
from fedcare.hub.heartbeats import HeartbeatTracker


def node(available: str | None) -> dict:
    conds = [{"type": "Available", "status": available}] if available else []
    return {"metadata": {"name": "rouen", "generation": 1}, "spec": {"leaseDurationSeconds": 10},
            "status": {"conditions": conds}}


async def test_a_site_overwritten_to_unknown_is_made_available_again_by_the_next_renewal():
    monitor = AvailabilityMonitor(lambda: None, HeartbeatTracker())
    writes = []

    async def record(view, status, reason, message, stamp):
        writes.append(status.value if status is not None else None)
        if status is not None:
            view.state = status.value
    monitor._write = record                     # the API write itself is not what is tested here
    lease = {"metadata": {"name": "fedcare-agent", "namespace": "fedcare-site-rouen",
                          "labels": {"fedcare.io/site": "rouen"}},
             "spec": {"renewTime": "2026-12-01T07:00:00.000000Z", "holderIdentity": "rouen/a"}}
    monitor.node_seen(node(None))
    monitor.lease_seen(lease)                   # first sight: a baseline, not a renewal
    lease["spec"]["renewTime"] = "2026-12-01T07:00:01.000000Z"
    monitor.lease_seen(lease)
    await asyncio.sleep(0)
    assert writes == ["True"]
    monitor.node_seen(node("Unknown"))          # enrollment wrote its initial Unknown after that
    lease["spec"]["renewTime"] = "2026-12-01T07:00:02.500000Z"
    monitor.lease_seen(lease)
    await asyncio.sleep(0)
    assert writes == ["True", "True"]
    await monitor.close()
