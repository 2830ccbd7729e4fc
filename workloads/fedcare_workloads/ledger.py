"""The site's durable privacy ledger: one append-only file per dataset.

Flower's Context.state lives in the SuperNode's memory: it resets on every new
run and when the SuperNode restarts, so it cannot compose privacy loss across
runs. The ledger lives on the site's own storage (node-config `privacy-ledger`,
or env FEDCARE_PRIVACY_LEDGER: a directory, e.g. a PVC the hospital owns) and
holds, per dataset id, a JSON-lines file `<dataset-id>.jsonl`:

  {"kind": "budget", "epsilon": 8.0, "delta": 1e-05, "set_by": "...", ...}
  {"kind": "spend", "run_id": "...", "round": 3, "noise_multiplier": 1.1,
   "sample_rate": 0.0625, "steps": 16, "delta": 1e-05, ...}

Every line carries `seq`, `prev` (the sha256 of the previous line) and `sha256`
(of its own other fields), so an edited, removed, reordered or damaged entry is
detected (LedgerCorrupt) and training is refused until the hospital looks at
it. This detects accidents and naive edits, not a forger with write access to
the site's storage (who could recompute the hashes): the ledger is as
trustworthy as the storage the hospital gives it. The "spend" entries are
the RDP accountant's state (Opacus RDPAccountant.history: noise multiplier,
sample rate, steps), so epsilon is recomputed exactly, composed over every run
and round ever trained on the dataset, at the budget's delta.

A spend is appended *before* training starts (under an exclusive file lock,
fsynced): a round that crashes or a SuperNode that restarts mid-run still
counts it (conservative), and the restarted SuperNode reads the same file and
continues the same accounting. The budget is set by the hospital (`fedcare-
workloads privacy-budget --set-epsilon`, or node-config `privacy-budget-epsilon`
recorded on first use), never by the round's run config.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import json
import math
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

LEDGER_ENV = "FEDCARE_PRIVACY_LEDGER"
_DATASET_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
GENESIS = "0" * 64


class LedgerError(RuntimeError):
    """The ledger cannot be used (bad path, unreadable, or corrupt)."""


class LedgerCorrupt(LedgerError):
    """The ledger's hash chain is broken: the file was edited or damaged."""


class PrivacyBudgetExhausted(RuntimeError):
    """Training would take the dataset past the budget the hospital set (or none is set).

    The class name is the refusal's reason: a ClientApp error reply starts with
    `site=<site>: PrivacyBudgetExhausted: ` (workloads/README.md)."""

    reason = "PrivacyBudgetExhausted"


@dataclass(frozen=True)
class Budget:
    epsilon: float
    delta: float


@dataclass(frozen=True)
class LedgerSummary:
    dataset: str
    budget: Budget | None
    spent_epsilon: float  # all runs, at the budget's delta (or 0 with no budget)
    entries: int
    runs: int

    @property
    def remaining_epsilon(self) -> float | None:
        return None if self.budget is None else max(0.0, self.budget.epsilon - self.spent_epsilon)

    def to_json(self) -> dict:
        return {
            "dataset": self.dataset,
            "budget_epsilon": None if self.budget is None else self.budget.epsilon,
            "delta": None if self.budget is None else self.budget.delta,
            "spent_epsilon": self.spent_epsilon,
            "remaining_epsilon": self.remaining_epsilon,
            "exhausted": self.budget is None or self.spent_epsilon >= self.budget.epsilon,
            "entries": self.entries,
            "runs": self.runs,
        }


def epsilon_for(history: list[tuple[float, float, int]], delta: float) -> float:
    """Epsilon of the composed subsampled-Gaussian steps: Opacus' RDP analysis
    (the same orders and formulas as its RDPAccountant), composed by adding RDP.

    RDP of n steps of one (noise, rate) is n times the one-step RDP, so the one-step
    vector is computed once per (noise, rate) and cached: the analysis costs ~0.5 s
    per pair on a CPU, and a ledger is re-read every round."""
    if not history:
        return 0.0
    from opacus.accountants.analysis.rdp import get_privacy_spent

    total = None
    for s, q, n in history:
        step = _rdp_per_step(float(s), float(q)) * int(n)
        total = step if total is None else total + step
    eps, _ = get_privacy_spent(orders=_orders(), rdp=total, delta=delta)
    return float(eps)


