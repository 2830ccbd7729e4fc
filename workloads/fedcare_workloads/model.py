"""Torch CNNs for grayscale ultrasound classification.

Both variants use GroupNorm, never BatchNorm: BatchNorm mixes samples inside a
batch, which DP-SGD (Opacus) cannot bound per sample, and its running
statistics would be one more thing for FedAvg to average badly across sites
with different probes.

* Each image is standardised (zero mean, unit variance) inside `forward`: gain
  and depth settings differ per probe and per site, and doing it in the model
  means no preprocessing step can drift between sites, server and deployment.
* The head sees global average *and* global max pooling: a lesion covers a few
  percent of the frame, and average pooling alone dilutes it so much that
  training sits on a plateau for several epochs (measured on synthetic data).
  Global pooling also makes the networks accept any input size; the size a
  model was trained for is recorded in its model card.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

MIN_IMAGE_SIZE = 16


@dataclass(frozen=True)
class ModelSpec:
    variant: str
    num_classes: int
    image_size: int

    def describe(self, model: nn.Module) -> dict:
        return {
            **asdict(self),
            "name": f"UltrasoundCNN-{self.variant}",
            "input": [1, self.image_size, self.image_size],
            "input_range": "[0, 1] grayscale, float32, NCHW",
            "input_standardization": "per image: zero mean, unit variance (inside the model)",
            "pooling": "global average + global max, concatenated",
            "normalization": "GroupNorm",
            "parameters": count_parameters(model),
        }


def _groups(channels: int) -> int:
    return 8 if channels % 8 == 0 else 1


def standardize(x: torch.Tensor) -> torch.Tensor:
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    std = x.std(dim=(1, 2, 3), keepdim=True)
    return (x - mean) / (std + 1e-5)


def global_pool(x: torch.Tensor) -> torch.Tensor:
    return torch.cat([x.mean(dim=(2, 3)), x.amax(dim=(2, 3))], dim=1)


def conv_gn_relu(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False),
        nn.GroupNorm(_groups(cout), cout),
        nn.ReLU(),
    )


class SmallCNN(nn.Module):
    """~60k parameters: trains a few hundred 64x64 images per second on one CPU core."""

    def __init__(self, num_classes: int, width: int = 16) -> None:
        super().__init__()
        w = width
        self.features = nn.Sequential(
            conv_gn_relu(1, w),
            nn.MaxPool2d(2),
            conv_gn_relu(w, 2 * w),
            nn.MaxPool2d(2),
            conv_gn_relu(2 * w, 4 * w),
            nn.MaxPool2d(2),
            conv_gn_relu(4 * w, 4 * w),
        )
        self.head = nn.Linear(8 * w, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(global_pool(self.features(standardize(x))))


class ResidualBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            conv_gn_relu(cin, cout, stride),
            nn.Conv2d(cout, cout, 3, padding=1, bias=False),
            nn.GroupNorm(_groups(cout), cout),
        )
        self.skip = (
            nn.Identity()
            if stride == 1 and cin == cout
            else nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.GroupNorm(_groups(cout), cout))
        )
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.body(x) + self.skip(x))


class LargeCNN(nn.Module):
    """ResNet-18-like (GroupNorm), ~11M parameters: meant for GPUs and 128px+ inputs."""

    def __init__(self, num_classes: int, widths: tuple[int, ...] = (64, 128, 256, 512)) -> None:
        super().__init__()
        self.stem = nn.Sequential(conv_gn_relu(1, widths[0] // 2, stride=2), conv_gn_relu(widths[0] // 2, widths[0]))
        blocks: list[nn.Module] = []
        cin = widths[0]
        for i, w in enumerate(widths):
            blocks += [ResidualBlock(cin, w, 1 if i == 0 else 2), ResidualBlock(w, w, 1)]
            cin = w
        self.blocks = nn.Sequential(*blocks)
        self.dropout = nn.Dropout(0.2)
        self.head = nn.Linear(2 * cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.stem(standardize(x)))
        return self.head(self.dropout(global_pool(x)))


def build_model(spec: ModelSpec, seed: int | None = None) -> nn.Module:
    """Build a model; with `seed`, the initial weights are reproducible (the ServerApp's
    round-0 model and a test's reference model are then identical)."""
    if spec.image_size < MIN_IMAGE_SIZE:
        raise ValueError(f"image size {spec.image_size} is below the minimum {MIN_IMAGE_SIZE}")
    if spec.num_classes < 2:
        raise ValueError(f"need at least 2 classes, got {spec.num_classes}")
    builders = {"small": SmallCNN, "large": LargeCNN}
    if spec.variant not in builders:
        raise ValueError(f"unknown model variant {spec.variant!r}; expected one of {sorted(builders)}")
    if seed is None:
        return builders[spec.variant](spec.num_classes)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return builders[spec.variant](spec.num_classes)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
