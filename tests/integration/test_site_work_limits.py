"""A live site agent and process kubelet (issue 8 items 2 and 7): a crashing training pod is
retried up to the round's limit and then fails its assignment; GPUs reserved by an assignment
are released when it ends or passes its deadline, so the site never drifts into rejecting
everything. The hub runs (it enrolls the site); the assignments are written as it writes them,
with a SuperLink address nothing listens on (the SuperNode keeps trying to connect)."""

from __future__ import annotations

import datetime as dt
import importlib.util
import os
import signal

import pytest

from fedcare.api.resources import API_VERSION
from fedcare.integrations.kube import Ref
from fedcare.sandbox.federation import TRAIN_IMAGE, WORK_NAMESPACE, federation
from tests.support.harness import eventually

pytestmark = pytest.mark.skipif(importlib.util.find_spec("fedcare_workloads") is None,
                                reason="needs the workloads package: pip install -c constraints.txt -e ./workloads")

NS = "fedcare-site-rouen"
RAS = Ref(API_VERSION, "roundassignments", NS)


def manifest(name: str, *, gpus: int = 1, max_restarts: int = 1, seconds: int = 600) -> dict:
    deadline = (dt.datetime.now(dt.UTC) + dt.timedelta(seconds=seconds)).replace(microsecond=0)
    return {"apiVersion": API_VERSION, "kind": "RoundAssignment",
            "metadata": {"name": name, "namespace": NS,
                         "labels": {"fedcare.io/round": name, "fedcare.io/site": "rouen",
                                    "app.kubernetes.io/managed-by": "fedcare"}},
            "spec": {"roundRef": {"namespace": "default", "name": name, "uid": f"uid-{name}"}, "nodeName": "rouen",
                     "attempt": 1, "superLink": {"address": "127.0.0.1:9", "insecure": True},
                     "training": {"image": TRAIN_IMAGE, "gpusPerSite": gpus, "maxRestarts": max_restarts},
                     "nodeConfig": {"site": "rouen"}, "deadline": deadline.isoformat().replace("+00:00", "Z")}}


def ready(ra: dict) -> dict:
    return next((c for c in ra.get("status", {}).get("conditions", []) if c["type"] == "Ready"), {})


@pytest.mark.timeout(900)
async def test_pods_are_retried_up_to_the_limit_and_gpus_come_back(emulator, tmp_path):
    async with federation(str(emulator.url), tmp_path, ["rouen"], images=20, site_gpus={"rouen": 1},
                          tls=False) as fed:   # hand-made plaintext assignments (no SuperLink runs)
        api, kubelet = fed.api, fed.handles["rouen"].kubelet

        def phase(name, *phases):
            async def check():
                ra = await api.get_or_none(Ref(API_VERSION, "roundassignments", NS, name))
                return ra if ra and ra.get("status", {}).get("phase") in phases else None
            return check

        async def pods(name):
            return [p for p in await api.list(Ref("v1", "pods", WORK_NAMESPACE))
                    if p["metadata"]["labels"].get("fedcare.io/assignment") == name]

        # A holds the site's only GPU; B, asking for it too, is refused
        await api.create(RAS, manifest("a"))
        a = await eventually(phase("a", "Running", "Failed", "Rejected"), timeout=300, interval=0.3)
        assert a["status"]["phase"] == "Running", a["status"]
        (pod,) = await pods("a")
        assert pod["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"
        await api.create(RAS, manifest("b"))
        b = await eventually(phase("b", "Accepted", "Rejected"), timeout=60, interval=0.3)
        assert b["status"]["phase"] == "Rejected" and ready(b)["reason"] == "InsufficientGPU"
        assert "1 reserved" in b["status"]["message"]

        # A's training container crashes: one restart is within maxRestarts (1), the second is not
        async def restarted(n):
            ra = await api.get(Ref(API_VERSION, "roundassignments", NS, "a"))
            return ra if ra["status"].get("restarts", 0) >= n else None

        os.killpg(next(iter(kubelet.processes)), signal.SIGKILL)
        a = await eventually(lambda: restarted(1), timeout=120, interval=0.3)
        assert a["status"]["phase"] == "Running" and "exit code 137" in a["status"]["exitReason"]

        async def process():
            return next(iter(kubelet.processes), None)
        os.killpg(await eventually(process, timeout=120, interval=0.2), signal.SIGKILL)
        a = await eventually(phase("a", "Failed"), timeout=120, interval=0.3)
        assert ready(a)["reason"] == "PodFailed" and "more than training.maxRestarts (1)" in a["status"]["message"]
        assert a["status"]["restarts"] == 2
        await eventually(lambda: _none(pods("a")), timeout=60, interval=0.3)

        # A ended: its GPU is free again. C takes it, and releases it when its deadline passes
        await api.create(RAS, manifest("c", seconds=40))
        c = await eventually(phase("c", "Running", "Rejected"), timeout=120, interval=0.3)
        assert c["status"]["phase"] == "Running", c["status"]
        c = await eventually(phase("c", "Failed"), timeout=120, interval=0.3)
        assert ready(c)["reason"] == "DeadlinePassed" and "GPUs released" in c["status"]["message"]
        await eventually(lambda: _none(pods("c")), timeout=60, interval=0.3)
        await api.create(RAS, manifest("d"))
        d = await eventually(phase("d", "Accepted", "Running", "Rejected"), timeout=60, interval=0.3)
        assert d["status"]["phase"] in ("Accepted", "Running"), d["status"]
        # deleting the assignment (the round ended) deletes its pod
        await api.delete(Ref(API_VERSION, "roundassignments", NS, "d"))
        await eventually(lambda: _none(pods("d")), timeout=60, interval=0.3)
        await eventually(lambda: _empty(kubelet), timeout=60, interval=0.3)


async def _none(coro):
    return not await coro


async def _empty(kubelet):
    return not kubelet.processes
