"""Process-kubelet overhead: a pod's process versus the same process started directly.

    python benchmarks/kubelet_pods.py [--pods 20] [--quick]

In one run, against the sandbox emulator: (a) baseline, ``python -c pass`` started and
waited for directly, one after the other and N at once; (b) the same command as N pods on
one process kubelet, timed from the pod's creation to its ``Succeeded`` status (seen by a
watch), one after the other and N at once; (c) creation to ``Running`` for a long-lived pod.
Prints each time and the ratio (b)/(a): the kubelet's own share is the difference (watch
event, shim start, status write).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time

from fedcare.integrations.kube import Kube, Ref, RetryPolicy
from fedcare.sandbox.emulator import fedcare_emulator
from fedcare.sandbox.kubelet import running_kubelet

CMD = ["python", "-c", "pass"]


async def direct(n: int, concurrent: bool) -> list[float]:
    from fedcare.sandbox.kubelet_images import venv_bin

    exe = str(venv_bin() / "python")

    async def one() -> float:
        began = time.perf_counter()
        proc = await asyncio.create_subprocess_exec(exe, *CMD[1:])
        await proc.wait()
        return time.perf_counter() - began

    if concurrent:
        began = time.perf_counter()
        await asyncio.gather(*(one() for _ in range(n)))
        return [time.perf_counter() - began]
    return [await one() for _ in range(n)]


def body(name: str, command: list[str]) -> dict:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": "default"},
            "spec": {"nodeName": "bench", "restartPolicy": "Never",
                     "containers": [{"name": "main", "image": "fedcare", "command": command}]}}


async def through_kubelet(kube: Kube, prefix: str, n: int, concurrent: bool, phase: str = "Succeeded",
                          command: list[str] = CMD) -> list[float]:
    done: dict[str, asyncio.Future[float]] = {f"{prefix}-{i}": asyncio.get_running_loop().create_future()
                                              for i in range(n)}
    listing = await kube.request("GET", "/api/v1/namespaces/default/pods")
    version = listing["metadata"]["resourceVersion"]

    async def watch() -> None:
        async for _, pod in kube.watch(Ref("v1", "pods", "default"), resource_version=version):
            fut = done.get(pod["metadata"]["name"])
            if fut is not None and not fut.done() and (pod.get("status") or {}).get("phase") == phase:
                fut.set_result(time.perf_counter())

    watcher = asyncio.ensure_future(watch())
    times: list[float] = []
    try:
        if concurrent:
            began = time.perf_counter()
            await asyncio.gather(*(kube.create(Ref("v1", "pods", "default"), body(name, command)) for name in done))
            await asyncio.wait_for(asyncio.gather(*done.values()), timeout=300)
            times = [max(f.result() for f in done.values()) - began]
        else:
            for name, fut in done.items():
                began = time.perf_counter()
                await kube.create(Ref("v1", "pods", "default"), body(name, command))
                times.append(await asyncio.wait_for(fut, timeout=120) - began)
    finally:
        watcher.cancel()
    return times


def show(label: str, times: list[float]) -> float:
    med = statistics.median(times)
    p95 = sorted(times)[max(0, int(len(times) * 0.95) - 1)]
    print(f"  {label:52} median {med * 1000:7.1f} ms   p95 {p95 * 1000:7.1f} ms   (n={len(times)})", flush=True)
    return med


async def main(n: int) -> int:
    async with fedcare_emulator(max_history=1000) as k:
        kube = Kube.from_url(k.url, policy=RetryPolicy(timeout=30))
        with tempfile.TemporaryDirectory() as tmp:
            async with running_kubelet(kube, "bench", tmp, bind=False):
                await through_kubelet(kube, "warm", 2, False)      # imports, first status writes
                print(f"process kubelet, {n} pods of `{' '.join(CMD)}`:")
                base = show("direct process, sequential", await direct(n, False))
                pod = show("pod created -> Succeeded, sequential", await through_kubelet(kube, "seq", n, False))
                base_c = show(f"direct, {n} at once (all done)", await direct(n, True))
                pod_c = show(f"{n} pods at once, created -> all Succeeded",
                             await through_kubelet(kube, "par", n, True))
                run = show("pod created -> Running (a sleeping container)",
                           await through_kubelet(kube, "run", max(3, n // 4), False, "Running",
                                                 ["python", "-c", "import time; time.sleep(60)"]))
                print(f"  ratio pod/direct: sequential {pod / base:.2f}x, {n} at once {pod_c / base_c:.2f}x; "
                      f"kubelet share per pod {1000 * (pod - base):.0f} ms; to Running {run * 1000:.0f} ms")
        await kube.close()
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pods", type=int, default=20)
    parser.add_argument("--quick", action="store_true", help="8 pods")
    args = parser.parse_args()
    sys.exit(asyncio.run(main(8 if args.quick else args.pods)))
