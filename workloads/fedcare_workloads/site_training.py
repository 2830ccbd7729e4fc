"""What one site does in one round: load its data, train or evaluate the global model.

Kept free of flwr Message handling so it can be tested and benchmarked
directly; client_app.py only translates to and from Messages.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np
import torch

from .data import Dataset, load_dataset
from .hashing import arrays_sha256
from .model import ModelSpec, build_model
from .ledger import Budget, LedgerError, PrivacyLedger, ledger_directory
from .privacy import PrivacyReport, accounted_sampling, make_private, reserve_round
from .records import load_arrays_into, state_to_arrays
from .settings import NodeSettings, RunSettings, default_torch_threads
from .train import TrainResult, evaluate, make_loader, pick_device, train_epochs


@dataclass
class SiteUpdate:
    arrays: dict[str, np.ndarray]
    sha256: str  # fedcare-arrays/v1 digest of `arrays`
    num_examples: int
    train: TrainResult
    val: dict[str, float]
    privacy: PrivacyReport | None
    data_summary: dict


def configure_threads(node: NodeSettings) -> None:
    torch.set_num_threads(node.torch_threads or default_torch_threads())


def site_seed(run: RunSettings, site: str, server_round: int) -> int:
    return (run.seed * 1_000_003 + server_round * 7_919 + zlib.crc32(site.encode())) % (2**31)


def load_site_data(run: RunSettings, node: NodeSettings, splits: tuple[str, ...]) -> Dataset:
    return load_dataset(node.data_path, node.data_root, run.classes, run.image_size, splits)


def global_model(run: RunSettings, arrays: dict[str, np.ndarray]) -> torch.nn.Module:
    model = build_model(ModelSpec(run.model, len(run.classes), run.image_size))
    load_arrays_into(model, arrays)
    return model


def make_optimizer(run: RunSettings, model: torch.nn.Module) -> torch.optim.Optimizer:
    """Adam by default: on this task SGD sits on a loss plateau for several epochs,
    which federated rounds of one or two local epochs never leave. A fresh
    optimizer each round: its state describes the old global model."""
    if run.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=run.lr, momentum=run.momentum)
    return torch.optim.Adam(model.parameters(), lr=run.lr)


def train_site(
    run: RunSettings,
    node: NodeSettings,
    global_arrays: dict[str, np.ndarray],
    server_round: int,
    proximal_mu: float = 0.0,
    device: torch.device | None = None,
    run_id: str = "local",
    ledger: PrivacyLedger | None = None,
) -> SiteUpdate:
    """Train the received global model on the site's train split, then validate it.

    With DP, the round is accounted in the dataset's privacy ledger (`ledger`, by
    default the one node config names) before any step is taken."""
    device = device or pick_device()
    data = load_site_data(run, node, ("train", "val"))
    train_set, val_set = data.split("train"), data.split("val")
    # Without DP, runs are reproducible from the run-config seed. With DP,
    # privacy.make_private reseeds from the OS: DP randomness must stay secret.
    seed = site_seed(run, node.site, server_round)
    torch.manual_seed(seed)
    model = global_model(run, global_arrays).to(device)
    global_params = [p.detach().clone() for p in model.parameters()] if proximal_mu > 0 else None
    optimizer = make_optimizer(run, model)
    loader = make_loader(train_set, run.batch_size, shuffle=True, seed=seed)
    report = None
    module = model
    if run.privacy.dp:
        ledger = ledger or site_ledger(node)
        module, optimizer, loader = make_private(model, optimizer, loader, run.privacy)
        sample_rate, steps = accounted_sampling(loader, run.local_epochs)
        report = reserve_round(
            ledger, run.privacy, sample_rate, steps, node.site, run_id, server_round, node_default_budget(node)
        )
    result = train_epochs(
        module,
        loader,
        optimizer,
        run.local_epochs,
        device,
        proximal_mu=proximal_mu,
        global_params=global_params,
        amp=not run.privacy.dp,
        where=f"site {node.site}, round {server_round}",
    )
    val = evaluate(model, val_set, device)
    arrays = state_to_arrays(model)
    return SiteUpdate(
        arrays=arrays,
        sha256=arrays_sha256(arrays),
        num_examples=len(train_set),
        train=result,
        val=val,
        privacy=report,
        data_summary=data.summary,
    )


def site_ledger(node: NodeSettings) -> PrivacyLedger:
    directory = ledger_directory(node.privacy_ledger)
    if not directory:
        raise LedgerError(
            "DP training needs the site's privacy ledger: start the SuperNode with --node-config "
            "'privacy-ledger=\"/<site storage>/privacy-ledger\"' (or set FEDCARE_PRIVACY_LEDGER); "
            "without it privacy loss could not be composed across runs"
        )
    return PrivacyLedger(directory, node.dataset_id)


def node_default_budget(node: NodeSettings) -> Budget | None:
    if node.privacy_budget_epsilon > 0:
        return Budget(node.privacy_budget_epsilon, node.privacy_budget_delta)
    return None


def evaluate_site(
    run: RunSettings, node: NodeSettings, global_arrays: dict[str, np.ndarray], device: torch.device | None = None
) -> tuple[int, dict[str, float]]:
    device = device or pick_device()
    val_set = load_site_data(run, node, ("val",)).split("val")
    model = global_model(run, global_arrays).to(device)
    return len(val_set), evaluate(model, val_set, device)
