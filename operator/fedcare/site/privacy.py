"""The hospital's own privacy settings, given to the site agent (flags of ``fedcare agent``),
never taken from the round (issue 11 item 2: the budget is set by the hospital, not by the round).

The agent passes them to every training pod it creates: the dataset's privacy budget (ε, δ) as
node-config ``privacy-budget-epsilon``/``privacy-budget-delta`` (recorded in the ledger on
first use; `fedcare-workloads privacy-budget --set-epsilon` changes it later), and the ledger's
location: the PersistentVolumeClaim ``ledger_claim`` in the site cluster, mounted read-write
at ``LEDGER_MOUNT`` (node-config ``privacy-ledger``). The ledger (workloads/ ledger.py) composes
ε across rounds, runs and SuperNode restarts and refuses a round that would pass the budget.

A site with no ledger claim trains without DP only: a DP round's ClientApp finds no ledger,
refuses, and the agent fails the assignment with PrivacyBudgetExhausted (site_reports.py).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

LEDGER_MOUNT = "/var/lib/fedcare/privacy-ledger"
#: node-config keys only the site sets: a RoundAssignment's nodeConfig never overrides them.
SITE_KEYS = ("privacy-ledger", "privacy-budget-epsilon", "privacy-budget-delta", "dataset-id")
_CLAIM = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")
_DATASET = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


class PrivacyConfigError(ValueError):
    pass


@dataclass(frozen=True)
class SitePrivacy:
    budget_epsilon: float = 0.0     # 0: none given here (the ledger's own budget, if any, applies)
    budget_delta: float = 1e-5
    ledger_claim: str = ""          # PVC holding the ledger ('' = no ledger: no DP training here)
    dataset_id: str = ""            # the ledger's dataset id ('' = the site name)

    def __post_init__(self) -> None:
        if not (math.isfinite(self.budget_epsilon) and self.budget_epsilon >= 0):
            raise PrivacyConfigError(f"--privacy-budget-epsilon must be a number >= 0, got {self.budget_epsilon!r}")
        if not 0 < self.budget_delta < 1:
            raise PrivacyConfigError(f"--privacy-budget-delta must be in (0, 1), got {self.budget_delta!r}")
        if self.ledger_claim and not _CLAIM.match(self.ledger_claim):
            raise PrivacyConfigError(f"--privacy-ledger-claim {self.ledger_claim!r} is not a valid "
                                     "PersistentVolumeClaim name (DNS-1123 subdomain)")
        if self.dataset_id and not _DATASET.match(self.dataset_id):
            raise PrivacyConfigError(f"--dataset-id {self.dataset_id!r} is invalid: 1-128 letters, digits, '.', "
                                     "'_' or '-'")
        if self.budget_epsilon > 0 and not self.ledger_claim:
            raise PrivacyConfigError("--privacy-budget-epsilon needs --privacy-ledger-claim: a budget without a "
                                     "durable ledger could not be kept across runs")

    def node_config(self) -> dict[str, str | float]:
        """node-config entries (TOML: floats stay numbers, the ClientApp checks their types)."""
        if not self.ledger_claim:
            return {}
        out: dict[str, str | float] = {"privacy-ledger": LEDGER_MOUNT}
        if self.budget_epsilon > 0:
            out |= {"privacy-budget-epsilon": float(self.budget_epsilon),
                    "privacy-budget-delta": float(self.budget_delta)}
        if self.dataset_id:
            out["dataset-id"] = self.dataset_id
        return out
