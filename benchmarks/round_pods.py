"""The operator's own share of starting a round: FederatedRound created → every SuperNode pod
created, for N sites (default 18) on the emulator. Target: ≤ 1 s.

Runs the real hub and N real site agents (one process, one emulated API) and a process
kubelet for the SuperLink only (training pods are created but not run). The SuperLink's own
start-up (pod created → flower-superlink answers /health, probed by this script) is Flower's
time, not the operator's: it is measured separately and subtracted. What the hub does after
that (seeing /health, registering the sites' SuperNode keys under TLS) is the operator's. The
baseline printed beside it, measured in the same run: one API call's cost on this emulator,
and the calls the round made, one after another.

    python benchmarks/round_pods.py [--sites 18] [--poll 2]

The hub runs at its default pass interval (2 s) unless ``--poll`` says otherwise: a pass that
finds the SuperLink pod running waits for its /health (hub/aggregator.py ``wait_healthy``), so
the interval shows only when the pod is still Pending at a pass.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import pathlib
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "operator"), str(ROOT / "workloads")]

from fedcare import metrics  # noqa: E402
from fedcare.api.resources import API_VERSION  # noqa: E402
from fedcare.hub.round_scheduler import RoundConfig  # noqa: E402
from fedcare.integrations.kube import Ref  # noqa: E402
from fedcare.sandbox.emulator import fedcare_emulator  # noqa: E402
from fedcare.sandbox.federation import WORK_NAMESPACE, federation, round_manifest  # noqa: E402
from round_overhead import _watch  # noqa: E402

NAMES = [f"site{i:02d}" for i in range(100)]


@contextlib.asynccontextmanager
async def api_server(tmp: pathlib.Path, own_process: bool):
    """(URL, request counter or None). In this process by default; with ``own_process`` the same
    emulator runs as ``python -m fedcare.sandbox.server`` (an API server beside the operator, as
    on a cluster: on 2 cores it then gets a core of its own instead of sharing the operator's
    event loop)."""
    if not own_process:
        async with fedcare_emulator(max_history=5000) as k:
            yield str(k.url), (lambda: k.received)
        return
    kubeconfig = tmp / "api.kubeconfig"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "operator"), str(ROOT / "workloads")])}
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "fedcare.sandbox.server", "--kubeconfig",
                                                str(kubeconfig), env=env, stdout=asyncio.subprocess.DEVNULL,
                                                stderr=asyncio.subprocess.DEVNULL)
    try:
        for _ in range(600):
            if kubeconfig.is_file() and "server:" in kubeconfig.read_text():
                break
            if proc.returncode is not None:
                raise RuntimeError(f"the sandbox API server exited ({proc.returncode})")
            await asyncio.sleep(0.1)
        url = next(line.split("server:", 1)[1].strip() for line in kubeconfig.read_text().splitlines()
                   if "server:" in line)
        yield url, None
    finally:
        if proc.returncode is None:
            proc.terminate()
        await proc.wait()


async def measure(sites: int, poll: float, inventory_poll: float = 15.0,
                  api_process: bool = False) -> dict[str, float]:
    """Timestamps from watches (the first time each state is seen), not from polling: a poll
    loop would load the in-process emulator that the operator under test shares."""
    with tempfile.TemporaryDirectory() as tmp:
        async with api_server(pathlib.Path(tmp), api_process) as (url, received):
            async with federation(url, pathlib.Path(tmp), NAMES[:sites], images=20, poll=poll,
                                  site_kubelets=False, inventory_poll=inventory_poll) as fed:
                api = fed.api
                marks: dict[str, float] = {}
                done = asyncio.Event()
                pods: set[str] = set()
                t0 = time.monotonic()

                def mark(key: str) -> None:
                    marks.setdefault(key, time.monotonic() - t0)

                pollers: list[asyncio.Task] = []

                async def poll_health(url: str) -> None:
                    # Flower's own start, seen from outside (10 probes/s, no certificate check:
                    # a timing probe only): the hub's share starts when the SuperLink answers.
                    import aiohttp
                    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=1)) as session:
                        while "superlink_health" not in marks:
                            try:
                                async with session.get(url, ssl=False) as resp:
                                    if resp.status == 200:
                                        mark("superlink_health")
                                        cpu_at.setdefault("health", time.process_time())
                            except (aiohttp.ClientError, asyncio.TimeoutError, OSError):
                                pass
                            await asyncio.sleep(0.1)

                def on_pod(kind: str, obj: dict) -> None:
                    md = obj["metadata"]
                    if md["namespace"] == "default" and kind != "DELETED":
                        mark("superlink_pod")
                        ip = (obj.get("status") or {}).get("podIP")
                        if ip and not pollers:
                            port = obj["spec"]["containers"][0]["ports"][0]["containerPort"]
                            scheme = "http" if "--insecure" in obj["spec"]["containers"][0].get("args", []) else "https"
                            pollers.append(asyncio.create_task(poll_health(f"{scheme}://{ip}:{port}/health")))
                    elif md["namespace"] == WORK_NAMESPACE and kind == "ADDED":
                        pods.add(md["name"])
                        if len(pods) >= sites:
                            mark("pods")
                            done.set()

                counts: dict[str, int] = {}
                cpu_at: dict[str, float] = {}

                def on_round(_kind: str, obj: dict) -> None:
                    if any(c["type"] == "AggregatorReady" and c["status"] == "True"
                           for c in (obj.get("status") or {}).get("conditions") or []):
                        mark("aggregator")
                        counts.setdefault("aggregator", received() if received else 0)

                stop = asyncio.Event()
                watches = [asyncio.create_task(_watch(api, Ref("v1", "pods"), on_pod, stop)),
                           asyncio.create_task(_watch(api, Ref(API_VERSION, "federatedrounds", "default"), on_round,
                                                      stop))]
                await asyncio.sleep(0.5)        # both watches established
                registering = _histogram_sum(metrics.KEY_REGISTRATION_DURATION)
                t0, cpu0 = time.monotonic(), time.process_time()
                await api.create(Ref(API_VERSION, "federatedrounds", "default"),
                                 round_manifest("bench", sites=sites, rounds=1))
                try:
                    await asyncio.wait_for(done.wait(), 600)
                    cpu_at["pods"] = time.process_time()
                    cpu = cpu_at["pods"] - cpu0
                    counts["pods"] = received() if received else 0
                finally:
                    stop.set()
                    for task in watches + pollers:
                        task.cancel()
                    await asyncio.gather(*watches, *pollers, return_exceptions=True)
                if "superlink_health" not in marks:     # AggregatorReady needs /health: the probe was late
                    marks["superlink_health"] = min(marks["aggregator"], marks["pods"])
                requests = counts["pods"] - counts["aggregator"] if received else 0
                registering = _histogram_sum(metrics.KEY_REGISTRATION_DURATION) - registering
                get_ms, patch_ms = await round_trip(api)
                return {"total": marks["pods"], "cpu": cpu, "scheduling": marks["superlink_pod"],
                        "requests": requests, "get_ms": get_ms, "patch_ms": patch_ms,
                        "superlink_startup": marks["superlink_health"] - marks["superlink_pod"],
                        # >= 0: under load the hub's pass can see /health before this probe does
                        "hub_ready": max(0.0, marks["aggregator"] - marks["superlink_health"]),
                        "registering": registering,
                        "dispatch": marks["pods"] - marks["aggregator"],
                        "cpu_after_health": cpu_at["pods"] - cpu_at["health"] if "health" in cpu_at else -1.0,
                        "operator": marks["pods"] - (marks["superlink_health"] - marks["superlink_pod"])}


def _histogram_sum(histogram) -> float:
    """A histogram's ``_sum`` (the hub runs in this process: its metrics are these)."""
    return next((s.value for m in histogram.collect() for s in m.samples if s.name.endswith("_sum")), 0.0)


