"""DP-SGD at each site with Opacus, and its privacy accounting.

Why Opacus (local DP-SGD) rather than flwr's DifferentialPrivacy*Clipping
strategy wrappers: those give *central* DP at the aggregator: the server
clips and noises per-site updates, trusting the server with the raw update,
and accounts one epsilon for the federation ("user-level" DP over sites).
Hospitals here must not trust the aggregator with what their patients'
images did to the weights; DP-SGD at the site clips every *patient's* (sample's)
gradient and adds noise before anything leaves the hospital, and the
accountant runs at the site, so each site knows and reports the epsilon it has
spent. The cost is accuracy (per-sample noise) and ~2-3x training time.

Accounting: Renyi-DP (Opacus' RDP accountant) for the subsampled Gaussian
mechanism with Poisson sampling. Each round appends (noise multiplier,
sample rate, steps) to a history kept in the ClientApp's Context.state (it
persists across rounds of a run on the SuperNode), so a reply carries both
the epsilon of this round alone and the site's total over the run so far,
always at the run-config delta.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass

from .settings import PrivacySettings

STATE_KEY = "fedcare.dp-history"


class PrivacyBudgetExceeded(RuntimeError):
    """Training this round would take the site past privacy.max-epsilon."""


@dataclass(frozen=True)
class PrivacyReport:
    epsilon_round: float
    epsilon_total: float
    delta: float
    noise_multiplier: float
    sample_rate: float
    steps: int


def epsilon_for(history: list[tuple[float, float, int]], delta: float) -> float:
    from opacus.accountants import RDPAccountant

    if not history:
        return 0.0
    acc = RDPAccountant()
    acc.history = [(float(s), float(q), int(n)) for s, q, n in history]
    return float(acc.get_epsilon(delta=delta))


def load_history(state) -> list[tuple[float, float, int]]:
    """History from a flwr RecordDict (Context.state); empty on the first round."""
    rec = state.config_records.get(STATE_KEY) if hasattr(state, "config_records") else None
    if rec is None:
        return []
    return list(zip(rec["noise"], rec["rate"], rec["steps"], strict=True))


def save_history(state, history: list[tuple[float, float, int]]) -> None:
    from flwr.app import ConfigRecord

    state[STATE_KEY] = ConfigRecord(
        {
            "noise": [float(h[0]) for h in history],
            "rate": [float(h[1]) for h in history],
            "steps": [int(h[2]) for h in history],
        }
    )


def secret_seed() -> int:
    """64 bits from the OS CSPRNG.

    DP noise and Poisson batch sampling must be unpredictable to the server: a
    generator seeded from the public run-config seed would let anyone who knows
    it regenerate the noise and subtract it. Opacus' secure_mode (torchcsprng)
    is not available for current torch, so the generators are torch's, seeded
    secretly here. Known residual gap: without secure_mode the Gaussian samples
    are not hardened against floating-point attacks (Mironov 2012)."""
    return int.from_bytes(os.urandom(8), "little")


def make_private(model, optimizer, loader, settings: PrivacySettings):
    """Wrap model/optimizer/loader for DP-SGD. Returns (module, optimizer, loader).

    The returned module wraps `model`; `model`'s own parameters are trained, so
    its state_dict stays the one to send."""
    import torch
    from opacus import PrivacyEngine
    from opacus.validators import ModuleValidator

    errors = ModuleValidator.validate(model, strict=False)
    if errors:
        raise ValueError(f"model is not DP-SGD compatible: {errors[:3]}")
    torch.manual_seed(secret_seed())  # Poisson sampling draws from the default generator
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Secure RNG turned off")  # see secret_seed()
        engine = PrivacyEngine(accountant="rdp")
    return engine.make_private(
        module=model,
        optimizer=optimizer,
        data_loader=loader,
        noise_multiplier=settings.noise_multiplier,
        max_grad_norm=settings.max_grad_norm,
        poisson_sampling=True,
        noise_generator=torch.Generator().manual_seed(secret_seed()),
    )


def plan_round(
    history: list[tuple[float, float, int]], settings: PrivacySettings, sample_rate: float, steps: int, site: str
) -> PrivacyReport:
    """Account the round *before* training and refuse it if the budget would be exceeded."""
    this = (settings.noise_multiplier, sample_rate, steps)
    eps_round = epsilon_for([this], settings.delta)
    eps_total = epsilon_for(history + [this], settings.delta)
    if settings.max_epsilon > 0 and eps_total > settings.max_epsilon:
        spent = epsilon_for(history, settings.delta)
        raise PrivacyBudgetExceeded(
            f"site {site}: this round would raise epsilon from {spent:.3f} to {eps_total:.3f} "
            f"(delta={settings.delta:g}), above privacy.max-epsilon={settings.max_epsilon:g}; "
            "the site refused to train. Raise the budget, the noise multiplier, or stop the run."
        )
    return PrivacyReport(eps_round, eps_total, settings.delta, settings.noise_multiplier, sample_rate, steps)
