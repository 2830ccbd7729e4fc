"""`python -m fedcare_workloads.gpucheck`: one real training epoch on CUDA.

Trains the chosen model (default: the large one) for one epoch on synthetic
ultrasound images with the same loop the ClientApp uses (mixed precision on
GPU), and prints one JSON object: device, images/s, peak GPU memory, losses.
Without CUDA it says so, runs a tiny CPU epoch of the small model (so the
command stays testable anywhere) and exits 0. Exit 1 only if training itself
fails (e.g. NaN loss, CUDA error).
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np


def synthetic_images(n: int, size: int, seed: int = 0, pool: int = 64):
    """`n` labelled images cycling through a pool of `pool` rendered ones (rendering
    thousands of 128 px frames on the CPU would dominate the check)."""
    from .data import ImageSet
    from .synth import PROBES, render_image

    classes = ("normal", "benign", "malignant")
    imgs, labels = [], []
    for i in range(min(pool, n)):
        rng = np.random.default_rng([seed, 7, i])
        imgs.append(render_image(rng, classes[i % 3], PROBES[i % len(PROBES)], size).astype(np.float32) / 255.0)
        labels.append(i % 3)
    reps = -(-n // len(imgs))
    images = np.tile(np.stack(imgs)[:, None], (reps, 1, 1, 1))[:n]
    return ImageSet(np.ascontiguousarray(images), np.tile(np.asarray(labels, np.int64), reps)[:n])


def run_epoch(variant: str, image_size: int, batch_size: int, images: int, device_name: str) -> dict:
    import torch

    from .model import ModelSpec, build_model, count_parameters
    from .train import autocast_for, make_loader, train_epochs

    device = torch.device(device_name)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.cuda.reset_peak_memory_stats(device)
    model = build_model(ModelSpec(variant, 3, image_size), seed=0).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    data = synthetic_images(images, image_size)
    warm = synthetic_images(min(images, 4 * batch_size), image_size)
    train_epochs(model, make_loader(warm, batch_size, True, 1), optimizer, 1, device)  # cudnn autotune, allocator
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    result = train_epochs(model, make_loader(data, batch_size, True, 0), optimizer, 1, device)
    seconds = time.perf_counter() - start
    autocast, _ = autocast_for(device)
    amp = getattr(autocast, "fast_dtype", None)
    out = {
        "model": variant,
        "parameters": count_parameters(model),
        "image_size": image_size,
        "batch_size": batch_size,
        "images": result.examples_seen,
        "epoch_seconds": round(seconds, 3),
        "images_per_second": round(result.examples_seen / seconds, 1),
        "final_loss": round(result.loss, 4),
        "mixed_precision": str(amp).replace("torch.", "") if amp is not None else "off",
        "torch_threads": torch.get_num_threads(),
    }
    if device.type == "cuda":
        out["max_memory_allocated_mib"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
        out["max_memory_reserved_mib"] = round(torch.cuda.max_memory_reserved(device) / 2**20, 1)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m fedcare_workloads.gpucheck", description=__doc__)
    p.add_argument("--model", default="large", choices=("small", "large"))
    p.add_argument("--image-size", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--images", type=int, default=4096, help="images in the timed epoch")
    args = p.parse_args(argv)

    import torch

    report: dict = {"torch": torch.__version__, "cuda": torch.cuda.is_available()}
    try:
        if report["cuda"]:
            report["device"] = torch.cuda.get_device_name(0)
            report["cuda_version"] = torch.version.cuda
            report["gpu_memory_total_mib"] = round(torch.cuda.get_device_properties(0).total_memory / 2**20)
            report["epoch"] = run_epoch(args.model, args.image_size, args.batch_size, args.images, "cuda")
        else:
            report["message"] = "CUDA is absent; ran a tiny CPU epoch of the small model instead"
            report["device"] = "cpu"
            report["epoch"] = run_epoch("small", 32, 16, 64, "cpu")
    except Exception as exc:  # report, then fail: the check must not pass silently
        report["error"] = f"{type(exc).__name__}: {exc}"
        print(json.dumps(report, indent=2))
        return 1
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
