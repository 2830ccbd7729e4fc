"""Write an object's status safely when two writers (hub and agent) share it.

Each writer owns some condition types and some status fields. A write reads the object,
replaces only what the writer owns, and patches ``/status`` with the resourceVersion it
read: a concurrent write by the other side yields 409 and we re-read, so neither side ever
overwrites the other's conditions. Nothing is written when nothing changed.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from typing import Any

from .api import conditions as c
from .api.base import Condition
from .integrations.kube import Conflict, Kube, Ref

log = logging.getLogger(__name__)

MAX_CONFLICTS = 5


def _wire(cond: Condition) -> dict[str, Any]:
    return cond.model_dump(by_alias=True, exclude_none=True, mode="json")


async def write_status(
    kube: Kube, ref: Ref, *, owned_types: Iterable[str], updates: Iterable[Condition] = (),
    fields: dict[str, Any] | None = None,
    derive: Callable[[list[Condition], dict[str, Any]], dict[str, Any]] | None = None,
    derive_conditions: Callable[[list[Condition]], list[Condition]] | None = None,
    known: dict[str, Any] | None = None,
    defaults: Iterable[Condition] = (),
) -> dict[str, Any] | None:
    """Merge ``updates`` (owned types only) and ``fields`` into the status; return the object.

    ``derive_conditions(conditions)`` may compute more owned conditions (Ready, say) from the
    merged list, the other writer's conditions included; ``derive(conditions, status)`` may
    then compute owned fields (a phase). ``known``, a recent copy of the object (from a
    watch event), saves the first read; if it is stale the write gets 409 and re-reads.
    ``defaults`` are written only where the object, as read for this very write, has no
    condition of that type (a first value that must never replace one another writer of the
    same side set meanwhile). Returns None when the object is gone.
    """
    owned = set(owned_types)
    updates = list(updates)
    defaults = list(defaults)
    stray = [u.type for u in updates + defaults if u.type not in owned]
    if stray:
        raise ValueError(f"this writer does not own condition types {stray}")
    for attempt in range(MAX_CONFLICTS):
        obj, known = (known, None) if known is not None else (await kube.get_or_none(ref), None)
        if obj is None:
            return None
        status = obj.get("status") or {}
        current = c.parse(status.get("conditions"))
        merged = c.merge(current, updates + [d for d in defaults if c.find(current, d.type) is None])
        if derive_conditions is not None:
            extra = derive_conditions(merged)
            stray = [u.type for u in extra if u.type not in owned]
            if stray:
                raise ValueError(f"this writer does not own condition types {stray}")
            merged = c.merge(merged, extra)
        new_fields = dict(fields or {})
        if derive is not None:
            new_fields.update(derive(merged, {**status, **new_fields}))
        changed = not c.same(current, merged) or any(status.get(k) != v for k, v in new_fields.items())
        if not changed:
            return obj
        patch = {"metadata": {"resourceVersion": obj["metadata"]["resourceVersion"]},
                 "status": {**new_fields, "conditions": [_wire(x) for x in merged]}}
        try:
            return await kube.patch(ref, patch, status=True)
        except Conflict:
            log.debug("Status of %s changed underneath us (attempt %d); re-reading", ref.path, attempt + 1)
            await asyncio.sleep(0.05 * (attempt + 1))
    raise Conflict(409, "Conflict", f"status kept changing over {MAX_CONFLICTS} attempts", path=ref.path)
