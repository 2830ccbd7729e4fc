"""What the ClientApp reports to its own site agent, read from the training pod's log.

The ClientApp prints one ``FEDCARE-SITE-REPORT {json}`` line per server round
(workloads/fedcare_workloads/site_report.py); the agent reads the tail of the pod's log through
the site cluster's ``pods/log`` API (the site Role grants it) and copies what it finds into the
RoundAssignment's status: ``lastServerRound``, ``numExamples`` and ``metrics``. A refusal line
(the privacy ledger refused to train) makes the agent fail the assignment with
PrivacyBudgetExhausted.

What reaches the hub is only aggregate-safe, whatever the log holds: the parser keeps a fixed
set of metric names, finite numbers rounded to 4 significant digits, integer counts and one of
a fixed set of refusal codes. Anything else on a line (or any other line) is ignored, so
nothing but these values can ever leave the site through this path.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

from ..integrations.kube import Kube, NotFound

PREFIX = "FEDCARE-SITE-REPORT "
METRICS = ("train-loss", "val-loss", "val-accuracy", "val-auroc", "dp-epsilon-total", "dp-epsilon-dataset")
REFUSALS = {"PrivacyBudgetExhausted": "its privacy budget would be exceeded",
            "LedgerCorrupt": "its privacy ledger is damaged (hash chain broken)",
            "LedgerError": "it has no usable privacy ledger (agent flag --privacy-ledger-claim)"}
TAIL_LINES = 400


@dataclass
class SiteReport:
    last_round: int = 0
    examples: int = 0
    metrics: list[dict[str, str]] = field(default_factory=list)   # NamedValue wire dicts
    refused: str = ""             # a REFUSALS key, or ''
    refused_round: int = 0

    def status_fields(self) -> dict[str, Any]:
        if not self.last_round:
            return {}
        return {"lastServerRound": self.last_round, "numExamples": self.examples, "metrics": self.metrics}

    def refusal_message(self) -> str:
        return (f"the site refused server round {self.refused_round}: {REFUSALS[self.refused]} "
                f"({self.refused}); nothing was spent; its training pod is deleted")


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 10**9 else None


def parse(text: str) -> SiteReport:
    report = SiteReport()
    for raw in text.splitlines():
        at = raw.find(PREFIX)
        if at < 0:
            continue
        try:
            doc = json.loads(raw[at + len(PREFIX):])
        except ValueError:
            continue
        if not isinstance(doc, dict) or doc.get("v") != 1:
            continue
        rnd = _int(doc.get("round"))
        if rnd is None:
            continue
        if doc.get("kind") == "refused" and doc.get("reason") in REFUSALS:
            report.refused, report.refused_round = str(doc["reason"]), rnd
        elif doc.get("kind") == "train" and rnd >= report.last_round and _int(doc.get("examples")) is not None:
            metrics = doc.get("metrics") if isinstance(doc.get("metrics"), dict) else {}
            kept = []
            for name in METRICS:
                value = metrics.get(name)
                if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                    kept.append({"name": name, "value": f"{float(value):.4g}"})
            report.last_round, report.examples, report.metrics = rnd, int(doc["examples"]), kept
    return report


async def read(site_kube: Kube, namespace: str, pod: str, container: str = "supernode") -> SiteReport:
    """The latest report in the pod's log (empty if the pod is gone or has not started)."""
    try:
        text = await site_kube.pod_log(namespace, pod, container=container, tail_lines=TAIL_LINES)
    except NotFound:
        return SiteReport()
    return parse(text)
