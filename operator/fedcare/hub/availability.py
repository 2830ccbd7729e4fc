"""The hub's ``Available`` condition for every site, from one monitor task.

One asyncio task watches all sites' deadlines (a heap keyed by hub-clock deadline) instead
of one kopf daemon per HospitalNode: a thousand sites cost one timer, not a thousand
tasks with their own state. Renewals (from the Lease watch) and node events (from the
HospitalNode watch) feed it; it writes ``Available`` only on a transition, plus
``lastHeartbeatTime`` at most once per lease duration, so healthy sites cost few writes.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import heapq
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .. import events, metrics
from ..api import conditions as c
from ..api.base import ConditionStatus
from ..integrations.kube import Kube, KubeError
from .heartbeats import HeartbeatTracker
from .hospital_node_service import lease_duration, offers_gpus, write_hub_status

log = logging.getLogger(__name__)
TRUE, UNKNOWN = ConditionStatus.TRUE.value, ConditionStatus.UNKNOWN.value
RETRY_SECONDS = 5.0


def _utc_now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def current_available(body: dict[str, Any]) -> str | None:
    return (c.raw_condition(body, c.ConditionType.AVAILABLE.value) or {}).get("status")


@dataclass
class SiteView:
    name: str
    duration: float
    generation: int | None
    spec: dict[str, Any]
    state: str | None                     # the Available status we last wrote or read
    body: dict[str, Any] | None = None    # the latest copy seen on the watch: saves a read per write
    last_stamp: float = float("-inf")     # hub clock of our last lastHeartbeatTime write
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class AvailabilityMonitor:
    def __init__(self, kube: Callable[[], Kube], tracker: HeartbeatTracker, *, concurrency: int = 16):
        self.kube, self.tracker = kube, tracker
        self.sites: dict[str, SiteView] = {}
        self._heap: list[tuple[float, str]] = []
        self._wakeup = asyncio.Event()
        self._slots = asyncio.Semaphore(concurrency)          # transitions: latency matters
        self._stamp_slots = asyncio.Semaphore(max(1, concurrency // 4))   # timestamps: they can wait
        self._writes: set[asyncio.Task] = set()

    # -- fed by the watches --------------------------------------------------------------------
    def node_seen(self, body: dict[str, Any]) -> None:
        md = body.get("metadata") or {}
        name = md.get("name")
        if not name:
            return
        if md.get("deletionTimestamp"):
            self.node_gone(name)
            return
        spec = dict(body.get("spec") or {})
        view = self.sites.get(name)
        duration = float(lease_duration(spec))
        if view is None:
            view = self.sites[name] = SiteView(name, duration, md.get("generation"), spec, current_available(body),
                                               body=body)
            self._schedule(name, duration)
        else:
            changed = duration != view.duration
            view.duration, view.generation, view.spec, view.body = duration, md.get("generation"), spec, body
            if changed:
                self._schedule(name, duration)
            observed = current_available(body)
            if observed is not None and observed != view.state:
                # Another write changed Available under us (e.g. enrollment, working from an older copy,
                # wrote the initial Unknown after our True): believe the object, so the next renewal
                # writes the truth again instead of the site staying Unknown while it heartbeats.
                view.state = observed

    def node_gone(self, name: str) -> None:
        self.sites.pop(name, None)
        self.tracker.forget(name)

    def lease_seen(self, lease: dict[str, Any]) -> None:
        site = self.tracker.observe(lease)
        view = self.sites.get(site) if site else None
        if view is None:
            return
        now = self.tracker.clock()
        if view.state != TRUE:
            self._spawn(self._write(view, ConditionStatus.TRUE, c.Reason.LEASE_RENEWED,
                                    "the site agent renews its Lease", now))
        elif now - view.last_stamp >= view.duration:
            view.last_stamp = now       # claimed now, so concurrent renewals do not all write
            self._spawn(self._write(view, None, None, "", now))
        self._schedule(view.name, view.duration)

    # -- the timer -------------------------------------------------------------------------------
    def _schedule(self, name: str, duration: float) -> None:
        heapq.heappush(self._heap, (self.tracker.deadline(name, duration), name))
        self._wakeup.set()

    async def run(self) -> None:
        while True:
            now = self.tracker.clock()
            while self._heap and self._heap[0][0] <= now:
                _, name = heapq.heappop(self._heap)
                view = self.sites.get(name)
                # stale heap entries (a renewal moved the deadline) are skipped here
                if view is not None and now >= self.tracker.deadline(name, view.duration) and view.state != UNKNOWN:
                    seen = self.tracker.last_seen(name)
                    since = f"{now - seen:.0f}s ago" if seen is not None else "not since the hub started"
                    self._spawn(self._write(view, ConditionStatus.UNKNOWN, c.Reason.LEASE_UPDATE_STOPPED,
                                            f"no Lease renewal for {view.duration:.0f}s (last seen {since}); check "
                                            "the site agent and its connection to the hub", None))
            timeout = self._heap[0][0] - now if self._heap else None
            self._wakeup.clear()
            try:
                await asyncio.wait_for(self._wakeup.wait(), timeout)
            except asyncio.TimeoutError:
                pass

    async def close(self) -> None:
        for task in list(self._writes):
            task.cancel()
        await asyncio.gather(*self._writes, return_exceptions=True)

    # -- writes ----------------------------------------------------------------------------------
    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._writes.add(task)
        task.add_done_callback(self._writes.discard)

    async def _write(self, view: SiteView, status: ConditionStatus | None, reason: c.Reason | None, message: str,
                     stamp: float | None) -> None:
        slots = self._slots if status is not None else self._stamp_slots
        async with view.lock, slots:
            if status is not None and view.state == status.value:
                return                            # another write got there first
            if status is ConditionStatus.UNKNOWN and self.tracker.clock() < self.tracker.deadline(view.name,
                                                                                                  view.duration):
                return                            # renewed while we waited for a slot
            updates = [] if status is None else [c.make(c.ConditionType.AVAILABLE, status, reason, message,
                                                        generation=view.generation)]
            fields = {"lastHeartbeatTime": _utc_now()} if stamp is not None else None
            previous = c.raw_condition(view.body or {}, c.ConditionType.AVAILABLE.value) or {}
            before = (previous.get("status"), previous.get("reason"))
            try:
                obj = await write_hub_status(self.kube(), view.name, updates, generation=view.generation,
                                             cordoned=bool(view.spec.get("cordoned")), fields=fields,
                                             offers_gpus=offers_gpus({"spec": view.spec}), current=view.body)
            except KubeError as err:     # state unchanged: the next renewal or deadline tries again
                log.warning("Could not write availability of site %s: %s", view.name, err)
                if status is ConditionStatus.UNKNOWN:     # try again in a while, not in a loop
                    heapq.heappush(self._heap, (self.tracker.clock() + RETRY_SECONDS, view.name))
                    self._wakeup.set()
                return
            if obj is None:
                self.node_gone(view.name)
                return
            view.body = obj
            if stamp is not None:
                view.last_stamp = stamp
            if status is not None:
                view.state = status.value
                metrics.AVAILABILITY_TRANSITIONS.labels(status.value).inc()
                log.info("Site %s is %s (%s)", view.name,
                         "available" if status is ConditionStatus.TRUE else "unavailable", reason.value)
        if status is not None:
            await self._event(view.name, obj, status, before, message)

    async def _event(self, name: str, obj: dict[str, Any], status: ConditionStatus,
                     before: tuple[str | None, str | None], message: str) -> None:
        """Events on transitions a user cares about; a site that never connected was never lost."""
        if status is ConditionStatus.UNKNOWN:
            if before[0] == TRUE:
                await events.post(self.kube(), obj, events.WARNING, "SiteUnavailable",
                                  f"Site {name} became unavailable: {message}")
        elif before[1] == c.Reason.LEASE_UPDATE_STOPPED.value:
            await events.post(self.kube(), obj, events.NORMAL, "SiteRecovered",
                              f"Site {name} recovered: its agent renews its Lease again")
        else:
            await events.post(self.kube(), obj, events.NORMAL, "AgentConnected",
                              f"The agent of site {name} connected: it renews its Lease")
