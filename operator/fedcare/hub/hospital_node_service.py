"""HospitalNode reconcile: enroll the site (namespace, identity, RBAC, Lease) and report it.

Level-based: every pass compares what exists with what should, converges, and writes the
hub-owned part of the status once. Safe to run twice, safe after a crash or restart.
"""

from __future__ import annotations

import logging
from typing import Any

from .. import events
from ..api import conditions as c
from ..api import resources as r
from ..api.base import Condition, ConditionStatus
from ..api.hospital_node import HospitalNodePhase, HospitalNodeSpec
from ..api.validation import SpecError, parse
from ..integrations.kube import Kube, KubeError, NotOurs, Ref, ensure, owned_by
from ..status_writer import write_status
from . import enrollment as e

KIND = r.HOSPITAL_NODES.kind
HUB_TYPES = c.owned(KIND, c.Writer.HUB)


def node_ref(name: str) -> Ref:
    return Ref(r.API_VERSION, r.HOSPITAL_NODES.plural, None, name)


def derive_phase(conditions: list[Condition], status: dict[str, Any], *, cordoned: bool = False,
                 deleting: bool = False) -> HospitalNodePhase:
    ready = c.find(conditions, c.ConditionType.READY.value)
    enrolled = c.find(conditions, c.ConditionType.ENROLLED.value)
    if deleting:
        return HospitalNodePhase.TERMINATING
    if ready is not None and ready.reason == c.Reason.INVALID_SPEC.value:
        return HospitalNodePhase.INVALID
    if enrolled is None or enrolled.status is not ConditionStatus.TRUE:
        return HospitalNodePhase.PENDING
    if ready is not None and ready.status is ConditionStatus.TRUE:
        return HospitalNodePhase.CORDONED if cordoned else HospitalNodePhase.READY
    return HospitalNodePhase.NOT_READY


def ready_condition(conditions: list[Condition], generation: int | None, *, offers_gpus: bool = True) -> Condition:
    """Ready = enrolled, heartbeating, and — for a site that offers GPUs (spec.gpu.count > 0) —
    GPUs not reported unhealthy. Reads the agent's GPUReady; a CPU-only site's NoNVML is fine."""
    enrolled = c.find(conditions, c.ConditionType.ENROLLED.value)
    available = c.find(conditions, c.ConditionType.AVAILABLE.value)
    gpu = c.find(conditions, c.ConditionType.GPU_READY.value)
    if enrolled is None or enrolled.status is not ConditionStatus.TRUE:
        msg = enrolled.message if enrolled else "enrollment has not run yet"
        return c.make(c.ConditionType.READY, False, c.Reason.ENROLLMENT_FAILED, msg, generation=generation)
    if available is None or available.status is not ConditionStatus.TRUE:
        msg = available.message if available else "no heartbeat seen yet"
        return c.make(c.ConditionType.READY, False, c.Reason.SITE_UNAVAILABLE, msg, generation=generation)
    if offers_gpus and gpu is None:
        return c.make(c.ConditionType.READY, False, c.Reason.GPU_NOT_READY,
                      "waiting for the agent's first GPU report", generation=generation)
    if offers_gpus and gpu.status is not ConditionStatus.TRUE:   # Unknown (NVML hung) is not ready either
        return c.make(c.ConditionType.READY, False, c.Reason.GPU_NOT_READY, gpu.message, generation=generation)
    detail = f"; GPUs: {gpu.message}" if gpu is not None and gpu.message else ""
    return c.make(c.ConditionType.READY, True, c.Reason.RECONCILED,
                  f"enrolled and heartbeating{detail}", generation=generation)


