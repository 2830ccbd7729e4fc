"""LIST and WATCH for the realistic emulator, with the semantics kopf relies on.

kmock 0.8's watch ignores ``resourceVersion`` and replays every object as ADDED on each
(re)connect; without usable versions kopf cannot tell a replayed body is stale and runs
``on.create`` handlers again (for every object that existed at startup, and after every
reconnect). Here:

* every state change is recorded in an :class:`EventLog` (bounded, per resource) with its
  resourceVersion; a watch with ``?resourceVersion=N`` replays exactly the events after N
  (MODIFIED and DELETED included), then streams live ones — nothing is lost in between
  because the replay and the live-stream mark are taken under the emulator's lock;
  a version older than the log answers ``ERROR 410 Expired`` (kopf then re-lists);
* without a version (or ``0``), the current objects come as synthetic ADDED events, as
  from the API server; ``sendInitialEvents=true`` ends them with the
  ``k8s.io/initial-events-end`` BOOKMARK;
* label/field selectors apply to the list and the stream; an object that stops (starts)
  matching a selector is sent as DELETED (ADDED), as the API server does;
* ``timeoutSeconds`` ends the stream; ``allowWatchBookmarks`` sends a BOOKMARK every
  ``bookmark_interval`` seconds with the last version this stream has passed (never ahead
  of an event not yet delivered, so resuming from a bookmark cannot skip events);
* LIST carries the real current resourceVersion (kmock says ``"..."``). ``limit`` is
  ignored: the whole list comes in one page with no ``continue`` token (clients accept it).
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from kmock._internal import rendering

from .patching import error, not_found
from .selectors import match_fields, match_labels

if TYPE_CHECKING:
    from .emulator import RealisticEmulator


@dataclass(frozen=True)
class WatchEvent:
    """One change: ``obj`` after it, ``old`` before it (None for ADDED), at version ``rv``."""

    rv: int
    type: str
    obj: dict[str, Any]
    old: dict[str, Any] | None


class EventLog:
    """The last ``size`` changes per resource, to resume watches from a resourceVersion."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._events: dict[Any, collections.deque[WatchEvent]] = {}
        self._floor: dict[Any, int] = {}  # the newest version dropped from the log

    def append(self, resource: Any, event: WatchEvent) -> None:
        events = self._events.setdefault(resource, collections.deque(maxlen=self.size))
        if len(events) == self.size:
            self._floor[resource] = events[0].rv
        events.append(event)

    def since(self, resource: Any, rv: int) -> list[WatchEvent] | None:
        """The events after ``rv``, or None when some of them were already dropped."""
        if rv < self._floor.get(resource, 0):
            return None
        return [e for e in self._events.get(resource, ()) if e.rv > rv]


class Subscription:
    """One watch stream's live feed. The writer filters each event for it (``publish``), so an
    event this stream's namespace or selectors exclude never wakes it. (kmock's bus woke every
    stream of the resource for every event: with one stream per site agent on a shared
    namespace, that fan-out was most of the emulator's time in a round's burst of writes.)"""

    __slots__ = ("request", "queue", "ready", "passed", "failed")

    def __init__(self, request: rendering.Request, passed: int) -> None:
        self.request = request
        self.queue: collections.deque[tuple[int, dict[str, Any]]] = collections.deque()
        self.ready = asyncio.Event()
        #: The newest version this stream has seen go by, delivered or not (for bookmarks).
        self.passed = passed
        self.failed = ""    # why this stream cannot go on (its selector broke on an event)


def publish(emu: RealisticEmulator, subscriptions: Any, event: WatchEvent) -> None:
    """Called by the writer, under the emulator's lock, once per change. A stream that cannot
    judge an event ends (with an ERROR event); the write and the other streams go on."""
    for sub in subscriptions:
        if sub.failed:
            continue
        try:
            seen = _as_seen_by(emu, sub.request, event)
        except Exception as err:    # noqa: BLE001 - one watcher's problem, never the writer's
            sub.failed = f"the watch cannot evaluate its selectors: {err}"
            sub.ready.set()
            continue
        sub.passed = event.rv
        if seen is not None:
            sub.queue.append((event.rv, seen))
            sub.ready.set()


def check_selectors(request: rendering.Request) -> None:
    """A malformed selector is the client's error (400), found before anything is served."""
    params = request.params
    try:
        match_labels(params.get("labelSelector"), {})
        match_fields(params.get("fieldSelector"), {})
    except ValueError as err:
        raise error(400, "BadRequest", f"unable to parse the selector: {err}") from None


