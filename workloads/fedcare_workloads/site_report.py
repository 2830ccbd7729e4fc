"""The ClientApp's report to its own site agent: one line per server round on the SuperNode's
stdout, which the agent reads through the Kubernetes ``pods/log`` API of its own cluster and
copies into the RoundAssignment's status (operator: fedcare/site/site_reports.py).

Why stdout and not a file or an API call: the training pod has no Kubernetes credentials
(automountServiceAccountToken: false) and no storage shared with the agent; its log is what
the agent can already read, on a real cluster and in the sandbox alike.

Only aggregate-safe values are written: the server round, the number of training examples
and the metrics in the coarsened form that also leaves the site (release.coarsen), from a
fixed list. A refusal carries only its reason code (the class name of the privacy error).
Never a path, a file name, a row id or a message text.

  FEDCARE-SITE-REPORT {"v": 1, "kind": "train", "round": 2, "examples": 32, "metrics": {...}}
  FEDCARE-SITE-REPORT {"v": 1, "kind": "refused", "round": 1, "reason": "PrivacyBudgetExhausted"}
"""

from __future__ import annotations

import json
import math
import sys

PREFIX = "FEDCARE-SITE-REPORT "
VERSION = 1
#: Metrics the agent may publish (all already coarsened by release.coarsen before they leave).
METRICS = ("train-loss", "val-loss", "val-accuracy", "val-auroc", "dp-epsilon-total", "dp-epsilon-dataset")


def line(kind: str, server_round: int, **values) -> str:
    return PREFIX + json.dumps({"v": VERSION, "kind": kind, "round": int(server_round), **values},
                               sort_keys=True, separators=(",", ":"))


def train(server_round: int, examples: int, metrics: dict) -> str:
    kept = {k: float(metrics[k]) for k in METRICS
            if k in metrics and isinstance(metrics[k], (int, float)) and math.isfinite(float(metrics[k]))}
    return _emit(line("train", server_round, examples=int(examples), metrics=kept))


def refused(server_round: int, reason: str) -> str:
    return _emit(line("refused", server_round, reason=reason))


def _emit(text: str) -> str:
    print(text, file=sys.stdout, flush=True)
    return text
