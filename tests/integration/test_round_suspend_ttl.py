"""``spec.suspend`` and ``ttlSecondsAfterFinished`` of a FederatedRound, through the operator on
the emulator: the hub, one agent and one process kubelet per hospital, real Flower processes."""

from __future__ import annotations

import importlib.util

import pytest

from fedcare.api.resources import API_VERSION
from fedcare.integrations.kube import Ref
from fedcare.sandbox.federation import WORK_NAMESPACE, federation, round_manifest
from tests.support.harness import eventually

pytestmark = pytest.mark.skipif(importlib.util.find_spec("fedcare_workloads") is None,
                                reason="needs the workloads package: pip install -c constraints.txt -e ./workloads")

ROUNDS = Ref(API_VERSION, "federatedrounds", "default")


def cond(obj, ctype):
    return next((c for c in (obj or {}).get("status", {}).get("conditions", []) if c["type"] == ctype), {})


def round_ref(name):
    return Ref(API_VERSION, "federatedrounds", "default", name)


def phase_is(api, name, *phases):
    async def check():
        obj = await api.get_or_none(round_ref(name))
        return obj if obj and obj.get("status", {}).get("phase") in phases else None
    return check


@pytest.mark.timeout(1200)
async def test_suspend_stops_everything_resume_starts_a_new_attempt_and_ttl_deletes(emulator, tmp_path):
    # With TLS and SuperNode auth (the default): attempt 2 gets a new SuperLink with fresh state, its
    # keys registered again. (A reused state volume once kept attempt 1's nodes "online", and
    # attempt 2's SuperNodes were refused activation: Flower 2004, exit 1 three times.)
    async with federation(str(emulator.url), tmp_path, ["rouen", "lyon"], images=40) as fed:
        api = fed.api
        await api.create(ROUNDS, round_manifest("s1", sites=2, rounds=2, ttlSecondsAfterFinished=5))
        running = await eventually(phase_is(api, "s1", "Running", "Failed"), timeout=300, interval=0.5)
        assert running["status"]["phase"] == "Running", running["status"]
        assert running["status"]["attempt"] == 1
        first_deadline = running["status"]["deadline"]

        # Suspend: the run is stopped, the SuperLink, assignments, pods and processes are gone.
        await api.patch(round_ref("s1"), {"spec": {"suspend": True}})
        suspended = await eventually(phase_is(api, "s1", "Suspended"), timeout=120, interval=0.5)
        assert suspended["status"]["suspended"] is True and suspended["status"]["runId"] == ""
        assert cond(suspended, "AggregatorReady")["reason"] == "Suspended"
        assert "spec.suspend is true" in cond(suspended, "AggregatorReady")["message"]

        async def nothing_runs():
            pods = await api.list(Ref("v1", "pods", WORK_NAMESPACE)) + await api.list(Ref("v1", "pods", "default"))
            ras = await api.list(Ref(API_VERSION, "roundassignments"))
            return not pods and not ras and not fed.processes()
        await eventually(nothing_runs, timeout=120, interval=0.5)
        # it stays suspended: the hub does not restart it on its own
        still = await api.get(round_ref("s1"))
        assert still["status"]["phase"] == "Suspended"

        # Resume: a new attempt with the same participants and a fresh deadline, run to the end.
        await api.patch(round_ref("s1"), {"spec": {"suspend": False}})
        resumed = await eventually(phase_is(api, "s1", "Running", "Failed"), timeout=300, interval=0.5)
        assert resumed["status"]["phase"] == "Running", resumed["status"]
        assert resumed["status"]["attempt"] == 2 and resumed["status"]["deadline"] >= first_deadline
        assert {p["node"] for p in resumed["status"]["participants"]} == {"rouen", "lyon"}
        pods = await api.list(Ref("v1", "pods", WORK_NAMESPACE))
        assert pods and all(p["metadata"]["labels"]["fedcare.io/attempt"] == "2" for p in pods)

        done = await eventually(phase_is(api, "s1", "Succeeded", "Failed"), timeout=600, interval=1.0)
        assert done["status"]["phase"] == "Succeeded", (done["status"], cond(done, "Failed"))
        assert done["status"]["serverRound"] == "2/2"

        # ttlSecondsAfterFinished: the finished round (and what it owned) is deleted by the hub.
        async def gone():
            return await api.get_or_none(round_ref("s1")) is None
        await eventually(gone, timeout=120, interval=1.0)
        await eventually(nothing_runs, timeout=60, interval=0.5)