async def round_trip(api, n: int = 100) -> tuple[float, float]:
    """The baseline: one API call's cost on this emulator in this run (the same store and watch
    streams open), sequential GETs and PATCHes of a ConfigMap no controller watches."""
    cm = await api.create(Ref("v1", "configmaps", "default"), {
        "apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "bench-round-trip"}, "data": {"n": "0"}})
    one = Ref("v1", "configmaps", "default", cm["metadata"]["name"])
    t = time.monotonic()
    for _ in range(n):
        await api.get(one)
    get_ms = (time.monotonic() - t) / n * 1000
    t = time.monotonic()
    for i in range(n):
        await api.patch(one, {"data": {"n": str(i)}})
    return get_ms, (time.monotonic() - t) / n * 1000


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sites", type=int, default=18)
    parser.add_argument("--poll", type=float, default=RoundConfig.__dataclass_fields__["poll_interval"].default,
                        help="the hub's round pass interval (s); default: the hub's own")
    parser.add_argument("--inventory-poll", type=float, default=15.0,
                        help="the agents' inventory poll (s): an agent's default, 15 s; the sandbox's tests use 1 s")
    parser.add_argument("--api-process", action="store_true",
                        help="run the emulator as its own process (python -m fedcare.sandbox.server)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    r = asyncio.run(measure(args.sites, args.poll, args.inventory_poll, args.api_process))
    print(f"sites={args.sites} poll={args.poll}s inventory poll={args.inventory_poll}s "
          f"API server: {'its own process' if args.api_process else 'in this process'}")
    print(f"round created -> {args.sites} SuperNode pods created: {r['total']:.2f} s")
    who = f"hub, {args.sites} agents" + ("" if args.api_process else ", emulator")
    print(f"  CPU time of this process ({who}) meanwhile: {r['cpu']:.2f} s; "
          f"load average {os.getloadavg()[0]:.1f}")
    print(f"  create -> SuperLink pod created (hub): {r['scheduling']:.2f} s")
    print(f"  SuperLink pod created -> it answers /health (kubelet start, Flower's start-up; excluded): "
          f"{r['superlink_startup']:.2f} s")
    print(f"  SuperLink answers -> AggregatorReady (hub: sees /health, reads the sites' SuperNode keys from Vault, "
          f"registers them): {r['hub_ready']:.2f} s")
    print(f"    of which registering {args.sites} keys with the SuperLink (RegisterNode; Flower handles them one at "
          f"a time): {r['registering']:.2f} s")
    print(f"  AggregatorReady -> {args.sites} SuperNode pods created (hub dispatch, agents answer and create): "
          f"{r['dispatch']:.2f} s")
    print(f"  operator's share (total minus the SuperLink's start): {r['operator']:.2f} s "
          f"(target <= 1 s; ratio to target {r['operator']:.2f}x)")
    print(f"  the same without that registration burst (bound by the SuperLink: 2, 6 or 18 at a time take "
          f"as long): {r['operator'] - r['registering']:.2f} s")
    if r["cpu_after_health"] >= 0:
        print(f"  CPU time of this process from /health to the last pod: {r['cpu_after_health']:.2f} s "
              f"({r['cpu_after_health'] / args.sites * 1000:.0f} ms per site)")
    else:
        print("  CPU time of this process from /health to the last pod: n/a (the probe never saw /health)")
    print(f"  baseline, same run: one sequential call to this emulator takes {r['get_ms']:.1f} ms (GET) / "
          f"{r['patch_ms']:.1f} ms (PATCH)")
    if r["requests"]:
        floor = r["requests"] * (r["get_ms"] + r["patch_ms"]) / 2 / 1000
        print(f"  API requests the emulator served from AggregatorReady to the last pod: {r['requests']} "
              f"({r['requests'] / args.sites:.1f} per site, idle traffic included); one after another: "
              f"{floor:.2f} s; dispatch / that = {r['dispatch'] / floor:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