@functools.lru_cache(maxsize=1)
def _orders() -> tuple[float, ...]:
    from opacus.accountants import RDPAccountant

    return tuple(RDPAccountant.DEFAULT_ALPHAS)


@functools.lru_cache(maxsize=1024)
def _rdp_per_step(noise_multiplier: float, sample_rate: float):
    import numpy as np
    from opacus.accountants.analysis.rdp import compute_rdp

    return np.asarray(compute_rdp(q=sample_rate, noise_multiplier=noise_multiplier, steps=1, orders=list(_orders())))


def _line_hash(line: str) -> str:
    return hashlib.sha256(line.encode()).hexdigest()


def _entry_hash(body: dict) -> str:
    return _line_hash(json.dumps(body, sort_keys=True, separators=(",", ":")))


class PrivacyLedger:
    """One dataset's ledger file. Safe across processes (flock) and restarts (fsync)."""

    def __init__(self, directory: Path | str, dataset: str) -> None:
        if not _DATASET_ID.match(dataset or ""):
            raise LedgerError(
                f"dataset id {dataset!r} is invalid: use 1-128 letters, digits, '.', '_' or '-' "
                "(node-config 'dataset-id', default the site name)"
            )
        self.directory = Path(directory)
        if not self.directory.is_absolute():
            raise LedgerError(f"privacy ledger path {directory!s} must be absolute (node-config 'privacy-ledger')")
        self.dataset = dataset
        self.path = self.directory / f"{dataset}.jsonl"

    # -- reading -----------------------------------------------------------------
    def entries(self) -> list[dict]:
        try:
            with self.path.open("r", encoding="utf-8") as fh:
                fcntl.flock(fh, fcntl.LOCK_SH)
                text = fh.read()
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise LedgerError(f"privacy ledger {self.path} cannot be read: {exc.strerror}") from None
        return self._parse(text)

    def _parse(self, text: str) -> list[dict]:
        out: list[dict] = []
        prev = GENESIS
        lines = text.split("\n")
        if lines and lines[-1] == "":
            lines.pop()
        for n, line in enumerate(lines, start=1):
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                if n == len(lines) and not text.endswith("\n"):
                    break  # a torn last write (crash mid-append): that entry never completed
                raise LedgerCorrupt(f"privacy ledger {self.path} line {n}: not JSON; restore it from backup") from None
            body = {k: v for k, v in entry.items() if k != "sha256"}
            if entry.get("seq") != n or entry.get("prev") != prev or entry.get("sha256") != _entry_hash(body):
                raise LedgerCorrupt(
                    f"privacy ledger {self.path} line {n}: hash chain broken (entry edited, removed or reordered); "
                    "training on this dataset is refused until the ledger is restored"
                )
            prev = _line_hash(line)
            out.append(entry)
        return out

    def budget(self, entries: list[dict] | None = None) -> Budget | None:
        found = None
        for e in self.entries() if entries is None else entries:
            if e.get("kind") == "budget":
                found = Budget(float(e["epsilon"]), float(e["delta"]))
        return found

    @staticmethod
    def history(entries: list[dict], run_id: str | None = None) -> list[tuple[float, float, int]]:
        return [
            (float(e["noise_multiplier"]), float(e["sample_rate"]), int(e["steps"]))
            for e in entries
            if e.get("kind") == "spend" and (run_id is None or e.get("run_id") == run_id)
        ]

    def summary(self) -> LedgerSummary:
        entries = self.entries()
        budget = self.budget(entries)
        spent = epsilon_for(self.history(entries), budget.delta) if budget else 0.0
        runs = {e.get("run_id") for e in entries if e.get("kind") == "spend"}
        return LedgerSummary(self.dataset, budget, spent, len(entries), len(runs))

    # -- writing -----------------------------------------------------------------
    @contextlib.contextmanager
    def _locked(self):
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600)
        except OSError as exc:
            raise LedgerError(
                f"privacy ledger {self.path} cannot be opened for writing: {exc.strerror}; give the SuperNode "
                "a writable directory on the site's own storage (node-config 'privacy-ledger')"
            ) from None
        with os.fdopen(fd, "r+", encoding="utf-8") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            fh.seek(0)
            yield fh

    def _append(self, fh, entries: list[dict], entry: dict) -> dict:
        fh.seek(0)
        raw = fh.read()
        if raw and not raw.endswith("\n"):
            # A torn last line (a crash mid-append): that write never completed, so it
            # is cut off before the next entry is appended.
            fh.truncate(len(raw[: raw.rfind("\n") + 1].encode()))
            raw = raw[: raw.rfind("\n") + 1]
        last = [ln for ln in raw.split("\n") if ln]
        prev = _line_hash(last[len(entries) - 1]) if entries else GENESIS
        full = {"seq": len(entries) + 1, "prev": prev, "time": time.time(), **entry}
        full["sha256"] = _entry_hash(full)
        fh.write(json.dumps(full, sort_keys=True, separators=(",", ":")) + "\n")
        fh.flush()
        os.fsync(fh.fileno())
        return full

    def set_budget(self, epsilon: float, delta: float, set_by: str) -> dict:
        if not (math.isfinite(epsilon) and epsilon > 0):
            raise LedgerError(f"privacy budget epsilon must be a positive number, got {epsilon!r}")
        if not (0 < delta < 1):
            raise LedgerError(f"privacy budget delta must be in (0, 1), got {delta!r}")
        with self._locked() as fh:
            entries = self._parse(fh.read())
            return self._append(fh, entries, {"kind": "budget", "epsilon": epsilon, "delta": delta, "set_by": set_by})

    def reserve(
        self,
        run_id: str,
        server_round: int,
        noise_multiplier: float,
        sample_rate: float,
        steps: int,
        run_delta: float,
        site: str,
        default_budget: Budget | None = None,
    ) -> tuple[float, float, float]:
        """Append the spend of one round if the budget allows it; else PrivacyBudgetExhausted.

        Returns (epsilon of this round at run_delta, epsilon of this run so far
        incl. this round at run_delta, epsilon of the dataset over all runs at the
        budget's delta). Read, check and append happen under one exclusive lock."""
        this = (float(noise_multiplier), float(sample_rate), int(steps))
        with self._locked() as fh:
            entries = self._parse(fh.read())
            budget = self.budget(entries)
            if budget is None and default_budget is not None:
                self._append(
                    fh,
                    entries,
                    {"kind": "budget", "epsilon": default_budget.epsilon, "delta": default_budget.delta,
                     "set_by": "node-config privacy-budget-epsilon"},
                )
                fh.seek(0)
                entries = self._parse(fh.read())
                budget = default_budget
            if budget is None:
                raise PrivacyBudgetExhausted(
                    f"site {site}: dataset {self.dataset} has no privacy budget; the hospital sets one with "
                    f"`fedcare-workloads privacy-budget --ledger <ledger-dir> --dataset {self.dataset} "
                    "--set-epsilon E` or node-config privacy-budget-epsilon; the site refused to train"
                )
            if run_delta > budget.delta:
                raise PrivacyBudgetExhausted(
                    f"site {site}: run-config privacy.delta={run_delta:g} is above the dataset's budget "
                    f"delta={budget.delta:g}; the site refused to train"
                )
            history = self.history(entries)
            spent = epsilon_for(history, budget.delta)
            total = epsilon_for(history + [this], budget.delta)
            if total > budget.epsilon:
                raise PrivacyBudgetExhausted(
                    f"site {site}: dataset {self.dataset} has spent epsilon={spent:.3f} of its budget "
                    f"{budget.epsilon:g} (delta={budget.delta:g}); this round would raise it to {total:.3f}. "
                    "The site refused to train: nothing was spent. The hospital may raise the budget; the "
                    "federation may raise the noise multiplier or train fewer steps."
                )
            self._append(
                fh,
                entries,
                {
                    "kind": "spend",
                    "run_id": str(run_id),
                    "round": int(server_round),
                    "noise_multiplier": this[0],
                    "sample_rate": this[1],
                    "steps": this[2],
                    "delta": float(run_delta),
                    "epsilon_dataset": total,
                },
            )
        run_history = self.history(entries, str(run_id)) + [this]
        return epsilon_for([this], run_delta), epsilon_for(run_history, run_delta), total


def ledger_directory(node_value: str) -> str:
    """node-config `privacy-ledger`, else $FEDCARE_PRIVACY_LEDGER, else ""."""
    return node_value or os.environ.get(LEDGER_ENV, "")
