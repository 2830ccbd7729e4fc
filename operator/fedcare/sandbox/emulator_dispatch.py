"""Request dispatch for the realistic emulator: fault injection and O(1) reaction matching.

* **Faults.** kmock's own ``k[criteria] << error`` reactions run *after* the emulator has
  applied a write, so an "injected" 409/500 still changes the object — a test of a retry
  path would pass for the wrong reason. A :class:`Fault` is checked before any state change.
* **Matching.** kmock decides whether a reaction applies with ``request in view``, which
  re-filters the whole request log for every reaction on every request (O(n²) overall:
  ~3 requests/s after a few hundred objects). :func:`matches` walks the view chain for the
  one request instead; only history-dependent views (slices, streams) fall back to kmock.
* **History.** :func:`trim_history` bounds the request logs (~9 KiB per request).

These rely on kmock 0.8 internals (``_payloads``, ``_requests``, ``_source``, view classes).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from kmock._internal import dsl, filtering, rendering


@dataclass
class Fault:
    """A fault injected before the emulator touches its state.

    ``criteria`` is any callable taking a ``kmock.Request`` (e.g. ``kmock.K8sCriteria(...)``
    or a lambda). The fault delays the request by ``delay`` seconds, then raises ``error``
    (if any). ``times=None`` means forever; ``hits`` counts how often it fired.
    """

    criteria: Callable[[Any], Any]
    error: BaseException | None = None
    delay: float = 0.0
    times: int | None = 1
    hits: int = 0

    @property
    def active(self) -> bool:
        return self.times is None or self.times > 0


async def apply_faults(faults: list[Fault], request: rendering.Request) -> None:
    """Fire the first active fault that matches the request (at most one per request)."""
    for fault in faults:
        if fault.active and fault.criteria(request):
            fault.hits += 1
            if fault.times is not None:
                fault.times -= 1
            if fault.delay:
                await asyncio.sleep(fault.delay)
            if fault.error is not None:
                raise fault.error
            return


#: Request attributes each plain criteria field is checked against (kmock's ``__call__``s).
_K8S_FIELDS = {"method": "method", "action": "action", "resource": "resource", "subresource": "subresource",
               "namespace": "namespace", "name": "name"}
_HTTP_FIELDS = {"method": "method"}        # and ``path`` (request.url.path); others are not memoised


def _memo_key(criteria: Any, request: rendering.Request) -> tuple[Any, ...] | None:
    """What a plain K8sCriteria/HTTPCriteria result depends on, or None (not memoisable).

    Every request otherwise re-runs kmock's generic ``_check`` for each fallback reaction
    (Protocol ``isinstance`` checks, enum-to-regex conversions): ~2 ms per request here. The
    result depends only on the criteria and those attributes, so it is remembered per pair."""
    kind = type(criteria)
    if kind is filtering.K8sCriteria:
        fields = _K8S_FIELDS
    elif kind is filtering.HTTPCriteria:
        fields = _HTTP_FIELDS
        if any(getattr(criteria, f) is not Ellipsis for f in ("params", "headers", "cookies", "text", "body",
                                                                "data")):
            return None
    else:
        return None
    values = tuple(getattr(request, attr) for field, attr in fields.items() if getattr(criteria, field) is not Ellipsis)
    if kind is filtering.HTTPCriteria and criteria.path is not Ellipsis:
        values += (request.url.path,)
    return (id(criteria),) + values


class Memo:
    """Criteria results by :func:`_memo_key`; holds the criteria so their ids stay theirs."""

    def __init__(self) -> None:
        self.results: dict[tuple[Any, ...], bool] = {}
        self.held: dict[int, Any] = {}
        self.order: tuple[tuple[int, ...], list[Any]] | None = None

    def check(self, criteria: Any, request: rendering.Request) -> bool:
        try:
            key = _memo_key(criteria, request)
            hash(key)
        except TypeError:
            key = None
        if key is None:
            return bool(criteria(request))
        if key not in self.results:
            if len(self.results) > 20_000:
                self.results.clear()
            self.held[id(criteria)] = criteria
            self.results[key] = bool(criteria(request))
        return self.results[key]


def _memo(root: dsl.Root) -> Memo:
    """The emulator's own memo (``RealisticEmulator.dispatch_memo``); another root gets none kept."""
    memo = getattr(root, "dispatch_memo", None)
    return memo if isinstance(memo, Memo) else Memo()


def matches(root: dsl.Root, view: Any, request: rendering.Request) -> bool:
    match view:
        case _ if view is root:
            return True
        case dsl.Filter():
            return _memo(root).check(view.criteria, request) and matches(root, view._source, request)
        case dsl.Exclusion():
            return (matches(root, view._source, request)
                    and not any(matches(root, x, request) for x in view._exclusions))
        case dsl.Priority() | dsl.Reaction():
            return matches(root, view._source, request)
        case dsl.OrGroup():
            return any(matches(root, x, request) for x in view._sources)
        case dsl.AndGroup():
            return all(matches(root, x, request) for x in view._sources)
        case _:
            return request in view  # slices, streams: kmock's own (slow) way


async def dsl_handle(root: dsl.Root, request: rendering.Request) -> Any:
    """kmock's ``RawHandler._handle()`` with :func:`matches` instead of ``request in view``.
    The reactions' order (by priority) is computed once per set of reactions: a reaction's
    priorities are fixed when it is made."""
    memo = _memo(root)
    ids = tuple(id(payload) for payload in root._payloads)
    if memo.order is None or memo.order[0] != ids:
        priorities = [payload.priorities for payload in root._payloads]
        width = max((len(p) for p in priorities), default=0)
        keys = [tuple(-x for x in p) + (0,) * (width - len(p)) for p in priorities]
        order = sorted(range(len(keys)), key=lambda i: keys[i])
        memo.order = (ids, [root._payloads[i] for i in order])
    for payload in list(memo.order[1]):
        if not payload._disabled.is_set() and matches(root, payload._source, request):
            try:
                return await payload(request)
            except rendering.ReactionMismatchError:
                payload._disabled.set()
            except NotImplementedError:
                pass
    raise NotImplementedError("Undefined server behaviour: no reaction matches the request.")


def trim_history(root: dsl.Root, max_history: int, inflight: set[rendering.Request]) -> None:
    """Keep the last ``max_history`` requests (and those still being served) in the logs.

    Trimming only when the log is twice the limit keeps the cost amortised O(1).
    """
    if len(root._requests) <= 2 * max_history:
        return
    keep = set(root._requests[-max_history:]) | inflight
    root._requests[:] = [r for r in root._requests if r in keep]
    for payload in root._payloads:  # each reaction also keeps the requests it served
        if len(payload._requests) > max_history:
            del payload._requests[:-max_history]
