"""The hub's ``Available`` condition for every site, from one monitor task.

One asyncio task watches all sites' deadlines (a heap keyed by hub-clock deadline) instead
of one kopf daemon per HospitalNode: a thousand sites cost one timer, not a thousand
tasks with their own state. Renewals (from the Lease watch) and node events (from the
HospitalNode watch) feed it; it writes ``Available`` only on a transition, plus
``lastHeartbeatTime`` at most once per lease duration, so healthy sites cost few writes.

It also repairs: ``Available`` and ``lastHeartbeatTime`` are the hub's, and the monitor
remembers what it last wrote (or first read). A HospitalNode event — or a resync pass
(hub/resync.py) — showing anything else means somebody outside the hub wrote them (the
chart's admission policy stops site agents; an administrator or a broken tool is not
stopped): the monitor writes its own value back at once, Ready follows, and a Warning Event
says so. A stale watch event is not mistaken for such a write: the repair re-reads first.
"""

from __future__ import annotations

import asyncio
import contextlib
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
from .hospital_node_service import lease_duration, node_ref, offers_gpus, write_hub_status

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
    #: (status, reason, message) of Available as the hub last wrote it (or first read it)
    written: tuple[str, str, str] | None = None
    #: lastHeartbeatTime as the hub last wrote it (or first read it)
    stamp_value: str | None = None
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    repairing: bool = False
    #: Available / lastHeartbeatTime of the hub's write in flight: its own watch event often
    #: arrives before the PATCH answer, and must not look like somebody else's write
    inflight: tuple[str, str, str] | None = None
    inflight_stamp: str | None = None
    #: the hub's lastHeartbeatTime before the last one: a late (stale) event, not an outside write
    previous_stamp: str | None = None


def _available_of(body: dict[str, Any]) -> tuple[str, str, str] | None:
    cond = c.raw_condition(body, c.ConditionType.AVAILABLE.value)
    return (cond.get("status", ""), cond.get("reason", ""), cond.get("message", "")) if cond else None


def _stamp_of(body: dict[str, Any]) -> str | None:
    return (body.get("status") or {}).get("lastHeartbeatTime")


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
                                               body=body, written=_available_of(body),
                                               stamp_value=_stamp_of(body))
            self._schedule(name, duration)
        else:
            changed = duration != view.duration
            view.duration, view.generation, view.spec, view.body = duration, md.get("generation"), spec, body
            if changed:
                self._schedule(name, duration)
            if view.written is None:            # enrollment writes the first Available (AgentNotConnected)
                view.written = _available_of(body)
                view.state = view.state or current_available(body)
            elif self._outside_write(view, body) and not view.repairing:
                view.repairing = True
                self._spawn(self._repair(view))

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
                # stale heap entries (a renewal moved the deadline) are skipped here; so is a site
                # not enrolled yet (no Available): enrollment writes its first one (AgentNotConnected)
                if view is not None and now >= self.tracker.deadline(name, view.duration) \
                        and view.state not in (UNKNOWN, None):
                    seen = self.tracker.last_seen(name)
                    since = f"{now - seen:.0f}s ago" if seen is not None else "not since the hub started"
                    self._spawn(self._write(view, ConditionStatus.UNKNOWN, c.Reason.LEASE_UPDATE_STOPPED,
                                            f"no Lease renewal for {view.duration:.0f}s (last seen {since}); check "
                                            "the site agent and its connection to the hub", None))
            timeout = self._heap[0][0] - now if self._heap else None
            self._wakeup.clear()
            # asyncio.timeout, not wait_for: on Python 3.11 wait_for swallows a cancellation that
            # arrives with a wake-up (frequent at scale), and a stopping hub would wait here forever.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._wakeup.wait()

    async def close(self) -> None:
        for task in list(self._writes):
            task.cancel()
        await asyncio.gather(*self._writes, return_exceptions=True)

    # -- repairs -----------------------------------------------------------------------------------
    @staticmethod
    def _outside_write(view: SiteView, body: dict[str, Any]) -> bool:
        have = _available_of(body)
        ours = [w[:2] for w in (view.written, view.inflight) if w is not None]
        stamp = _stamp_of(body)
        return (view.written is not None and (have is None or have[:2] not in ours)) \
            or stamp not in (view.stamp_value, view.inflight_stamp or view.stamp_value,
                             view.previous_stamp or view.stamp_value)

    async def _repair(self, view: SiteView) -> None:
        """Write back the hub's Available and lastHeartbeatTime; re-read first, under the site's
        lock, so a late watch event or a transition in flight is never "repaired"."""
        try:
            async with view.lock:
                kube = self.kube()
                # the re-read takes no transition slot: a burst of stale events must not delay
                # the transitions (p99 of missed renewal -> Unknown) behind it
                fresh = await kube.get_or_none(node_ref(view.name))
                if fresh is None or not self._outside_write(view, fresh) or view.written is None:
                    return
                found = _available_of(fresh)
                status, reason, message = view.written
                updates = [c.make(c.ConditionType.AVAILABLE, status, reason, message, generation=view.generation)]
                async with self._slots:
                    obj = await write_hub_status(kube, view.name, updates, generation=view.generation,
                                                 cordoned=bool(view.spec.get("cordoned")),
                                                 fields={"lastHeartbeatTime": view.stamp_value},
                                                 offers_gpus=offers_gpus({"spec": view.spec}), current=fresh)
                if obj is None:
                    return
                view.body = obj
        except KubeError as err:          # the next event or resync pass finds it again
            log.warning("Could not repair the status of site %s: %s", view.name, err)
            return
        finally:
            view.repairing = False
        what = f"Available={found[0]} ({found[1]})" if found else "no Available condition"
        log.warning("Site %s: the hub's status was changed outside the hub (%s); restored Available=%s (%s)",
                    view.name, what, status, reason)
        await events.post(kube, obj, events.WARNING, "HubStatusRepaired",
                          f"Available and lastHeartbeatTime are written by the fedcare hub only; found {what}, "
                          f"restored Available={status} ({reason})")

    # -- writes ----------------------------------------------------------------------------------
    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._writes.add(task)
        task.add_done_callback(self._writes.discard)

    async def _write(self, view: SiteView, status: ConditionStatus | None, reason: c.Reason | None, message: str,
                     stamp: float | None) -> None:
        # Transitions: the site's lock, then a slot. Timestamps: a slot, then the lock, so a
        # site's transition never waits for its own timestamp write queued behind other sites'.
        first, second = (view.lock, self._slots) if status is not None else (self._stamp_slots, view.lock)
        async with first, second:
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
            view.inflight = (status.value, reason.value, message) if status is not None else None
            view.inflight_stamp = fields["lastHeartbeatTime"] if fields else None
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
            finally:     # no await from here on: no watch event sees the in-between state
                view.inflight = view.inflight_stamp = None
            if obj is None:
                self.node_gone(view.name)
                return
            view.body = obj
            if stamp is not None:
                view.last_stamp = stamp
                if fields and fields["lastHeartbeatTime"] != view.stamp_value:
                    view.previous_stamp, view.stamp_value = view.stamp_value, fields["lastHeartbeatTime"]
            if status is not None:
                view.state = status.value
                view.written = (status.value, reason.value, message)
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
