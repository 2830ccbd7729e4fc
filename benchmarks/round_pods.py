"""The operator's own share of starting a round: FederatedRound created → every SuperNode pod
created, for N sites (default 18) on the emulator. Target: ≤ 1 s.

Runs the real hub and N real site agents (one process, one emulated API) and a process
kubelet for the SuperLink only (training pods are created but not run). The SuperLink's own
start-up (flower-superlink importing and answering /health) is Flower's time, not the
operator's: it is measured separately and subtracted; the baseline printed beside it is
that start-up measured in the same run.

    python benchmarks/round_pods.py [--sites 18] [--poll 0.2]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import pathlib
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "operator"), str(ROOT / "workloads")]

from fedcare.api.resources import API_VERSION  # noqa: E402
from fedcare.integrations.kube import Ref  # noqa: E402
from fedcare.sandbox.emulator import fedcare_emulator  # noqa: E402
from fedcare.sandbox.federation import WORK_NAMESPACE, federation, round_manifest  # noqa: E402
from round_overhead import _watch  # noqa: E402

NAMES = [f"site{i:02d}" for i in range(100)]


async def measure(sites: int, poll: float) -> dict[str, float]:
    """Timestamps from watches (the first time each state is seen), not from polling: a poll
    loop would load the in-process emulator that the operator under test shares."""
    with tempfile.TemporaryDirectory() as tmp:
        async with fedcare_emulator(max_history=5000) as k:
            async with federation(str(k.url), pathlib.Path(tmp), NAMES[:sites], images=20, poll=poll,
                                  site_kubelets=False) as fed:
                api = fed.api
                marks: dict[str, float] = {}
                done = asyncio.Event()
                pods: set[str] = set()
                t0 = time.monotonic()

                def mark(key: str) -> None:
                    marks.setdefault(key, time.monotonic() - t0)

                def on_pod(kind: str, obj: dict) -> None:
                    md = obj["metadata"]
                    if md["namespace"] == "default" and kind != "DELETED":
                        mark("superlink_pod")
                    elif md["namespace"] == WORK_NAMESPACE and kind == "ADDED":
                        pods.add(md["name"])
                        if len(pods) >= sites:
                            mark("pods")
                            done.set()

                def on_round(_kind: str, obj: dict) -> None:
                    if any(c["type"] == "AggregatorReady" and c["status"] == "True"
                           for c in (obj.get("status") or {}).get("conditions") or []):
                        mark("aggregator")

                stop = asyncio.Event()
                watches = [asyncio.create_task(_watch(api, Ref("v1", "pods"), on_pod, stop)),
                           asyncio.create_task(_watch(api, Ref(API_VERSION, "federatedrounds", "default"), on_round,
                                                      stop))]
                await asyncio.sleep(0.5)        # both watches established
                t0, cpu0 = time.monotonic(), time.process_time()
                await api.create(Ref(API_VERSION, "federatedrounds", "default"),
                                 round_manifest("bench", sites=sites, rounds=1))
                try:
                    await asyncio.wait_for(done.wait(), 600)
                    cpu = time.process_time() - cpu0
                finally:
                    stop.set()
                    for task in watches:
                        task.cancel()
                    await asyncio.gather(*watches, return_exceptions=True)
                return {"total": marks["pods"], "cpu": cpu, "scheduling": marks["superlink_pod"],
                        "superlink_startup": marks["aggregator"] - marks["superlink_pod"],
                        "dispatch": marks["pods"] - marks["aggregator"],
                        "operator": marks["pods"] - (marks["aggregator"] - marks["superlink_pod"])}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sites", type=int, default=18)
    parser.add_argument("--poll", type=float, default=0.2, help="hub round pass / agent work poll interval (s)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    r = asyncio.run(measure(args.sites, args.poll))
    print(f"sites={args.sites} poll={args.poll}s")
    print(f"round created -> {args.sites} SuperNode pods created: {r['total']:.2f} s")
    print(f"  CPU time of this process (emulator, hub, {args.sites} agents) meanwhile: {r['cpu']:.2f} s; "
          f"load average {os.getloadavg()[0]:.1f}")
    print(f"  create -> SuperLink pod created (hub): {r['scheduling']:.2f} s")
    print(f"  SuperLink pod created -> AggregatorReady (kubelet start, Flower's start-up, /health seen by the "
          f"hub's pass every {args.poll:g} s): {r['superlink_startup']:.2f} s")
    print(f"  AggregatorReady -> {args.sites} SuperNode pods created (hub dispatch, agents answer and create): "
          f"{r['dispatch']:.2f} s")
    print(f"  operator's share (total minus the SuperLink's start): {r['operator']:.2f} s "
          f"(target <= 1 s; ratio to target {r['operator']:.2f}x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
