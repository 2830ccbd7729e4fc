"""A FederatedRound that starts from an earlier round's released model, through the operator on
the emulator (hub, agents, process kubelets, real Flower processes)."""

from __future__ import annotations

import importlib.util
import json

import pytest

from fedcare.api.resources import API_VERSION
from fedcare.integrations.kube import Ref
from fedcare.sandbox.federation import federation, round_manifest
from tests.support.harness import eventually

pytestmark = pytest.mark.skipif(importlib.util.find_spec("fedcare_workloads") is None,
                                reason="needs the workloads package: pip install -c constraints.txt -e ./workloads")

ROUNDS = Ref(API_VERSION, "federatedrounds", "default")


def cond(obj, ctype):
    return next((c for c in (obj or {}).get("status", {}).get("conditions", []) if c["type"] == ctype), {})


def finished(api, name):
    async def check():
        obj = await api.get_or_none(Ref(API_VERSION, "federatedrounds", "default", name))
        return obj if obj and obj.get("status", {}).get("phase") in ("Succeeded", "Failed", "Invalid") else None
    return check


@pytest.mark.timeout(1200)
async def test_a_round_starts_from_a_released_model_pinned_by_its_digest(emulator, tmp_path):
    async with federation(str(emulator.url), tmp_path, ["rouen", "lyon"], images=30) as fed:
        api = fed.api
        await api.create(ROUNDS, round_manifest("base", sites=2, rounds=1,
                                                release={"create": True, "modelName": "ultrasound-cnn"}))
        base = await eventually(finished(api, "base"), timeout=600, interval=1.0)
        assert base["status"]["phase"] == "Succeeded", (base["status"], cond(base, "Failed"))
        release = base["status"]["result"]["modelReleaseRef"]
        base_dir = fed.artifact_dir / base["status"]["result"]["storageUri"].removeprefix("pvc://fedcare-artifacts/")
        base_final = json.loads((base_dir.parent / "provenance.json").read_text())["final"]

        tuned = round_manifest("tuned", sites=2, rounds=1)
        tuned["spec"]["model"] = {"initialModel": {"modelReleaseRef": {"name": release}}}
        pinned_elsewhere = round_manifest("elsewhere", sites=2, rounds=1)
        pinned_elsewhere["spec"]["model"] = {"initialModel": {"storageUri": "https://models.example/m.safetensors",
                                                              "digest": base["status"]["result"]["digest"]}}
        escape = round_manifest("escape", sites=2, rounds=1)
        escape["spec"]["model"] = {"initialModel": {"storageUri": "pvc://fedcare-artifacts/../etc/passwd",
                                                    "digest": base["status"]["result"]["digest"]}}
        for b in (tuned, pinned_elsewhere, escape):
            await api.create(ROUNDS, b)

        obj = await eventually(finished(api, "elsewhere"), timeout=60, interval=0.5)
        assert cond(obj, "Failed")["reason"] == "InvalidSpec"
        assert "not in the hub's artifact store" in cond(obj, "Failed")["message"]
        obj = await eventually(finished(api, "escape"), timeout=60, interval=0.5)
        assert "'..'" in cond(obj, "Failed")["message"]

        done = await eventually(finished(api, "tuned"), timeout=600, interval=1.0)
        assert done["status"]["phase"] == "Succeeded", (done["status"], cond(done, "Failed"))
        out = fed.artifact_dir / done["status"]["result"]["storageUri"].removeprefix("pvc://fedcare-artifacts/")
        provenance = json.loads((out.parent / "provenance.json").read_text())
        # round 0 (the starting point) holds exactly the released model's weights
        round0 = next(r for r in provenance["rounds"] if r["round"] == 0)
        assert round0["global_arrays_sha256"] == base_final["arrays_sha256"]
        card = json.loads((out.parent / "model-card.json").read_text())
        assert json.dumps(card).count(base["status"]["result"]["digest"].removeprefix("sha256:")) >= 1
