"""Local training and evaluation loops.

* Device: CUDA when present, else CPU. On CUDA, mixed precision (bf16 autocast
  when supported, else fp16 with a GradScaler); never under DP-SGD, whose
  per-sample gradient hooks are only validated in fp32.
* FedProx: the proximal term mu/2 * ||w - w_global||^2 is applied as a
  decoupled step after each optimizer step (w -= lr * mu * (w - w_global)).
  Added to the loss instead, Opacus would silently drop it (its per-sample
  gradients only see the data term); applied after the noisy step it is
  post-processing, so it costs no privacy.
* A non-finite loss stops training at once with NonFiniteLossError: the round
  is reported as failed for this site instead of shipping a NaN model that
  FedAvg would average into everyone's weights.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from .data import ImageSet
from .metrics import accuracy, macro_auroc


class NonFiniteLossError(RuntimeError):
    """Training diverged (loss became NaN or inf); the update is withheld."""


@dataclass
class TrainResult:
    loss: float  # mean training loss of the last epoch
    steps: int
    examples_seen: int
    seconds: float

    @property
    def images_per_second(self) -> float:
        return self.examples_seen / self.seconds if self.seconds > 0 else float("nan")


def pick_device(prefer: str | None = None) -> torch.device:
    if prefer:
        return torch.device(prefer)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def autocast_for(device: torch.device, enabled: bool = True):
    """Mixed precision on CUDA only (CPU autocast is slower for these convs)."""
    if not enabled or device.type != "cuda":
        return contextlib.nullcontext(), None
    if torch.cuda.is_bf16_supported():
        return torch.autocast("cuda", dtype=torch.bfloat16), None
    return torch.autocast("cuda", dtype=torch.float16), torch.amp.GradScaler("cuda")


def make_loader(data: ImageSet, batch_size: int, shuffle: bool, seed: int) -> torch.utils.data.DataLoader:
    ds = torch.utils.data.TensorDataset(torch.from_numpy(data.images), torch.from_numpy(data.labels))
    gen = torch.Generator().manual_seed(seed)
    return torch.utils.data.DataLoader(ds, batch_size=batch_size, shuffle=shuffle, generator=gen)


def train_epochs(
    model: nn.Module,
    loader,
    optimizer: torch.optim.Optimizer,
    epochs: int,
    device: torch.device,
    proximal_mu: float = 0.0,
    global_params: list[torch.Tensor] | None = None,
    amp: bool = True,
    where: str = "local training",
) -> TrainResult:
    """Train in place. `optimizer` may be an Opacus DPOptimizer (then amp=False)."""
    model.train()
    loss_fn = nn.CrossEntropyLoss()
    autocast, scaler = autocast_for(device, amp)
    params = [p for p in model.parameters() if p.requires_grad]
    lr = optimizer.param_groups[0]["lr"]
    steps = seen = 0
    last_loss = float("nan")
    start = time.perf_counter()
    for epoch in range(1, epochs + 1):
        total, count = 0.0, 0
        for step, (x, y) in enumerate(loader, start=1):
            if len(y) == 0:  # Poisson sampling (DP) can draw an empty batch
                continue
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            optimizer.zero_grad(set_to_none=True)
            with autocast:
                loss = loss_fn(model(x), y)
            value = float(loss.detach())
            if not math.isfinite(value):
                raise NonFiniteLossError(
                    f"{where}: loss became {value} at epoch {epoch}, step {step}; the update was withheld "
                    "(lower lr, check the received model and the images)"
                )
            if scaler is not None:
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
            else:
                loss.backward()
                optimizer.step()
            if proximal_mu > 0 and global_params is not None:
                with torch.no_grad():
                    for p, g in zip(params, global_params, strict=True):
                        p.sub_(p - g, alpha=lr * proximal_mu)
            total += value * len(y)
            count += len(y)
            steps += 1
        seen += count
        last_loss = total / count if count else float("nan")
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return TrainResult(loss=last_loss, steps=steps, examples_seen=seen, seconds=time.perf_counter() - start)


@torch.no_grad()
def predict(model: nn.Module, data: ImageSet, device: torch.device, batch_size: int = 256) -> np.ndarray:
    model.eval()
    out = []
    autocast, _ = autocast_for(device)
    for i in range(0, len(data), batch_size):
        x = torch.from_numpy(data.images[i : i + batch_size]).to(device)
        with autocast:
            logits = model(x)
        out.append(torch.softmax(logits.float(), dim=1).cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


def evaluate(model: nn.Module, data: ImageSet, device: torch.device) -> dict[str, float]:
    """loss (cross-entropy), accuracy and macro one-vs-rest AUROC."""
    probs = predict(model, data, device).astype(np.float64)
    eps = 1e-12
    loss = float(-np.mean(np.log(np.clip(probs[np.arange(len(data)), data.labels], eps, 1.0))))
    return {"loss": loss, "accuracy": accuracy(probs, data.labels), "auroc": macro_auroc(probs, data.labels)}
