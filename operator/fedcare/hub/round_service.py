"""FederatedRound and ModelRelease reconciles, as far as this version of fedcare goes.

Both validate the spec at the edge and report it in conditions. A FederatedRound also
reports how many sites could run it now (the admission check the scheduler will use); a
ModelRelease reports that anchoring is not done yet. Neither claims more than it does:
Ready stays False with a reason that says what is still to come.
"""

from __future__ import annotations

from typing import Any

from ..api import conditions as c
from ..api import resources as r
from ..api.base import Condition
from ..api.federated_round import FederatedRoundSpec, RoundPhase
from ..api.model_release import ReleasePhase
from ..api.validation import SpecError, parse
from ..integrations.kube import Kube, Ref
from ..status_writer import write_status
from .round_scheduler import derive_phase, derive_ready
from .selection import eligible_sites


def _ref(res: r.Resource, body: dict[str, Any]) -> Ref:
    md = body["metadata"]
    return Ref(res.api_version, res.plural, md.get("namespace"), md["name"])


async def _invalid(kube: Kube, res: r.Resource, body: dict[str, Any], err: SpecError, phase: str) -> None:
    gen = body["metadata"].get("generation")
    updates = [c.make(c.ConditionType.VALID, False, c.Reason.INVALID_SPEC, err.summary(), generation=gen),
               c.make(c.ConditionType.READY, False, c.Reason.INVALID_SPEC, err.summary(), generation=gen)]
    await write_status(kube, _ref(res, body), owned_types=c.owned(res.kind, c.Writer.HUB), updates=updates,
                       fields={"phase": phase, "observedGeneration": gen})


async def reconcile_round(kube: Kube, body: dict[str, Any]) -> FederatedRoundSpec:
    res = r.FEDERATED_ROUNDS
    try:
        spec = parse(res.kind, body)
    except SpecError as err:
        await _invalid(kube, res, body, err, RoundPhase.INVALID.value)
        raise
    assert isinstance(spec, FederatedRoundSpec)
    gen = body["metadata"].get("generation")
    nodes = await kube.list(Ref(r.API_VERSION, r.HOSPITAL_NODES.plural))
    eligible, verdicts = eligible_sites(nodes, spec.participants.selector, spec.training.gpus_per_site,
                                        spec.training.gpu_product)
    need = spec.participants.min_available
    why = "; ".join(f"{v.site}: {v.reason}" for v in verdicts if not v.eligible)[:900]
    message = (f"spec is valid; {len(eligible)} of {need} required sites eligible at admission"
               + (f" ({', '.join(eligible)})" if eligible else "") + (f"; not eligible: {why}" if why else ""))
    updates: list[Condition] = [c.make(c.ConditionType.VALID, True, c.Reason.RECONCILED, message, generation=gen)]
    # Ready and phase are derived as the scheduler derives them (hub/round_scheduler.py runs the round).
    await write_status(kube, _ref(res, body), owned_types=c.owned(res.kind, c.Writer.HUB), updates=updates,
                       fields={"observedGeneration": gen, "eligibleSites": len(eligible)},
                       derive_conditions=derive_ready, derive=derive_phase)
    return spec


async def reconcile_release(kube: Kube, body: dict[str, Any]) -> None:
    res = r.MODEL_RELEASES
    try:
        parse(res.kind, body)
    except SpecError as err:
        await _invalid(kube, res, body, err, ReleasePhase.INVALID.value)
        raise
    gen = body["metadata"].get("generation")
    updates = [c.make(c.ConditionType.VALID, True, c.Reason.RECONCILED, "spec is valid", generation=gen),
               c.make(c.ConditionType.READY, False, c.Reason.AWAITING_ANCHORING,
                      "artifact verification, signing and on-chain anchoring are not part of this fedcare "
                      "version", generation=gen)]
    await write_status(kube, _ref(res, body), owned_types=c.owned(res.kind, c.Writer.HUB), updates=updates,
                       fields={"phase": ReleasePhase.PENDING.value, "observedGeneration": gen})
