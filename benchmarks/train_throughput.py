#!/usr/bin/env python
"""Local training throughput (images/s) of the ClientApp's training loop.

    python benchmarks/train_throughput.py            # CPU; and CUDA cases when a GPU is present
    python benchmarks/train_throughput.py --quick    # fewer images per case

Every case runs fedcare_workloads.train.train_epochs (the loop the ClientApp
uses) for one timed epoch after a warm-up epoch, on synthetic ultrasound
images. Ratios are against a baseline measured in the same run:

* threads:  small model, 64 px, all CPU threads  vs  1 thread
* DP-SGD:   small model, 64 px, Opacus DP-SGD    vs  the same without DP
* large:    large model vs small model at the same size (cost of the bigger model)
* CUDA (when present): large model, 128 px, bf16/fp16 autocast vs fp32.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time


def run_case(
    variant: str, size: int, batch: int, images: int, device: str, threads: int, dp: bool = False, amp: bool = True
) -> dict:
    import torch
    from fedcare_workloads.gpucheck import synthetic_images
    from fedcare_workloads.model import ModelSpec, build_model
    from fedcare_workloads.settings import PrivacySettings
    from fedcare_workloads.train import make_loader, train_epochs

    torch.set_num_threads(threads)
    dev = torch.device(device)
    data = synthetic_images(images, size)
    times = []
    for _ in range(2):  # warm-up epoch, then the timed one (fresh model/optimizer each)
        model = build_model(ModelSpec(variant, 3, size), seed=0).to(dev)
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        loader = make_loader(data, batch, True, 0)
        module = model
        if dp:
            from fedcare_workloads.privacy import make_private

            module, opt, loader = make_private(model, opt, loader, PrivacySettings(True, 1.0, 1.0, 1e-5, 0.0))
        start = time.perf_counter()
        res = train_epochs(module, loader, opt, 1, dev, amp=amp and not dp)
        times.append((time.perf_counter() - start, res.examples_seen))
    seconds, seen = times[-1]
    return {
        "model": variant,
        "size": size,
        "batch": batch,
        "device": device,
        "threads": threads,
        "dp": dp,
        "amp": amp and device == "cuda" and not dp,
        "images": seen,
        "seconds": round(seconds, 3),
        "images_per_s": round(seen / seconds, 1),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--json", help="also write the rows as JSON to this file")
    args = p.parse_args(argv)

    import torch

    n = 256 if args.quick else 1024
    cpus = len(os.sched_getaffinity(0))
    print(f"# training throughput: torch {torch.__version__}, {cpus} CPUs, cuda={torch.cuda.is_available()}")
    rows: list[dict] = []
    ratios: list[tuple[str, float]] = []

    def case(label: str, **kw) -> dict:
        r = run_case(**kw)
        r["case"] = label
        rows.append(r)
        print(f"{label:<34} {r['images_per_s']:>9.1f} img/s  ({r['images']} images in {r['seconds']} s)", flush=True)
        return r

    one = case("small 64px cpu 1 thread", variant="small", size=64, batch=32, images=n, device="cpu", threads=1)
    allt = case(
        f"small 64px cpu {cpus} threads", variant="small", size=64, batch=32, images=n, device="cpu", threads=cpus
    )
    ratios.append((f"{cpus} threads / 1 thread", allt["images_per_s"] / one["images_per_s"]))
    dp = case(
        f"small 64px cpu {cpus} threads DP-SGD",
        variant="small",
        size=64,
        batch=32,
        images=n,
        device="cpu",
        threads=cpus,
        dp=True,
    )
    ratios.append(("DP-SGD / plain (small 64px cpu)", dp["images_per_s"] / allt["images_per_s"]))
    large = case(
        f"large 64px cpu {cpus} threads",
        variant="large",
        size=64,
        batch=32,
        images=max(64, n // 8),
        device="cpu",
        threads=cpus,
    )
    ratios.append(("large / small (64px cpu)", large["images_per_s"] / allt["images_per_s"]))
    if torch.cuda.is_available():
        gpu_n = 2048 if args.quick else 8192
        fp32 = case(
            "large 128px cuda fp32",
            variant="large",
            size=128,
            batch=64,
            images=gpu_n,
            device="cuda",
            threads=cpus,
            amp=False,
        )
        mixed = case(
            "large 128px cuda mixed precision",
            variant="large",
            size=128,
            batch=64,
            images=gpu_n,
            device="cuda",
            threads=cpus,
            amp=True,
        )
        ratios.append(("cuda mixed / fp32 (large 128px)", mixed["images_per_s"] / fp32["images_per_s"]))
        gdp = case(
            "small 64px cuda DP-SGD",
            variant="small",
            size=64,
            batch=64,
            images=gpu_n,
            device="cuda",
            threads=cpus,
            dp=True,
        )
        gplain = case(
            "small 64px cuda plain",
            variant="small",
            size=64,
            batch=64,
            images=gpu_n,
            device="cuda",
            threads=cpus,
            amp=False,
        )
        ratios.append(("cuda DP-SGD / plain (small 64px)", gdp["images_per_s"] / gplain["images_per_s"]))
    for label, value in ratios:
        print(f"# ratio {label:<36} {value:6.2f}x")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"rows": rows, "ratios": dict(ratios)}, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
