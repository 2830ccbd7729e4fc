"""What the hub tells the ServerApp about the sites, so it need not trust their self-reports
(issue 11 item 11): how many examples each site registered, and the bound on an update's norm.

``registered-examples`` (``site=N,…``) comes from each participant's HospitalNode
``spec.dataset.size``; the ServerApp caps a site's aggregation weight at it
(workloads/fedcare_workloads/trust.py). The ServerApp refuses to weight a site missing from a
non-empty list, so the key is given only when every participant registered a size; otherwise
the ServerApp's own ``max-examples-per-site`` cap applies and the hub logs which sites lack one.
``max-update-norm`` is the round's ``spec.strategy.maxUpdateNorm``.
"""

from __future__ import annotations

import logging
from typing import Any

from ..api import resources as r
from ..api.federated_round import FederatedRoundSpec
from ..integrations.kube import Kube, Ref

log = logging.getLogger(__name__)

#: Run-config keys the hub sets from the sites' registrations; a spec may not override them.
KEYS = {"registered-examples", "max-update-norm"}


def registered_examples(nodes: list[dict[str, Any]], participants: list[str]) -> tuple[str, list[str]]:
    """(``site=N,…`` for the participants, participants without a registered size)."""
    sizes = {n["metadata"]["name"]: int(((n.get("spec") or {}).get("dataset") or {}).get("size") or 0)
             for n in nodes}
    missing = [s for s in participants if sizes.get(s, 0) <= 0]
    if missing:
        return "", missing
    return ",".join(f"{s}={sizes[s]}" for s in participants), []


async def trust_config(kube: Kube, spec: FederatedRoundSpec, participants: list[str],
                       round_name: str = "") -> dict[str, Any]:
    config: dict[str, Any] = {"max-update-norm": float(spec.strategy.max_update_norm)}
    nodes = await kube.list(Ref(r.API_VERSION, r.HOSPITAL_NODES.plural))
    value, missing = registered_examples(nodes, participants)
    if value:
        config["registered-examples"] = value
    else:
        log.warning("Round %s: %s registered no dataset size (HospitalNode spec.dataset.size); their example "
                    "weights are capped only by the ServerApp's max-examples-per-site", round_name,
                    ", ".join(missing))
    return config
