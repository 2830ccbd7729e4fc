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

NAMES = [f"site{i:02d}" for i in range(100)]


async def measure(sites: int, poll: float) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        async with fedcare_emulator(max_history=5000) as k:
            async with federation(str(k.url), pathlib.Path(tmp), NAMES[:sites], images=20, poll=poll,
                                  site_kubelets=False) as fed:
                api = fed.api
                t0 = time.monotonic()
                await api.create(Ref(API_VERSION, "federatedrounds", "default"),
                                 round_manifest("bench", sites=sites, rounds=1))
                marks: dict[str, float] = {}
                while "pods" not in marks:
                    if "superlink_pod" not in marks and await api.list(Ref("v1", "pods", "default")):
                        marks["superlink_pod"] = time.monotonic()
                    obj = await api.get(Ref(API_VERSION, "federatedrounds", "default", "bench"))
                    ready = next((c for c in obj.get("status", {}).get("conditions", [])
                                  if c["type"] == "AggregatorReady"), {})
                    if "aggregator" not in marks and ready.get("status") == "True":
                        marks["aggregator"] = time.monotonic()
                    if len(await api.list(Ref("v1", "pods", WORK_NAMESPACE))) >= sites:
                        marks["pods"] = time.monotonic()
                    if time.monotonic() - t0 > 600:
                        raise TimeoutError(f"not every pod within 600 s: {marks}")
                    await asyncio.sleep(0.02)
                total = marks["pods"] - t0
                superlink = marks["aggregator"] - marks["superlink_pod"]
                return {"total": total, "superlink_startup": superlink, "operator": total - superlink}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sites", type=int, default=18)
    parser.add_argument("--poll", type=float, default=0.2, help="hub round pass / agent work poll interval (s)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    r = asyncio.run(measure(args.sites, args.poll))
    print(f"sites={args.sites} poll={args.poll}s")
    print(f"round created -> {args.sites} SuperNode pods created: {r['total']:.2f} s")
    print(f"  of which SuperLink start-up (baseline, Flower's own): {r['superlink_startup']:.2f} s")
    print(f"  operator's share: {r['operator']:.2f} s (target <= 1 s; ratio to target {r['operator']:.2f}x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
