"""Which sites can run a round: Ready, uncordoned, heartbeating, with enough healthy free GPUs.

Pure functions over HospitalNode bodies, so the FederatedRound controller, the CLI and tests
all use the same rule. Each rejected site gets a reason a human can act on.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..api.base import LabelSelector
from ..api.conditions import raw_condition


@dataclass(frozen=True)
class Verdict:
    site: str
    eligible: bool
    reason: str


def _free_gpus(capacity: dict[str, Any], product: str) -> int:
    free = int(capacity.get("gpusFree") or 0)
    if not product:
        return free
    healthy_of_product = sum(int(p.get("healthy") or 0) for p in capacity.get("byProduct") or []
                             if p.get("product") == product)
    return min(free, healthy_of_product)


def judge(body: dict[str, Any], selector: LabelSelector, gpus: int = 0, product: str = "") -> Verdict:
    md = body.get("metadata") or {}
    site = md.get("name", "")
    if not selector.matches(md.get("labels") or {}):
        return Verdict(site, False, "labels do not match the selector")
    if md.get("deletionTimestamp"):
        return Verdict(site, False, "being deleted")
    if (body.get("spec") or {}).get("cordoned"):
        return Verdict(site, False, "cordoned")
    available = raw_condition(body, "Available")
    if available is None or available.get("status") != "True":
        return Verdict(site, False, "not heartbeating" + (f" ({available.get('reason')})" if available else ""))
    ready = raw_condition(body, "Ready")
    if ready is None or ready.get("status") != "True":
        return Verdict(site, False, f"not Ready ({ready.get('reason') if ready else 'no status yet'})")
    if gpus > 0:
        free = _free_gpus((body.get("status") or {}).get("capacity") or {}, product)
        if free < gpus:
            what = f"healthy free {product} GPUs" if product else "healthy free GPUs"
            return Verdict(site, False, f"{free} {what}, {gpus} needed")
    return Verdict(site, True, "eligible")


def eligible_sites(nodes: list[dict[str, Any]], selector: LabelSelector, gpus: int = 0,
                   product: str = "") -> tuple[list[str], list[Verdict]]:
    """(eligible site names sorted, the verdict for every node that matched the selector)."""
    verdicts = [judge(n, selector, gpus, product) for n in nodes]
    considered = [v for v in verdicts if v.reason != "labels do not match the selector"]
    return sorted(v.site for v in considered if v.eligible), considered
