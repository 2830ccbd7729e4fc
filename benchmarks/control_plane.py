"""The two Kubernetes tiers side by side: the real control plane (fedcare-kube) and the emulator.

    python benchmarks/control_plane.py            # 1,000 HospitalNodes per tier
    python benchmarks/control_plane.py --quick    # 100

For each tier, in one run on this machine:
- start: process start to API ready (the real one: etcd + kube-apiserver answering /readyz;
  the emulator: its kubeconfig written);
- CRDs: `kubectl apply --server-side -f crds/` until every CRD is Established (real only:
  the emulator serves fedcare's kinds built in);
- enrollment: N HospitalNodes created at once, `fedcare hub` (a separate process) enrolls
  each (namespace, ServiceAccount, RoleBinding, ClusterRole/Binding, Lease, status):
  wall time until every one is Enrolled=True, objects/s, and the hub's RSS at the end.
Needs `make kube` (the real tier) and `make venv`.
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import json
import pathlib
import subprocess
import sys
import tempfile
import time

import yaml

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "operator"))

from fedcare.integrations.kube import Kube, KubeError, Ref  # noqa: E402
from fedcare.sandbox.cluster import RealCluster  # noqa: E402

NODES = Ref("fedcare.io/v1alpha1", "hospitalnodes")
KUBECTL = ROOT / ".tools" / "bin" / "kubectl"


def rss_mib(pid: int) -> float:
    for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def start_emulator(tmp: pathlib.Path) -> tuple[subprocess.Popen, str, float]:
    kubeconfig = tmp / "kubeconfig"
    code = ("import asyncio; from fedcare.sandbox.server import serve; "
            f"asyncio.run(serve(port=0, kubeconfig_path={str(kubeconfig)!r}, max_history=200))")
    began = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.DEVNULL,
                            stderr=open(tmp / "emulator.log", "w"))
    while not (kubeconfig.exists() and kubeconfig.stat().st_size):
        if proc.poll() is not None or time.monotonic() - began > 60:
            raise RuntimeError(f"the emulator did not start; see {tmp / 'emulator.log'}")
        time.sleep(0.02)
    return proc, str(kubeconfig), time.monotonic() - began


async def enroll(kubeconfig: str, n: int, tmp: pathlib.Path, tier: str) -> dict[str, float]:
    node = yaml.safe_load((ROOT / "examples" / "hospitalnode-rouen.yaml").read_text())
    hub = subprocess.Popen([sys.executable, "-m", "fedcare.cli", "hub", "--kubeconfig", kubeconfig, "--liveness", "",
                            "--metrics", ""],
                           stdout=open(tmp / f"hub-{tier}.log", "w"), stderr=subprocess.STDOUT)
    kube = await Kube.from_kubeconfig(kubeconfig)
    try:
        await asyncio.sleep(3)     # the hub logs in and starts its watches
        began = time.monotonic()
        sem = asyncio.Semaphore(32)

        async def create(i: int) -> None:
            body = copy.deepcopy(node)
            body["metadata"]["name"] = f"site-{i:04d}"
            async with sem:
                await kube.create(NODES, body)

        await asyncio.gather(*(create(i) for i in range(n)))
        created = time.monotonic() - began
        last_report = 0.0
        deadline = began + max(600.0, n * 2.0)     # never wait forever on a broken run
        while True:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{tier}: not every HospitalNode was Enrolled within {deadline - began:.0f}s")
            try:
                items = await kube.list(NODES)
            except KubeError:
                items = []
            done = sum(1 for o in items for c in (o.get("status") or {}).get("conditions") or []
                       if c["type"] == "Enrolled" and c["status"] == "True")
            now = time.monotonic() - began
            if now - last_report > 10:
                print(f"  {tier}: {done}/{n} enrolled after {now:.0f}s", flush=True)
                last_report = now
            if done >= n:
                break
            if hub.poll() is not None:
                raise RuntimeError(f"the hub exited; see {tmp / f'hub-{tier}.log'}")
            await asyncio.sleep(1)
        wall = time.monotonic() - began
        return {"create_s": round(created, 2), "all_enrolled_s": round(wall, 2),
                "nodes_per_s": round(n / wall, 1), "objects_per_s": round(n * 8 / wall, 1),
                "hub_rss_mib": round(rss_mib(hub.pid), 1)}
    finally:
        await kube.close()
        hub.terminate()
        try:
            hub.wait(30)
        except subprocess.TimeoutExpired:
            hub.kill()
            hub.wait(10)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="100 HospitalNodes instead of 1,000")
    parser.add_argument("--nodes", type=int, default=0)
    args = parser.parse_args()
    n = args.nodes or (100 if args.quick else 1000)
    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="fedcare-cp-bench-") as tmp_s:
        tmp = pathlib.Path(tmp_s)
        print(f"control_plane: real control plane, {n} HospitalNodes", flush=True)
        with RealCluster(tmp / "real") as real:
            began = time.monotonic()
            subprocess.run([str(KUBECTL), "--kubeconfig", str(real.kubeconfig), "apply", "--server-side",
                            "-f", str(ROOT / "crds")], check=True, capture_output=True, timeout=120)
            subprocess.run([str(KUBECTL), "--kubeconfig", str(real.kubeconfig), "wait", "--for=condition=Established",
                            "--timeout=120s", "crd", "--all"], check=True, capture_output=True, timeout=150)
            crds = time.monotonic() - began
            results["real"] = {"start_s": round(real.startup_seconds, 2), "crds_established_s": round(crds, 2),
                               **asyncio.run(enroll(str(real.kubeconfig), n, tmp, "real"))}
            apiserver = real.process.pid
            results["real"]["control_plane_rss_mib"] = round(sum(
                rss_mib(int(p)) for p in open(f"/proc/{apiserver}/task/{apiserver}/children").read().split()
            ) + rss_mib(apiserver), 1)
        print(f"control_plane: emulator, {n} HospitalNodes", flush=True)
        emu, kubeconfig, started = start_emulator(tmp)
        try:
            results["emulator"] = {"start_s": round(started, 2), "crds_established_s": 0.0,
                                   **asyncio.run(enroll(kubeconfig, n, tmp, "emulator"))}
            results["emulator"]["control_plane_rss_mib"] = round(rss_mib(emu.pid), 1)
        finally:
            emu.terminate()
            emu.wait(30)
    keys = ["start_s", "crds_established_s", "create_s", "all_enrolled_s", "nodes_per_s", "objects_per_s",
            "hub_rss_mib", "control_plane_rss_mib"]
    print(f"\n{'metric':24} {'real':>10} {'emulator':>10} {'real/emulator':>14}")
    for key in keys:
        r, e = results["real"][key], results["emulator"][key]
        ratio = f"{r / e:.2f}x" if e else "-"
        print(f"{key:24} {r:>10} {e:>10} {ratio:>14}")
    print(json.dumps({"nodes": n, **results}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
