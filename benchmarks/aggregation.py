#!/usr/bin/env python
"""Aggregation throughput: fedcare's in-place averager vs np.copyto vs flwr's FedAvg.

    python benchmarks/aggregation.py            # N = 3, 8, 18 sites x 1M, 25M, 100M float32 params
    python benchmarks/aggregation.py --quick    # N = 3, 8 x 1M, 25M

Inputs are what the ServerApp really receives: one flwr RecordDict per site
whose ArrayRecord holds the model as .npy-serialised Arrays (10 arrays of
decreasing size), plus a MetricRecord with num-examples.

* copy:  np.copyto of one model-sized float32 buffer (GB/s = model bytes / s),
         best of --repeats, same process.
* ours:  fedcare_workloads.aggregation.WeightedAverager.average over zero-copy
         views of the message bytes (records.record_views, timed too), buffer
         preallocated once as in the strategy ("steady"); "first" includes
         allocating and first-touching the buffer.
* flwr:  flwr.serverapp.strategy.strategy_utils.aggregate_arrayrecords, which
         FedAvg.aggregate_train calls.

Throughput counts (N + 1) x model bytes (N updates read, one model written).
Peak extra memory = VmHWM - VmRSS around the call (Linux /proc/self/clear_refs
resets VmHWM), i.e. resident memory the call added on top of its inputs.
Targets: ours >= 0.5 x copy, >= 3 x flwr, extra memory <= 1 model.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import time

import numpy as np


def rss_kib(field: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(field)


def measure(fn):
    """(seconds, peak extra MiB, result) of one call."""
    gc.collect()
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")  # reset VmHWM to the current RSS
        base = rss_kib("VmRSS")
    except OSError:
        base = None
    t = time.perf_counter()
    result = fn()
    dt = time.perf_counter() - t
    extra = (rss_kib("VmHWM") - base) / 1024 if base is not None else float("nan")
    return dt, extra, result


def layer_sizes(total: int, parts: int = 10) -> list[int]:
    """Decreasing layer sizes summing to `total` (like a CNN's conv/linear weights + small biases)."""
    weights = np.array([2.0**-i for i in range(parts)])
    sizes = np.floor(weights / weights.sum() * total).astype(int)
    sizes[0] += total - sizes.sum()
    return [int(s) for s in sizes]


def make_inputs(n_sites: int, params: int, seed: int = 0):
    from flwr.app import Array, ArrayRecord, MetricRecord, RecordDict

    rng = np.random.default_rng(seed)
    base = rng.standard_normal(params, dtype=np.float32)
    sizes = layer_sizes(params)
    records, weights = [], []
    for i in range(n_sites):
        site = base * np.float32(1.0 + 0.01 * i)  # distinct content per site, cheap to make
        arrays, off = {}, 0
        for j, s in enumerate(sizes):
            arrays[f"layer{j}.weight"] = Array(site[off : off + s])
            off += s
        del site
        w = int(rng.integers(50, 500))
        weights.append(w)
        records.append(RecordDict({"arrays": ArrayRecord(arrays), "metrics": MetricRecord({"num-examples": w})}))
    return records, weights


def bench_copy(params: int, repeats: int) -> float:
    src = np.random.default_rng(1).standard_normal(params, dtype=np.float32)
    dst = np.empty_like(src)
    np.copyto(dst, src)  # fault pages in
    best = min(measure(lambda: np.copyto(dst, src))[0] for _ in range(repeats))
    return src.nbytes / best / 1e9


def run_case(n_sites: int, params: int, repeats: int, flwr_repeats: int) -> dict:
    from fedcare_workloads.aggregation import WeightedAverager
    from fedcare_workloads.records import record_views
    from flwr.serverapp.strategy.strategy_utils import aggregate_arrayrecords

    model_bytes = params * 4
    copy_gbs = bench_copy(params, repeats)
    records, weights = make_inputs(n_sites, params)
    counted = (n_sites + 1) * model_bytes

    def ours(agg):
        return agg.average([record_views(r["arrays"]) for r in records], weights)

    reference_views = record_views(records[0]["arrays"])
    first_s, first_extra, _ = measure(lambda: ours(WeightedAverager(reference_views)))
    agg = WeightedAverager(reference_views)
    ours(agg)
    steady = [measure(lambda: ours(agg)) for _ in range(repeats)]
    steady_s = min(s for s, _, _ in steady)
    steady_extra = max(e for _, e, _ in steady)
    threads = agg.threads
    agg.threads = 1
    one_thread_s = min(measure(lambda: ours(agg))[0] for _ in range(repeats))
    agg.threads = threads
    result = ours(agg)

    flwr_runs = [measure(lambda: aggregate_arrayrecords(records, "num-examples")) for _ in range(flwr_repeats)]
    flwr_s = min(s for s, _, _ in flwr_runs)
    flwr_extra = max(e for _, e, _ in flwr_runs)
    flwr_out = flwr_runs[-1][2]
    max_err = max(float(np.max(np.abs(result[k] - flwr_out[k].numpy()))) for k in result)
    del flwr_runs, flwr_out
    gc.collect()

    ours_gbs = counted / steady_s / 1e9
    flwr_gbs = counted / flwr_s / 1e9
    return {
        "sites": n_sites,
        "params_m": params / 1e6,
        "model_mib": model_bytes / 2**20,
        "copy_gbs": copy_gbs,
        "ours_gbs": ours_gbs,
        "ours_1thread_gbs": counted / one_thread_s / 1e9,
        "ours_first_call_gbs": counted / first_s / 1e9,
        "flwr_gbs": flwr_gbs,
        "ours_vs_copy": ours_gbs / copy_gbs,
        "ours_1thread_vs_copy": counted / one_thread_s / 1e9 / copy_gbs,
        "ours_vs_flwr": ours_gbs / flwr_gbs,
        "ours_extra_mib_first": first_extra,
        "ours_extra_mib_steady": steady_extra,
        "flwr_extra_mib": flwr_extra,
        "ours_extra_models_first": first_extra * 2**20 / model_bytes,
        "max_abs_diff_vs_flwr": max_err,
        "torch_threads": threads,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="N = 3, 8 and 1M, 25M parameters only")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--json", help="also write the rows as JSON to this file")
    args = p.parse_args(argv)
    sites = (3, 8) if args.quick else (3, 8, 18)
    params = (1_000_000, 25_000_000) if args.quick else (1_000_000, 25_000_000, 100_000_000)

    import flwr
    import torch

    print(
        f"# aggregation benchmark: python {sys.version.split()[0]}, numpy {np.__version__}, torch {torch.__version__}, "
        f"flwr {flwr.__version__}, {os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}"
    )
    header = (
        f"{'N':>3} {'params':>7} {'copy GB/s':>9} {'ours GB/s':>9} {'1-thr':>6} {'flwr GB/s':>9} "
        f"{'ours/copy':>9} {'1thr/copy':>9} {'ours/flwr':>9} {'extra MiB ours(1st)/flwr':>25} {'max|diff|':>9}"
    )
    print(header)
    rows = []
    for n in sites:
        for prm in params:
            flwr_repeats = 1 if n * prm >= 8 * 100_000_000 else min(2, args.repeats)
            r = run_case(n, prm, args.repeats, flwr_repeats)
            rows.append(r)
            print(
                f"{n:>3} {r['params_m']:>6.0f}M {r['copy_gbs']:>9.2f} {r['ours_gbs']:>9.2f} {r['ours_1thread_gbs']:>6.2f} "
                f"{r['flwr_gbs']:>9.2f} {r['ours_vs_copy']:>9.2f} {r['ours_1thread_vs_copy']:>9.2f} "
                f"{r['ours_vs_flwr']:>9.1f} {r['ours_extra_mib_first']:>11.0f} / {r['flwr_extra_mib']:>11.0f} "
                f"{r['max_abs_diff_vs_flwr']:>9.1e}",
                flush=True,
            )
    ok_copy = all(r["ours_vs_copy"] >= 0.5 for r in rows)
    ok_flwr = all(r["ours_vs_flwr"] >= 3.0 for r in rows)
    ok_mem = all(r["ours_extra_mib_first"] <= r["model_mib"] + 2 for r in rows)
    print(
        f"# targets: ours >= 0.5 x copy: {'met' if ok_copy else 'MISSED'}; ours >= 3 x flwr: "
        f"{'met' if ok_flwr else 'MISSED'}; extra memory <= 1 model (+2 MiB): {'met' if ok_mem else 'MISSED'}"
    )
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rows, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
