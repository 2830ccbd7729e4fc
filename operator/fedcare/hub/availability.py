"""The hub's ``Available`` condition for one site, driven by its HeartbeatTracker.

Runs as a kopf daemon per HospitalNode: it sleeps until the site's renewal deadline or
the next renewal, whichever comes first, and writes Available only on a transition (plus
``lastHeartbeatTime`` at most once per lease duration), so a thousand healthy sites cost
almost no API writes.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable
from typing import Any

from ..api import conditions as c
from ..api.base import ConditionStatus
from ..integrations.kube import Kube, KubeError
from .heartbeats import HeartbeatTracker
from .hospital_node_service import offers_gpus, write_hub_status

log = logging.getLogger(__name__)


def _utc_now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class Availability:
    def __init__(self, kube: Kube, tracker: HeartbeatTracker, site: str, *, state: str | None = None):
        self.kube, self.tracker, self.site = kube, tracker, site
        self.state = state               # the Available status we last wrote or read ("True", "Unknown", …)
        self.last_stamp = float("-inf")  # hub clock of our last lastHeartbeatTime write

    async def step(self, duration: float, *, generation: int | None, spec: dict[str, Any],
                   stopped: Callable[[], bool]) -> None:
        now = self.tracker.clock()
        renewed = await self.tracker.wait(self.site, self.tracker.deadline(self.site, duration) - now)
        if stopped():
            return
        now = self.tracker.clock()
        if renewed:
            if self.state != ConditionStatus.TRUE.value:
                await self._write(ConditionStatus.TRUE, c.Reason.LEASE_RENEWED,
                                  "the site agent renews its Lease", generation, spec, now)
            elif now - self.last_stamp >= duration:
                await self._write(None, None, "", generation, spec, now)
        elif now >= self.tracker.deadline(self.site, duration) and self.state != ConditionStatus.UNKNOWN.value:
            seen = self.tracker.last_seen(self.site)
            since = f"{now - seen:.0f}s ago" if seen is not None else "not since the hub started"
            await self._write(ConditionStatus.UNKNOWN, c.Reason.LEASE_UPDATE_STOPPED,
                              f"no Lease renewal for {duration:.0f}s (last seen {since}); check the site agent "
                              "and its connection to the hub", generation, spec, None)

    async def _write(self, status: ConditionStatus | None, reason: c.Reason | None, message: str,
                     generation: int | None, spec: dict[str, Any], stamp: float | None) -> None:
        updates = [] if status is None else [c.make(c.ConditionType.AVAILABLE, status, reason, message,
                                                    generation=generation)]
        fields = {"lastHeartbeatTime": _utc_now()} if stamp is not None else None
        try:
            await write_hub_status(self.kube, self.site, updates, generation=generation,
                                   cordoned=bool(spec.get("cordoned")), fields=fields,
                                   offers_gpus=offers_gpus({"spec": spec}))
        except KubeError as err:      # the next step tries again; state is unchanged so nothing is lost
            log.warning("Could not write availability of site %s: %s", self.site, err)
            return
        if status is not None:
            self.state = status.value
            log.info("Site %s is %s (%s)", self.site, "available" if status is ConditionStatus.TRUE
                     else "unavailable", reason.value if reason else "")
        if stamp is not None:
            self.last_stamp = stamp


def current_available(body: dict[str, Any]) -> str | None:
    for cond in (body.get("status") or {}).get("conditions") or []:
        if cond.get("type") == c.ConditionType.AVAILABLE.value:
            return cond.get("status")
    return None
