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
from .privacy import PrivacyReport, load_history, make_private, plan_round, save_history
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
    state=None,
    device: torch.device | None = None,
) -> SiteUpdate:
    """Train the received global model on the site's train split, then validate it.

    `state` is the ClientApp's Context.state (a flwr RecordDict); DP accounting
    history is read from and written back to it."""
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
        history = load_history(state) if state is not None else []
        module, optimizer, loader = make_private(model, optimizer, loader, run.privacy)
        sample_rate = 1.0 / len(loader)
        report = plan_round(history, run.privacy, sample_rate, run.local_epochs * len(loader), node.site)
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
    if report is not None and state is not None:
        # Only a round that really trained is spent (a NaN abort raised above).
        save_history(state, load_history(state) + [(report.noise_multiplier, report.sample_rate, report.steps)])
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


def evaluate_site(
    run: RunSettings, node: NodeSettings, global_arrays: dict[str, np.ndarray], device: torch.device | None = None
) -> tuple[int, dict[str, float]]:
    device = device or pick_device()
    val_set = load_site_data(run, node, ("val",)).split("val")
    model = global_model(run, global_arrays).to(device)
    return len(val_set), evaluate(model, val_set, device)
