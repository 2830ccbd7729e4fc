"""``python -m fedcare.site.gpucheck``: print, as JSON, the NVML inventory the site agent would
report on this machine, its GPUReady verdict and capacity, and how long one NVML poll takes.

Exits 0 with ``{"nvml": "unavailable", ...}`` where there is no NVIDIA driver; 1 only with
``--strict`` when a poll misses the per-GPU target, or when NVML stops answering mid-check.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import time
from typing import Any

from ..api.inventory import GPUInventory
from ..integrations.nvml import DEFAULT_POLL_TIMEOUT_S, NVMLReader, NVMLUnavailable, in_daemon_thread
from . import gpu_health

#: Target from the GPU-inventory issue: one inventory poll costs at most this per GPU.
TARGET_MS_PER_GPU = 5.0


def _verdict(inventory: GPUInventory) -> dict[str, str]:
    status, reason, message = gpu_health.gpu_ready(inventory)
    return {"status": status, "reason": reason.value, "message": message}


def _timed_polls(reader: NVMLReader, polls: int) -> tuple[GPUInventory, float, list[float]]:
    """The first poll (it also reads static values once), then ``polls`` timed ones, in ms."""
    started = time.perf_counter()
    inventory = reader.poll()
    first_ms = (time.perf_counter() - started) * 1000
    samples = []
    for _ in range(polls):
        started = time.perf_counter()
        inventory = reader.poll()
        samples.append((time.perf_counter() - started) * 1000)
    return inventory, first_ms, samples


def check(reader: NVMLReader, *, polls: int, allocatable: int | None, timeout_s: float) -> dict[str, Any]:
    started = time.perf_counter()
    try:
        in_daemon_thread(reader.init, name="nvml-init").result(timeout=timeout_s)
        init_ms = (time.perf_counter() - started) * 1000
        # The polls run in a daemon thread too: a wedged GPU gives a timeout, not a hung check.
        inventory, first_ms, samples = in_daemon_thread(
            lambda: _timed_polls(reader, polls), name="nvml-poll").result(timeout=timeout_s * (polls + 2))
    except NVMLUnavailable as err:
        inventory = GPUInventory(nvml_error=str(err))
        return {"nvml": "unavailable", "reason": str(err), "code": err.code, "gpuReady": _verdict(inventory)}
    gpus = max(len(inventory.devices), 1)
    mean = statistics.fmean(samples) if samples else first_ms
    return {
        "nvml": "ok",
        "nodeName": reader.node_name,
        "inventory": inventory.model_dump(by_alias=True, mode="json", exclude_none=True),
        "gpuReady": _verdict(inventory),
        "capacity": gpu_health.capacity(inventory, allocatable).wire(),
        "timing": {
            "initMs": round(init_ms, 3), "firstPollMs": round(first_ms, 3), "polls": len(samples),
            "meanMs": round(mean, 3),
            "p50Ms": round(statistics.median(samples), 3) if samples else None,
            "maxMs": round(max(samples), 3) if samples else None,
            "gpus": len(inventory.devices), "meanMsPerGpu": round(mean / gpus, 3),
            "targetMsPerGpu": TARGET_MS_PER_GPU, "withinTarget": mean / gpus <= TARGET_MS_PER_GPU,
        },
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fedcare.site.gpucheck", description=__doc__.split("\n\n")[0])
    parser.add_argument("--polls", type=int, default=int(os.environ.get("FEDCARE_GPUCHECK_POLLS", "20")),
                        help="timed polls after the first one (default 20)")
    parser.add_argument("--node-name", default=os.environ.get("NODE_NAME", ""),
                        help="node name to put in the inventory (default $NODE_NAME)")
    parser.add_argument("--allocatable", type=int, default=None,
                        help="the nodes' allocatable nvidia.com/gpu, for the capacity (default: unknown)")
    parser.add_argument("--timeout", type=float, default=DEFAULT_POLL_TIMEOUT_S,
                        help="seconds one NVML init or poll may take before the check gives up")
    parser.add_argument("--strict", action="store_true", help="exit 1 when the mean poll misses the target")
    args = parser.parse_args(argv)
    # The JSON says everything; the reader's retry warnings would only repeat it on stderr.
    logging.basicConfig(level=logging.ERROR, format="gpucheck: %(message)s")
    if args.polls < 0:
        parser.error("--polls must be 0 or more")
    reader = NVMLReader(node_name=args.node_name)
    try:
        result = check(reader, polls=args.polls, allocatable=args.allocatable, timeout_s=args.timeout)
    except TimeoutError:
        print(json.dumps({"nvml": "timeout", "reason": f"NVML did not answer within {args.timeout:.0f}s "
                                                      "(a wedged GPU or driver?)"}, indent=2))
        return 1     # NVML is still held by the stuck thread: no shutdown, the process just ends
    reader.shutdown()
    print(json.dumps(result, indent=2, ensure_ascii=False))
    if args.strict and result["nvml"] == "ok" and not result["timing"]["withinTarget"]:
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