async def write_hub_status(kube: Kube, name: str, updates: list[Condition], *, generation: int | None,
                           cordoned: bool, fields: dict[str, Any] | None = None, recompute_ready: bool = True,
                           deleting: bool = False, spec_checked: bool = False, offers_gpus: bool = True,
                           current: dict[str, Any] | None = None, observed: bool = False,
                           defaults: list[Condition] | None = None) -> dict[str, Any] | None:
    """Write hub conditions in one pass; Ready is recomputed from the merged list, which
    includes the agent's GPUReady, so the two never need to coordinate.

    Only a reconcile that has just validated the spec (``spec_checked``) may replace an
    InvalidSpec Ready; heartbeat and readiness writes leave it alone. Likewise only a write
    that handled the spec (``spec_checked`` or ``observed``) sets ``observedGeneration``: a
    heartbeat write after a spec change must not claim that change was reconciled."""
    def derive(conditions: list[Condition], status: dict[str, Any]) -> dict[str, Any]:
        phase = derive_phase(conditions, status, cordoned=cordoned, deleting=deleting)
        if spec_checked or observed:
            return {"phase": phase.value, "observedGeneration": generation}
        return {"phase": phase.value}

    def ready(conditions: list[Condition]) -> list[Condition]:
        current = c.find(conditions, c.ConditionType.READY.value)
        if not recompute_ready or (not spec_checked and current is not None
                                   and current.reason == c.Reason.INVALID_SPEC.value):
            return []
        return [ready_condition(conditions, generation, offers_gpus=offers_gpus)]

    return await write_status(kube, node_ref(name), owned_types=HUB_TYPES, updates=updates, fields=fields,
                              derive=derive, derive_conditions=ready, known=current, defaults=defaults or ())


def lease_duration(spec: dict[str, Any]) -> int:
    """The spec's lease duration, or the default when the spec is absent or invalid."""
    value = spec.get("leaseDurationSeconds")
    if isinstance(value, int) and 10 <= value <= 3600:
        return value
    return HospitalNodeSpec.model_fields["lease_duration_seconds"].default


def ready_is_stale(body: Any, **_: Any) -> bool:
    """True when Ready no longer says what the other conditions imply (kopf filter: cheap, pure)."""
    md = body.get("metadata") or {}
    if md.get("deletionTimestamp"):
        return False
    conds = c.parse((body.get("status") or {}).get("conditions"))
    current = c.find(conds, c.ConditionType.READY.value)
    if current is None or current.reason in (c.Reason.INVALID_SPEC.value, c.Reason.DELETING.value):
        return False
    want = ready_condition(conds, md.get("generation"), offers_gpus=offers_gpus(body))
    return (current.status, current.reason, current.message) != (want.status, want.reason, want.message)


def offers_gpus(body: dict[str, Any]) -> bool:
    gpu = (body.get("spec") or {}).get("gpu") or {}
    return not isinstance(gpu.get("count"), int) or gpu["count"] > 0


async def refresh_ready(kube: Kube, body: dict[str, Any]) -> None:
    await write_hub_status(kube, body["metadata"]["name"], [], generation=body["metadata"].get("generation"),
                           cordoned=bool((body.get("spec") or {}).get("cordoned")), offers_gpus=offers_gpus(body),
                           current=body)


def _display(obj: dict[str, Any]) -> str:
    md = obj["metadata"]
    return f"{md['namespace']}/{md['name']}" if md.get("namespace") else md["name"]


async def _migrate_binding(kube: Kube, plural: str, desired: dict[str, Any], node: dict[str, Any],
                           logger: logging.Logger) -> None:
    """A binding's roleRef cannot be changed in place: one of ours that points elsewhere (an
    earlier version's RoleBinding to the per-site Role ``fedcare-site``) is deleted so ensure
    re-creates it, and that old Role goes with it. Somebody else's binding is left to ensure,
    which refuses it (NotOurs)."""
    md = desired["metadata"]
    ref = Ref(desired["apiVersion"], plural, md.get("namespace"), md["name"])
    current = await kube.get_or_none(ref)
    uid = node["metadata"]["uid"]
    if current is None or not owned_by(current, uid) or current.get("roleRef") == desired["roleRef"]:
        return
    await kube.delete(ref)
    logger.info("Replaced %s %s: its role is now %s %s", desired["kind"], _display(desired),
                desired["roleRef"]["kind"], desired["roleRef"]["name"])
    legacy = e.build_legacy_role(node)
    lref = Ref(legacy["apiVersion"], "roles", legacy["metadata"]["namespace"], legacy["metadata"]["name"])
    old = await kube.get_or_none(lref) if current.get("roleRef", {}).get("kind") == "Role" else None
    if old is not None and owned_by(old, uid) and await kube.delete(lref):
        logger.info("Deleted the earlier per-site Role %s", _display(legacy))


