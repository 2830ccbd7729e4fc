"""The sandbox process kubelet on the emulator: pods run as processes and report like pods."""

from __future__ import annotations

import pathlib

import pytest

from fedcare.integrations.kube import Ref
from fedcare.sandbox.kubelet import running_kubelet
from tests.support.kubelet import container, create, phase, pod, wait_pod

NODE = "node-a"


@pytest.fixture()
async def kubelet(api, tmp_path):
    async with running_kubelet(api, NODE, tmp_path / "kubelet", bind=True, backoff_base=0.2, backoff_cap=1.0,
                               shutdown_grace=2.0, lease_duration=8) as k:
        yield k


async def test_node_is_registered_ready_with_a_lease(api, kubelet):
    node = await api.get(Ref("v1", "nodes", None, NODE))
    ready = next(c for c in node["status"]["conditions"] if c["type"] == "Ready")
    assert ready["status"] == "True"
    assert node["status"]["capacity"]["pods"] == "110"
    assert "nvidia.com/gpu" not in node["status"]["capacity"]
    lease = await api.get(Ref("coordination.k8s.io/v1", "leases", "kube-node-lease", NODE))
    assert lease["spec"]["holderIdentity"] == NODE


async def test_a_pod_runs_to_success_with_its_output_logged(api, kubelet):
    await create(api, pod("hello", "print('hello from a pod')", node=NODE))
    done = await wait_pod(api, "hello", lambda p: phase(p) == "Succeeded")
    term = container(done)["state"]["terminated"]
    assert term["exitCode"] == 0 and term["reason"] == "Completed"
    assert done["status"]["podIP"].startswith("127.")
    log = kubelet.log_path("default", "hello", "main")
    assert log is not None and "hello from a pod" in pathlib.Path(log).read_text()


async def test_a_failing_pod_reports_its_exit_code(api, kubelet):
    await create(api, pod("boom", "import sys; sys.exit(3)", node=NODE))
    done = await wait_pod(api, "boom", lambda p: phase(p) == "Failed")
    term = container(done)["state"]["terminated"]
    assert (term["exitCode"], term["reason"]) == (3, "Error")
    assert container(done)["restartCount"] == 0


async def test_a_running_pod_is_running_and_ready(api, kubelet):
    await create(api, pod("sleeper", "import time; time.sleep(60)", node=NODE))
    running = await wait_pod(api, "sleeper", lambda p: phase(p) == "Running")
    assert "running" in container(running)["state"]
    conds = {c["type"]: c["status"] for c in running["status"]["conditions"]}
    assert conds["Ready"] == conds["ContainersReady"] == conds["PodScheduled"] == "True"
