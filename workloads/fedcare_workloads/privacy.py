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
mechanism with Poisson sampling, kept in the site's durable ledger
(ledger.py), not in Flower's Context.state: each round's (noise multiplier,
sample rate, steps) is appended to the dataset's ledger before training, so a
reply carries the epsilon of this round, of this run so far and of the dataset
over every run ever trained, and a SuperNode restart continues the same
accounting.

Sampling is secret: the Poisson sampler and the noise draw from generators
seeded from os.urandom (secret_seed), never from the run-config seed the server
knows; otherwise the server could replay which patients were in each batch and
the amplification-by-subsampling the epsilon relies on would not hold. The
sample rate and step count that are accounted are read from the sampler that
actually runs (`accounted_sampling`), not recomputed beside it.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass

from .ledger import PrivacyBudgetExhausted, epsilon_for
from .settings import PrivacySettings

# Kept for callers of the old name: the refusal is PrivacyBudgetExhausted.
PrivacyBudgetExceeded = PrivacyBudgetExhausted



@dataclass(frozen=True)
class PrivacyReport:
    epsilon_round: float  # this round, at the run's delta
    epsilon_total: float  # this run so far (incl. this round), at the run's delta
    delta: float
    noise_multiplier: float
    sample_rate: float
    steps: int
    epsilon_dataset: float = 0.0  # every run on this dataset, at the budget's delta (ledger)


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
    # Opacus' DPDataLoader samples with the wrapped loader's own generator when
    # secure_mode is off; a loader seeded from the public run seed would make every
    # Poisson batch reproducible by the server. Re-wrap the dataset with a secret one.
    secret_loader = torch.utils.data.DataLoader(
        loader.dataset, batch_size=loader.batch_size, generator=torch.Generator().manual_seed(secret_seed())
    )
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Secure RNG turned off")  # see secret_seed()
        engine = PrivacyEngine(accountant="rdp")
    return engine.make_private(
        module=model,
        optimizer=optimizer,
        data_loader=secret_loader,
        noise_multiplier=settings.noise_multiplier,
        max_grad_norm=settings.max_grad_norm,
        poisson_sampling=True,
        noise_generator=torch.Generator().manual_seed(secret_seed()),
    )


def accounted_sampling(dp_loader, epochs: int) -> tuple[float, int]:
    """(Poisson sample rate q, steps) of the sampler that actually runs: q is the
    rate Opacus' UniformWithReplacementSampler draws with (batch / dataset size),
    steps the batches it yields per epoch times epochs (an empty batch still
    counts: it was a draw)."""
    sampler = dp_loader.batch_sampler
    return float(sampler.sample_rate), int(sampler.steps) * int(epochs)


def reserve_round(
    ledger, settings: PrivacySettings, sample_rate: float, steps: int, site: str, run_id: str, server_round: int,
    default_budget=None,
) -> PrivacyReport:
    """Account the round in the dataset's ledger *before* training; refuses with
    PrivacyBudgetExhausted if the hospital's budget (or the run's max-epsilon) would be exceeded."""
    eps_round = epsilon_for([(settings.noise_multiplier, sample_rate, steps)], settings.delta)
    if settings.max_epsilon > 0:
        run_so_far = ledger.history(ledger.entries(), str(run_id)) + [(settings.noise_multiplier, sample_rate, steps)]
        run_total = epsilon_for(run_so_far, settings.delta)
        if run_total > settings.max_epsilon:
            raise PrivacyBudgetExhausted(
                f"site {site}: this round would raise the run's epsilon to {run_total:.3f} "
                f"(delta={settings.delta:g}), above run-config privacy.max-epsilon={settings.max_epsilon:g}; "
                "the site refused to train: nothing was spent."
            )
    eps_round, eps_run, eps_dataset = ledger.reserve(
        run_id, server_round, settings.noise_multiplier, sample_rate, steps, settings.delta, site, default_budget
    )
    return PrivacyReport(eps_round, eps_run, settings.delta, settings.noise_multiplier, sample_rate, steps, eps_dataset)
