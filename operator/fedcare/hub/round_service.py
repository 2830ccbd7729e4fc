"""FederatedRound reconcile, as far as this version of fedcare goes (ModelRelease: release_service.py).

It validates the spec at the edge and reports it in conditions, and how many sites could run
it now (the admission check the scheduler will use). It claims no more than it does: Ready
stays False with a reason that says what is still to come.
"""

from __future__ import annotations

from typing import Any

from .. import events
from ..api import conditions as c
from ..api import resources as r
from ..api.base import Condition
from ..api.federated_round import FederatedRoundSpec, RoundPhase
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
    obj = await write_status(kube, _ref(res, body), owned_types=c.owned(res.kind, c.Writer.HUB), updates=updates,
                             fields={"observedGeneration": gen, "eligibleSites": len(eligible)},
                             derive_conditions=derive_ready, derive=derive_phase)
    await _validated(kube, body, obj, f"{len(eligible)} of {need} required sites eligible at admission")
    return spec


async def _validated(kube: Kube, before: dict[str, Any], obj: dict[str, Any] | None, detail: str) -> None:
    """Event ``Validated`` when the spec (generation) is first found valid."""
    valid = c.raw_condition(before, c.ConditionType.VALID.value) or {}
    gen = before["metadata"].get("generation")
    if obj is None or (valid.get("status") == "True" and valid.get("observedGeneration") == gen):
        return
    md = obj["metadata"]
    await events.post(kube, obj, events.NORMAL, "Validated",
                      f"Validated {obj.get('kind', '')} {md.get('namespace')}/{md['name']} (generation {gen}): "
                      f"{detail}")
