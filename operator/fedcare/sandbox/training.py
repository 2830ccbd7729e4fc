"""The training part of the demo: the Flower app in workloads/, run locally on synthetic data."""

from __future__ import annotations

import pathlib


async def run_training(sites: list[str], workdir: pathlib.Path) -> None:
    print("\n== Federated training: the Flower app is not wired into the sandbox yet", flush=True)
