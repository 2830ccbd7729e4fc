"""The sandbox process kubelet on the emulator: pods run as processes and report like pods."""

from __future__ import annotations

import pathlib

import pytest

from fedcare.integrations.kube import Ref
from fedcare.sandbox.kubelet import running_kubelet
from tests.support.kubelet import clean_up, container, create, fast_kubelet_kwargs, phase, pod, wait_pod

NODE = "node-a"


@pytest.fixture()
async def kubelet(api, tmp_path):
    try:
        async with running_kubelet(api, NODE, tmp_path / "kubelet", **fast_kubelet_kwargs()) as k:
            yield k
    finally:
        await clean_up(api, NODE)


@pytest.mark.tiers
async def test_node_is_registered_ready_with_a_lease(apiserver, api, kubelet):
    node = await api.get(Ref("v1", "nodes", None, NODE))
    ready = next(c for c in node["status"]["conditions"] if c["type"] == "Ready")
    assert ready["status"] == "True"
    assert node["status"]["capacity"]["pods"] == "110"
    assert "nvidia.com/gpu" not in node["status"]["capacity"]
    lease = await api.get(Ref("coordination.k8s.io/v1", "leases", "kube-node-lease", NODE))
    assert lease["spec"]["holderIdentity"] == NODE


@pytest.mark.tiers
async def test_a_pod_runs_to_success_with_its_output_logged(apiserver, api, kubelet):
    await create(api, pod("hello", "print('hello from a pod')", node=NODE))
    done = await wait_pod(api, "hello", lambda p: phase(p) == "Succeeded")
    term = container(done)["state"]["terminated"]
    assert term["exitCode"] == 0 and term["reason"] == "Completed"
    assert done["status"]["podIP"].startswith("127.")
    log = kubelet.log_path("default", "hello", "main")
    assert log is not None and "hello from a pod" in pathlib.Path(log).read_text()


@pytest.mark.tiers
async def test_a_failing_pod_reports_its_exit_code(apiserver, api, kubelet):
    await create(api, pod("boom", "import sys; sys.exit(3)", node=NODE))
    done = await wait_pod(api, "boom", lambda p: phase(p) == "Failed")
    term = container(done)["state"]["terminated"]
    assert (term["exitCode"], term["reason"]) == (3, "Error")
    assert container(done)["restartCount"] == 0


@pytest.mark.tiers
async def test_a_running_pod_is_running_and_ready(apiserver, api, kubelet):
    await create(api, pod("sleeper", "import time; time.sleep(60)", node=NODE))
    running = await wait_pod(api, "sleeper", lambda p: phase(p) == "Running")
    assert "running" in container(running)["state"]
    conds = {c["type"]: c["status"] for c in running["status"]["conditions"]}
    assert conds["Ready"] == conds["ContainersReady"] == conds["PodScheduled"] == "True"


async def test_on_the_emulator_the_kubelet_binds_unscheduled_pods_that_fit(api, tmp_path):
    from tests.support.kubelet import fast_kubelet_kwargs as kw

    async with running_kubelet(api, "auto", tmp_path / "auto", labels={"role": "train"}, **kw(bind=None)) as k:
        await create(api, pod("fits", "print('bound')", nodeSelector={"role": "train"}))
        await create(api, pod("elsewhere", "print('no')", nodeSelector={"role": "other"}))
        done = await wait_pod(api, "fits", lambda p: phase(p) == "Succeeded")
        assert k.bind is True and done["spec"]["nodeName"] == "auto"
        assert not (await api.get(Ref("v1", "pods", "default", "elsewhere")))["spec"].get("nodeName")


async def test_events_tell_what_happened_to_a_pod(api, kubelet):
    import asyncio

    await create(api, pod("evented", "raise SystemExit(2)", restart="OnFailure"))        # bound by the stand-in
    await create(api, pod("no-image", "pass", node=NODE, image="example.org/nothing:1"))
    await wait_pod(api, "evented", lambda p: container(p).get("restartCount", 0) >= 1)
    await wait_pod(api, "no-image", lambda p: "waiting" in container(p).get("state", {}))
    for _ in range(100):
        events = await api.list(Ref("v1", "events", "default"))
        seen = {(e["involvedObject"]["name"], e["reason"], e["type"]) for e in events}
        if {("evented", "Scheduled", "Normal"), ("evented", "Started", "Normal"),
                ("evented", "BackOff", "Warning"), ("no-image", "Failed", "Warning")} <= seen:
            break
        await asyncio.sleep(0.1)
    assert {("evented", "Scheduled", "Normal"), ("evented", "Started", "Normal"),
            ("evented", "BackOff", "Warning"), ("no-image", "Failed", "Warning")} <= seen, seen
    failed = next(e for e in events if e["reason"] == "Failed")
    assert "ErrImagePull" in failed["message"] and "example.org/nothing:1" in failed["message"]