def _parse_rv(value: str | None) -> int | None:
    if not value or value == "0":
        return None  # "any version": start with the current objects as synthetic ADDED
    if not value.isdigit():
        raise error(400, "BadRequest", f"invalid resourceVersion: {value!r}")
    return int(value)


def _as_seen_by(emu: RealisticEmulator, request: rendering.Request, ev: WatchEvent) -> dict[str, Any] | None:
    """The event as a watch with this request's namespace, name and selectors sees it."""
    now = emu.visible(request, ev.obj)
    was = ev.old is not None and emu.visible(request, ev.old)
    if ev.type == "MODIFIED" and now != was:
        etype = "ADDED" if now else "DELETED"
    elif now or (ev.type == "DELETED" and was):
        etype = ev.type
    else:
        return None
    # no copy: ev.obj is the emitter's own copy, never changed, and is only serialised from here
    return {"type": etype, "object": ev.obj}


def _bookmark(kind: str, api_version: str, rv: int, initial_end: bool = False) -> dict[str, Any]:
    md: dict[str, Any] = {"resourceVersion": str(rv)}
    if initial_end:
        md["annotations"] = {"k8s.io/initial-events-end": "true"}
    return {"type": "BOOKMARK", "object": {"kind": kind, "apiVersion": api_version, "metadata": md}}


def _failure(message: str) -> dict[str, Any]:
    return {"type": "ERROR", "object": {
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "code": 500,
        "reason": "InternalError", "message": message}}


def _expired(since: int) -> dict[str, Any]:
    return {"type": "ERROR", "object": {
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "code": 410,
        "reason": "Expired", "message": f"too old resource version: {since}"}}


async def serve_list(emu: RealisticEmulator, request: rendering.Request) -> dict[str, Any]:
    if not emu.is_known(request.resource):
        raise not_found(request.resource)
    check_selectors(request)
    async with emu.lock:
        items = emu.live_objects(request)
        rv = emu.resource_version
    kind, api_version = emu.kind_of(request.resource)
    return {"apiVersion": api_version, "kind": f"{kind}List",
            "metadata": {"resourceVersion": str(rv)}, "items": items}


async def serve_watch(emu: RealisticEmulator, request: rendering.Request) -> AsyncIterator[Any]:
    params = request.params
    since = _parse_rv(params.get("resourceVersion"))  # raised here: a proper 400 response
    timeout = float(params["timeoutSeconds"]) if params.get("timeoutSeconds") else None
    bookmarks = params.get("allowWatchBookmarks") == "true"
    initial_end = since is None and params.get("sendInitialEvents") == "true"
    kind, api_version = emu.kind_of(request.resource)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout if timeout else None

    check_selectors(request)
    async with emu.lock:  # the replay and the subscription at one instant: nothing lost between
        passed = emu.resource_version
        replay: list[dict[str, Any]] | None
        if since is None:
            replay = [{"type": "ADDED", "object": obj} for obj in emu.live_objects(request)]
        else:
            events = emu.events.since(request.resource, since)
            replay = None if events is None else [
                seen for e in events if (seen := _as_seen_by(emu, request, e)) is not None]
        sub = Subscription(request, passed)     # only once the replay is made (it may raise)
        emu.subscriptions[request.resource].add(sub)
    emu.watchers[request.resource] += 1
    try:
        yield b""  # send the headers now: a quiet stream must still connect
        if replay is None:
            yield _expired(since or 0)
            return
        for item in replay:
            yield item
        if initial_end and bookmarks:
            yield _bookmark(kind, api_version, passed, initial_end=True)
        while True:
            left = None if deadline is None else deadline - loop.time()
            if left is not None and left <= 0:
                return      # timeoutSeconds ends the stream, a backlog or not
            if sub.failed and not sub.queue:
                yield _failure(sub.failed)
                return
            if not sub.queue:
                wait = emu.bookmark_interval if bookmarks else None
                if left is not None:
                    wait = left if wait is None else min(wait, left)
                sub.ready.clear()
                try:
                    async with asyncio.timeout(wait):
                        await sub.ready.wait()
                except TimeoutError:
                    # Only with an empty queue (one published as the timer fired goes first): every
                    # event up to sub.passed was then delivered or not for us, so a resume from the
                    # bookmark skips nothing.
                    if not sub.queue and bookmarks and (deadline is None or deadline > loop.time()):
                        yield _bookmark(kind, api_version, sub.passed)
                continue
            rv, seen = sub.queue.popleft()
            if since is not None and rv <= since:
                continue  # a client resuming from a version newer than this event
            yield seen
    finally:
        emu.watchers[request.resource] -= 1
        emu.subscriptions[request.resource].discard(sub)
