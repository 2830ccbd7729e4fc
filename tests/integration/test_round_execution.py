"""FederatedRound execution on the emulator, through the operator: the hub, one agent and one
process kubelet per hospital, real Flower processes (SuperLink and SuperNodes as pods)."""

from __future__ import annotations

import asyncio
import json
import pathlib

import pytest

from fedcare.api.resources import API_VERSION, site_namespace
from fedcare.integrations.kube import Ref
from fedcare.sandbox.federation import WORK_NAMESPACE, federation, round_manifest
from tests.support.harness import eventually

pytestmark = pytest.mark.skipif(__import__("importlib").util.find_spec("fedcare_workloads") is None,
                                reason="needs the workloads package: pip install -c constraints.txt -e ./workloads")

ROUNDS = Ref(API_VERSION, "federatedrounds", "default")


def cond(obj, ctype):
    return next((c for c in (obj or {}).get("status", {}).get("conditions", []) if c["type"] == ctype), {})


async def get_round(api, name):
    return await api.get_or_none(Ref(API_VERSION, "federatedrounds", "default", name))


async def phase_is(api, name, *phases):
    obj = await get_round(api, name)
    return obj if obj and obj.get("status", {}).get("phase") in phases else None


async def test_two_sites_two_rounds_end_to_end(emulator, tmp_path):
    async with federation(str(emulator.url), tmp_path, ["rouen", "lyon"], images=60) as fed:
        api = fed.api
        body = round_manifest("r1", sites=2, rounds=2, holdout=str(fed.data / "holdout"))
        await api.create(ROUNDS, body)
        running = await eventually(lambda: phase_is(api, "r1", "Running", "Failed"), timeout=120, interval=0.5)
        assert running["status"]["phase"] == "Running", running["status"]
        participants = {p["node"] for p in running["status"]["participants"]}
        assert participants == {"rouen", "lyon"}
        pods = await api.list(Ref("v1", "pods", WORK_NAMESPACE))
        assert {p["metadata"]["labels"]["fedcare.io/site"] for p in pods} == {"rouen", "lyon"}
        for p in pods:
            assert p["metadata"]["labels"]["fedcare.io/attempt"] == "1"
            assert p["spec"]["volumes"][0]["persistentVolumeClaim"]["readOnly"] is True
            assert "nvidia.com/gpu" not in p["spec"]["containers"][0]["resources"]["limits"]
        done = await eventually(lambda: phase_is(api, "r1", "Succeeded", "Failed"), timeout=400, interval=1.0)
        st = done["status"]
        assert st["phase"] == "Succeeded", (st, cond(done, "Failed"))
        assert cond(done, "Ready")["status"] == "True" and cond(done, "Complete")["status"] == "True"
        assert st["runId"] and st["runStatus"] == "finished:completed"
        assert [r["round"] for r in st["serverRounds"]] == [1, 2]
        assert all({s["site"] for s in r["sites"] if s["status"] == "ok"} == {"rouen", "lyon"}
                   for r in st["serverRounds"])
        assert st["serverRounds"][-1]["accuracy"] and st["serverRound"] == "2/2"
        digest = st["result"]["digest"]
        assert digest.startswith("sha256:") and st["result"]["storageUri"].startswith("pvc://fedcare-artifacts/")
        folder = fed.artifact_dir / "default" / "r1" / "attempt-1"
        assert (folder / "model.safetensors.sha256").read_text().split()[0] == digest.removeprefix("sha256:")
        assert json.loads((folder / "provenance.json").read_text())["status"] == "completed"
        assert (folder / "model-card.json").is_file()
        # everything of the round is gone: SuperLink, assignments, training pods, processes
        await eventually(lambda: _nothing_left(fed), timeout=60, interval=0.5)


async def _nothing_left(fed):
    api = fed.api
    pods = await api.list(Ref("v1", "pods", WORK_NAMESPACE)) + await api.list(Ref("v1", "pods", "default"))
    ras = await api.list(Ref(API_VERSION, "roundassignments"))
    assert pods == [] and ras == [], ([p["metadata"]["name"] for p in pods], len(ras))
    assert fed.processes() == []
    return True