async def reconcile(kube: Kube, body: dict[str, Any], logger: logging.Logger) -> HospitalNodeSpec:
    """Enroll one site. Raises SpecError for a spec that cannot work; KubeError on API failure."""
    name = body["metadata"]["name"]
    generation = body["metadata"].get("generation")
    try:
        spec = parse(KIND, body)
    except SpecError as err:
        await write_hub_status(kube, name, [c.make(c.ConditionType.READY, False, c.Reason.INVALID_SPEC,
                                                   err.summary(), generation=generation)],
                               generation=generation, cordoned=False, recompute_ready=False, observed=True)
        raise
    assert isinstance(spec, HospitalNodeSpec)
    created = []
    uid = body["metadata"]["uid"]
    try:
        for plural, build in e.CHILDREN:
            desired = build(body)
            if plural == "rolebindings":   # the one roleRef that changed (the Role it replaced is not read any more)
                await _migrate_binding(kube, plural, desired, body, logger)
            if (await ensure(kube, plural, desired, owner_uid=uid))[1]:
                created.append(f"{desired['kind']} {_display(desired)}")
        lease = e.build_lease(body, spec.lease_duration_seconds)
        if (await ensure(kube, "leases", lease, owner_uid=uid))[1]:
            created.append(f"Lease {_display(lease)}")
    except NotOurs as err:
        # Somebody else's object has the name the site needs: never adopt it (finalize would
        # then delete it). The user renames the site or moves that object away; we retry.
        await write_hub_status(kube, name, [c.make(c.ConditionType.ENROLLED, False, c.Reason.OBJECT_NOT_OWNED,
                                                   f"{err.kind} {err.path.rsplit('/', 1)[-1]} already exists and "
                                                   "was not created by fedcare for this site; fedcare will not "
                                                   "take it over: delete or rename it, or choose another site "
                                                   "name", generation=generation)],
                               generation=generation, cordoned=spec.cordoned, spec_checked=True)
        raise
    except KubeError as err:
        await write_hub_status(kube, name, [c.make(c.ConditionType.ENROLLED, False, c.Reason.ENROLLMENT_FAILED,
                                                   f"could not create the site's objects: {err}",
                                                   generation=generation)],
                               generation=generation, cordoned=spec.cordoned, spec_checked=True)
        raise
    for what in created:
        logger.info("Created %s for site %s", what, name)
    ns = r.site_namespace(name)
    updates = [c.make(c.ConditionType.ENROLLED, True, c.Reason.SITE_NAMESPACE_READY,
                      f"site namespace {ns}, ServiceAccount {e.AGENT_SA} and its RBAC exist", generation=generation)]
    # Available is the availability monitor's once set: the first value only where the node, as
    # read for this write, has none (``body`` may be an event older than the monitor's write).
    first = c.make(c.ConditionType.AVAILABLE, ConditionStatus.UNKNOWN, c.Reason.AGENT_NOT_CONNECTED,
                   f"no heartbeat yet: run the site agent with --site {name} (Lease {ns}/{e.LEASE_NAME})",
                   generation=generation)
    was_enrolled = (c.raw_condition(body, c.ConditionType.ENROLLED.value) or {}).get("status") == "True"
    obj = await write_hub_status(kube, name, updates, generation=generation, cordoned=spec.cordoned,
                                 fields={"siteNamespace": ns}, spec_checked=True, offers_gpus=spec.gpu.count > 0,
                                 defaults=[first])
    if obj is not None and not was_enrolled:
        await events.post(kube, obj, events.NORMAL, "Enrolled",
                          f"Enrolled site {name}: namespace {ns}, ServiceAccount {e.AGENT_SA} and its RBAC are ready")
    return spec


async def finalize(kube: Kube, body: dict[str, Any], logger: logging.Logger) -> None:
    """Remove what enrollment created, newest first. Idempotent: already-gone objects are fine."""
    name = body["metadata"]["name"]
    await write_hub_status(kube, name, [c.make(c.ConditionType.READY, False, c.Reason.DELETING,
                                               "removing the site namespace and its identity")],
                           generation=body["metadata"].get("generation"), cordoned=False, recompute_ready=False,
                           deleting=True, observed=True)
    uid = body["metadata"]["uid"]
    lease = e.build_lease(body, 40)
    for plural, desired in [("leases", lease)] + [(p, build(body)) for p, build in reversed(e.CHILDREN)]:
        md = desired["metadata"]
        ref = Ref(desired["apiVersion"], plural, md.get("namespace"), md["name"])
        current = await kube.get_or_none(ref)
        if current is None:
            continue
        if not owned_by(current, uid):     # not ours (a pre-existing namespace, say): never delete it
            logger.info("Left %s %s alone: fedcare did not create it", desired["kind"], _display(desired))
            continue
        if await kube.delete(ref):
            logger.info("Deleted %s %s for site %s", desired["kind"], _display(desired), name)
