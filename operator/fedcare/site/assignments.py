"""The site's answer to a RoundAssignment: Accepted, or Rejected with a reason.

Level-based and idempotent: an assignment whose status already answers its current
``spec.attempt`` is left alone, so replays, restarts and duplicate events write nothing.
The agent owns the whole status of a RoundAssignment; the hub never writes it.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from ..api import conditions as c
from ..api import resources as r
from ..api.round_assignment import AssignmentPhase, RoundAssignmentSpec
from ..api.validation import SpecError, parse
from ..integrations.kube import Kube, Ref
from ..status_writer import write_status
from .informer import Informer

KIND = r.ROUND_ASSIGNMENTS.kind
AGENT_TYPES = c.owned(KIND, c.Writer.AGENT)
ANSWERED = {AssignmentPhase.ACCEPTED.value, AssignmentPhase.REJECTED.value, AssignmentPhase.RUNNING.value,
            AssignmentPhase.SUCCEEDED.value, AssignmentPhase.FAILED.value}


def needs_answer(body: dict[str, Any]) -> bool:
    status = body.get("status") or {}
    attempt = (body.get("spec") or {}).get("attempt", 1)
    return not (status.get("phase") in ANSWERED and status.get("attempt") == attempt
                and status.get("observedGeneration") == body["metadata"].get("generation"))


LATER = {AssignmentPhase.RUNNING.value, AssignmentPhase.SUCCEEDED.value, AssignmentPhase.FAILED.value}
RESERVING = {AssignmentPhase.ACCEPTED.value, AssignmentPhase.RUNNING.value}


def _past_deadline(ra: dict[str, Any]) -> bool:
    raw = (ra.get("spec") or {}).get("deadline")
    if not raw:
        return False
    try:
        return dt.datetime.now(dt.UTC) >= dt.datetime.fromisoformat(str(raw).replace("Z", "+00:00"))
    except ValueError:
        return False


def reserved_gpus(assignments: list[dict[str, Any]], *, besides: str) -> int:
    """GPUs promised to the site's other accepted or running assignments (from the API, so a
    restarted agent counts them too). An assignment past its deadline, ended (Succeeded,
    Failed) or deleted (the round ended) holds none."""
    total = 0
    for ra in assignments:
        if (ra["metadata"]["name"] != besides and (ra.get("status") or {}).get("phase") in RESERVING
                and not ra["metadata"].get("deletionTimestamp") and not _past_deadline(ra)):
            need = ((ra.get("spec") or {}).get("training") or {}).get("gpusPerSite", 1)
            total += need if isinstance(need, int) and need > 0 else 0
    return total


def decide(site: str, body: dict[str, Any], free_gpus: int | None, reserved: int = 0,
           gpu_ready: str = "True") -> tuple[bool, c.Reason | str, str]:
    """(accepted, reason, message) for an assignment, given the site's healthy free GPUs, the
    GPUs already reserved by its other accepted assignments, and its GPUReady status (Unknown,
    e.g. a hung NVML, counts as no healthy GPU)."""
    try:
        spec = parse(KIND, body)
    except SpecError as err:
        return False, c.Reason.INVALID_SPEC, err.summary()
    assert isinstance(spec, RoundAssignmentSpec)
    if spec.node_name != site:
        return False, c.Reason.WRONG_SITE, f"assigned to site {spec.node_name}, but this agent serves site {site}"
    need = spec.training.gpus_per_site
    if need > 0:
        if gpu_ready == "Unknown":
            return False, c.Reason.INSUFFICIENT_GPU, f"{need} GPU(s) needed, but this site's GPUReady is " \
                                                     "Unknown (NVML does not answer): no GPU is known healthy"
        if free_gpus is None:
            return False, c.Reason.INSUFFICIENT_GPU, f"{need} GPU(s) needed, but this site's GPUs are unknown " \
                                                     "(NVML unavailable)"
        available = max(0, free_gpus - reserved)
        if available < need:
            held = f" ({reserved} reserved by accepted assignments)" if reserved else ""
            return False, c.Reason.INSUFFICIENT_GPU, f"{need} GPU(s) needed, {available} healthy and free{held}"
    return True, c.Reason.ACCEPTED, f"accepted by site {site}" + (f" ({need} GPU(s) reserved)" if need else "")


async def answer(hub: Kube, site: str, agent_id: str, body: dict[str, Any], free_gpus: int | None,
                 gpu_ready: str = "True") -> bool | None:
    """Write the site's answer if the assignment needs one; returns it (None if nothing written).

    Callers serialise answers (one at a time per site), so two assignments cannot both be
    promised the same GPUs."""
    result = await answer_with_reason(hub, site, agent_id, body, free_gpus, gpu_ready)
    return None if result is None else result[0]


async def answer_with_reason(hub: Kube, site: str, agent_id: str, body: dict[str, Any],
                             free_gpus: int | None, gpu_ready: str = "True",
                             cache: Informer | None = None) -> tuple[bool, str] | None:
    """``answer``, returning (accepted, reason) — the reason is one of a small fixed set.

    ``cache``: the work loop's watched copy of the site's assignments (synced), instead of a
    list per answer. This agent is the only writer of their phases and puts each write in the
    cache, so the copy knows every reservation it made; what it may lack is a deletion not yet
    delivered, which could only refuse wrongly: a refusal is confirmed from a fresh list."""
    if not needs_answer(body):
        return None
    md = body["metadata"]
    ref = Ref(r.API_VERSION, r.ROUND_ASSIGNMENTS.plural, md["namespace"])
    for listed in ([list(cache.items.values())] if cache is not None else []) + [None]:
        others = listed if listed is not None else await hub.list(ref)
        fresh = next((o for o in others if o["metadata"]["name"] == md["name"]), None)
        if fresh is None:
            if listed is not None:
                continue        # not in the copy yet: ask the API
            return None         # deleted meanwhile
        status, attempt = fresh.get("status") or {}, (fresh.get("spec") or {}).get("attempt", 1)
        if status.get("phase") in LATER and status.get("attempt") == attempt:
            return None         # an answer never overwrites a later phase (Running, Succeeded, Failed)
        accepted, reason, message = decide(site, body, free_gpus, reserved_gpus(others, besides=md["name"]),
                                           gpu_ready)
        if accepted or listed is None:
            break
    gen = md.get("generation")
    updates = [c.make(c.ConditionType.ACCEPTED, accepted, reason, message, generation=gen),
               c.make(c.ConditionType.READY, accepted, reason, message, generation=gen)]
    phase = AssignmentPhase.ACCEPTED if accepted else AssignmentPhase.REJECTED
    fields = {"phase": phase.value, "message": message, "agentId": agent_id, "observedGeneration": gen,
              "attempt": (body.get("spec") or {}).get("attempt", 1)}
    one = Ref(r.API_VERSION, r.ROUND_ASSIGNMENTS.plural, md["namespace"], md["name"])
    # known: the copy just listed saves a read; if it is stale the write gets 409 and re-reads.
    written = await write_status(hub, one, owned_types=AGENT_TYPES, updates=updates, fields=fields, known=fresh)
    if cache is not None:
        cache.put(written)
    return accepted, str(getattr(reason, "value", reason))
