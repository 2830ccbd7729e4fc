"""The agent's heartbeat: renew the site's Lease on the hub every quarter of its duration.

Cheap by design (one small PATCH, no status write) and outage-tolerant: failures back off
(capped at the renewal interval, so a returning hub hears from us promptly) and never end
the loop. Only the site's disappearance ends it: the HospitalNode was deleted, so there is
nothing left to report to.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import Callable

from .. import metrics
from ..api import resources as r
from ..integrations.kube import Forbidden, Kube, KubeError, NotFound, Ref, RetryPolicy

log = logging.getLogger(__name__)


class SiteGone(Exception):
    """The site's HospitalNode no longer exists on the hub: the agent must stop."""


def micro_time(now: dt.datetime | None = None) -> str:
    now = now or dt.datetime.now(dt.UTC)
    return now.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def lease_ref(site: str) -> Ref:
    return Ref("coordination.k8s.io/v1", "leases", r.site_namespace(site), r.LEASE_NAME)


def node_ref(site: str) -> Ref:
    return Ref(r.API_VERSION, r.HOSPITAL_NODES.plural, None, site)


async def check_site_exists(hub: Kube, site: str) -> None:
    """Raise SiteGone if the hub says the HospitalNode is gone (404, or 403 once its RBAC went)."""
    try:
        node = await hub.get(node_ref(site))
    except (NotFound, Forbidden) as err:
        raise SiteGone(f"HospitalNode {site} no longer exists on the hub ({err.status} {err.reason})") from None
    if node["metadata"].get("deletionTimestamp"):
        raise SiteGone(f"HospitalNode {site} is being deleted on the hub")


class Heartbeat:
    def __init__(self, hub: Kube, site: str, agent_id: str, *, lease_seconds: int = 40,
                 now: Callable[[], dt.datetime] | None = None):
        self.hub, self.site, self.agent_id = hub, site, agent_id
        self.lease_seconds = lease_seconds
        self.now = now or (lambda: dt.datetime.now(dt.UTC))
        self.renewals = 0
        self.failures = 0

    @property
    def interval(self) -> float:
        return self.lease_seconds / 4

    async def renew(self) -> None:
        patch = {"spec": {"holderIdentity": self.agent_id, "leaseDurationSeconds": self.lease_seconds,
                          "renewTime": micro_time(self.now())}}
        # Fail fast: a renewal that waits on retries is late anyway; the loop retries soon.
        hub = self.hub.with_policy(RetryPolicy(attempts=2, base_delay=0.2, max_delay=0.5,
                                               timeout=min(10.0, self.interval)))
        try:
            await hub.patch(lease_ref(self.site), patch)
        except (NotFound, Forbidden):
            metrics.RENEWAL_FAILURES.labels(metrics.label_value(self.site)).inc()
            await check_site_exists(self.hub, self.site)
            raise
        except KubeError:
            metrics.RENEWAL_FAILURES.labels(metrics.label_value(self.site)).inc()
            raise
        self.renewals += 1
        metrics.RENEWALS.labels(metrics.label_value(self.site)).inc()

    def backoff(self) -> float:
        return min(self.interval, 0.5 * 2 ** min(self.failures, 8))

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await self.renew()
                if self.failures:
                    log.info("Renewed the Lease of site %s again after %d failed attempts", self.site, self.failures)
                self.failures = 0
                delay = self.interval
            except SiteGone:
                raise
            except KubeError as err:
                self.failures += 1
                if self.failures == 1 or self.failures % 10 == 0:
                    log.warning("Could not renew the Lease of site %s (%d failures): %s", self.site,
                                self.failures, err)
                delay = self.backoff()
            try:
                await asyncio.wait_for(stop.wait(), timeout=delay)
            except asyncio.TimeoutError:
                pass
