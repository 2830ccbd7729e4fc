"""``kubectl logs`` through the emulator to the process kubelet's log endpoint."""

from __future__ import annotations

import asyncio
import pathlib

import pytest

from fedcare.sandbox.kubeconfig import write_kubeconfig
from fedcare.sandbox.kubelet import running_kubelet
from tests.support.kubelet import container, create, fast_kubelet_kwargs, phase, pod, wait_pod

ROOT = pathlib.Path(__file__).resolve().parents[2]
KUBECTL = ROOT / ".tools" / "bin" / "kubectl"
NODE = "node-a"


@pytest.fixture()
async def kubelet(api, tmp_path):
    async with running_kubelet(api, NODE, tmp_path / "kubelet", **fast_kubelet_kwargs()) as k:
        yield k


async def kubectl(kubeconfig, *args: str) -> tuple[int, str]:
    if not KUBECTL.exists():
        pytest.skip("kubectl is not installed: run `make tools`")
    proc = await asyncio.create_subprocess_exec(str(KUBECTL), "--kubeconfig", str(kubeconfig), *args,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    out, _ = await asyncio.wait_for(proc.communicate(), timeout=60)
    return proc.returncode, out.decode()


async def test_kubectl_logs_current_previous_tail_and_follow(emulator, api, kubelet, tmp_path):
    kubeconfig = write_kubeconfig(emulator.url, tmp_path / "kubeconfig")
    code = ("import os, sys, time\nagain = os.path.exists('/s/ran')\nopen('/s/ran', 'w').close()\n"
            "print('second' if again else 'first', 'one'); print('second' if again else 'first', 'two', flush=True)\n"
            "time.sleep(600) if again else sys.exit(1)")
    spec = {"name": "main", "image": "fedcare", "command": ["python", "-c", code],
            "volumeMounts": [{"name": "s", "mountPath": "/s"}]}
    await create(api, pod("talker", containers=[spec], node=NODE, restart="OnFailure",
                          volumes=[{"name": "s", "emptyDir": {}}]))
    await wait_pod(api, "talker", lambda p: container(p).get("restartCount", 0) >= 1)
    for _ in range(100):    # the restarted container needs a moment to print
        rc, out = await kubectl(kubeconfig, "logs", "talker")
        if out.strip():
            break
    assert rc == 0 and out.splitlines() == ["second one", "second two"], out
    rc, out = await kubectl(kubeconfig, "logs", "talker", "--previous", "--tail", "1")
    assert rc == 0 and out.splitlines() == ["first two"], out
    slow = "import time\nfor i in range(3):\n    print('tick', i, flush=True); time.sleep(0.5)"
    await create(api, pod("ticker", slow, node=NODE))
    await wait_pod(api, "ticker", lambda p: phase(p) == "Running")
    rc, out = await kubectl(kubeconfig, "logs", "-f", "ticker")    # returns when the container ends
    assert rc == 0 and out.splitlines() == ["tick 0", "tick 1", "tick 2"], out
    rc, out = await kubectl(kubeconfig, "logs", "ticker", "--previous")
    assert rc != 0 and "previous terminated container" in out


async def test_kubectl_logs_of_a_pod_that_never_started_says_why(emulator, api, kubelet, tmp_path):
    kubeconfig = write_kubeconfig(emulator.url, tmp_path / "kubeconfig")
    await create(api, pod("nope", "print(1)", node=NODE, image="quay.io/unknown/image:1"))
    await wait_pod(api, "nope", lambda p: "waiting" in container(p).get("state", {}))
    rc, out = await kubectl(kubeconfig, "logs", "nope")
    assert rc != 0 and "not started" in out
