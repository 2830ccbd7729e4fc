"""FederatedRound execution on the emulator, through the operator: the hub, one agent and one
process kubelet per hospital, real Flower processes (SuperLink and SuperNodes as pods)."""

from __future__ import annotations

import asyncio
import datetime as dt
import importlib.util
import json
import os
import signal

import pytest

from fedcare.api.resources import API_VERSION
from fedcare.integrations.kube import Ref
from fedcare.sandbox.federation import TRAIN_IMAGE, WORK_NAMESPACE, federation, round_manifest
from tests.support.harness import eventually

pytestmark = pytest.mark.skipif(importlib.util.find_spec("fedcare_workloads") is None,
                                reason="needs the workloads package: pip install -c constraints.txt -e ./workloads")

ROUNDS = Ref(API_VERSION, "federatedrounds", "default")


def cond(obj, ctype):
    return next((c for c in (obj or {}).get("status", {}).get("conditions", []) if c["type"] == ctype), {})


async def get_round(api, name):
    return await api.get_or_none(Ref(API_VERSION, "federatedrounds", "default", name))


def phase_is(api, name, *phases):
    async def check():
        obj = await get_round(api, name)
        return obj if obj and obj.get("status", {}).get("phase") in phases else None
    return check


def uids(items):
    return sorted(i["metadata"]["uid"] for i in items)


async def pods_of(api, namespace):
    return await api.list(Ref("v1", "pods", namespace))


async def nothing_left(fed):
    pods = await pods_of(fed.api, WORK_NAMESPACE) + await pods_of(fed.api, "default")
    ras = await fed.api.list(Ref(API_VERSION, "roundassignments"))
    assert pods == [] and ras == [], ([p["metadata"]["name"] for p in pods], len(ras))
    assert fed.processes() == [], fed.processes()
    return True


@pytest.mark.timeout(1500)
async def test_round_runs_to_success_through_a_hub_restart(emulator, tmp_path):
    """2 sites, 2 rounds; the hub is stopped and restarted mid-run: no duplicate SuperLink,
    assignment, pod or Flower run, and the round completes with its result and release."""
    async with federation(str(emulator.url), tmp_path, ["rouen", "lyon"], images=40) as fed:
        api = fed.api
        body = round_manifest("r1", sites=2, rounds=2, holdout=str(fed.data / "holdout"),
                              release={"create": True, "modelName": "ultrasound-cnn"})
        await api.create(ROUNDS, body)
        running = await eventually(phase_is(api, "r1", "Running", "Failed"), timeout=300, interval=0.5)
        assert running["status"]["phase"] == "Running", running["status"]
        run_id = running["status"]["runId"]
        assert {p["node"] for p in running["status"]["participants"]} == {"rouen", "lyon"}
        before = {"superlink": uids(await pods_of(api, "default")),
                  "assignments": uids(await api.list(Ref(API_VERSION, "roundassignments"))),
                  "pods": uids(await pods_of(api, WORK_NAMESPACE))}
        assert len(before["superlink"]) == 1 and len(before["assignments"]) == 2 and len(before["pods"]) == 2
        for p in await pods_of(api, WORK_NAMESPACE):
            labels = p["metadata"]["labels"]
            assert labels["fedcare.io/attempt"] == "1" and labels["fedcare.io/round"] == "r1"
            spec = p["spec"]
            assert spec["volumes"][0]["persistentVolumeClaim"]["readOnly"] is True
            assert "nvidia.com/gpu" not in spec["containers"][0]["resources"]["limits"]
            assert spec["nodeSelector"] == {"fedcare.io/site": labels["fedcare.io/site"]}
            assert spec["containers"][0]["securityContext"]["allowPrivilegeEscalation"] is False
        policies = await api.list(Ref("networking.k8s.io/v1", "networkpolicies", WORK_NAMESPACE))
        assert len(policies) == 2 and all(np["spec"]["ingress"] == [] for np in policies)

        await fed.stop_hub()                      # killed mid-round
        await asyncio.sleep(3)
        await fed.start_hub()                     # and back: resumes from status alone
        await asyncio.sleep(8)                    # several passes of the restarted hub
        mid = await get_round(api, "r1")
        if mid["status"]["phase"] == "Running":   # nothing was created twice: what existed was adopted
            assert uids(await pods_of(api, "default")) == before["superlink"]
            assert uids(await api.list(Ref(API_VERSION, "roundassignments"))) == before["assignments"]
            assert uids(await pods_of(api, WORK_NAMESPACE)) == before["pods"]
            assert mid["status"]["runId"] == run_id

        done = await eventually(phase_is(api, "r1", "Succeeded", "Failed"), timeout=600, interval=1.0)
        st = done["status"]
        assert st["phase"] == "Succeeded", (st, cond(done, "Failed"))
        assert cond(done, "Ready")["status"] == "True" and cond(done, "Complete")["status"] == "True"
        assert st["runId"] == run_id and st["runStatus"] == "finished:completed"
        assert [r["round"] for r in st["serverRounds"]] == [1, 2] and st["serverRound"] == "2/2"
        assert all({s["site"] for s in r["sites"] if s["status"] == "ok"} == {"rouen", "lyon"}
                   for r in st["serverRounds"])
        assert st["serverRounds"][-1]["accuracy"]
        # the result: artifact store folder, digest recomputed, provenance and model card beside it
        digest, uri = st["result"]["digest"], st["result"]["storageUri"]
        assert uri.startswith("pvc://fedcare-artifacts/")
        model = fed.artifact_dir / uri.removeprefix("pvc://fedcare-artifacts/")
        assert (model.parent / "model.safetensors.sha256").read_text().split()[0] == digest.removeprefix("sha256:")
        assert json.loads((model.parent / "provenance.json").read_text())["status"] == "completed"
        assert (model.parent / "model-card.json").is_file()
        release = await api.get(Ref(API_VERSION, "modelreleases", "default", st["result"]["modelReleaseRef"]))
        assert release["spec"]["artifact"] == {"storageUri": uri, "digest": digest}
        assert release["spec"]["provenance"]["federatedRoundRef"]["name"] == "r1"
        # nothing was created twice: the restart adopted what existed
        await eventually(lambda: nothing_left(fed), timeout=60, interval=0.5)
        events = [e for e in await api.list(Ref("v1", "events", "default"))
                  if (e.get("involvedObject") or {}).get("name") == "r1"]
        assert not [e for e in events if e["type"] == "Warning"]


@pytest.mark.timeout(900)
async def test_deleting_a_round_mid_run_cleans_up_and_pods_are_retried(emulator, tmp_path):
    async with federation(str(emulator.url), tmp_path, ["rouen", "lyon"], images=40) as fed:
        api = fed.api
        await api.create(ROUNDS, round_manifest("r2", sites=2, rounds=50))

        async def both_running():
            ras = await api.list(Ref(API_VERSION, "roundassignments"))
            return ras if len(ras) == 2 and all(ra.get("status", {}).get("phase") == "Running" for ra in ras) \
                else None
        await eventually(both_running, timeout=300, interval=0.5)
        # a training container crashes: the pod restarts it and the assignment counts it
        kubelet = fed.handles["rouen"].kubelet
        pid = next(iter(kubelet.processes), None)
        assert pid is not None
        os.killpg(pid, signal.SIGKILL)

        async def restarted():
            ras = await api.list(Ref(API_VERSION, "roundassignments", "fedcare-site-rouen"))
            return ras and ras[0].get("status", {}).get("restarts", 0) >= 1 and ras[0]
        ra = await eventually(restarted, timeout=120, interval=0.5)
        assert ra["status"]["phase"] in ("Running", "Accepted")
        await eventually(phase_is(api, "r2", "Running"), timeout=300, interval=0.5)
        await api.delete(Ref(API_VERSION, "federatedrounds", "default", "r2"))
        await eventually(lambda: nothing_left(fed), timeout=90, interval=0.5)
        await eventually(lambda: _gone(api, "r2"), timeout=120, interval=0.5)
        assert await api.list(Ref("v1", "services", "default")) == []
        assert await api.list(Ref("v1", "persistentvolumeclaims", "default")) != []   # the artifact store stays
        assert not [c for c in await api.list(Ref("v1", "persistentvolumeclaims", "default"))
                    if c["metadata"]["name"].startswith("r2-")]


async def _gone(api, name):
    return await get_round(api, name) is None


@pytest.mark.timeout(600)
async def test_rounds_that_cannot_run_say_why(emulator, tmp_path):
    """Bad input and quorum: every case named, nothing started that should not be."""
    async with federation(str(emulator.url), tmp_path, ["rouen", "lyon"], images=20,
                          site_gpus={"rouen": 1}) as fed:
        api = fed.api
        nobody = round_manifest("nobody", sites=2, rounds=1)
        nobody["spec"]["participants"]["selector"] = {"matchLabels": {"fedcare.io/region": "mars"}}
        three = round_manifest("three", sites=3, rounds=1)
        gpus = round_manifest("gpus", sites=2, rounds=1, gpus_per_site=2)
        image = round_manifest("image", sites=2, rounds=1)
        image["spec"]["training"]["image"] = "registry.example/unknown@" + TRAIN_IMAGE.split("@")[1]
        base = round_manifest("base", sites=2, rounds=1)
        base["spec"]["model"] = {"initialModel": {"modelReleaseRef": {"name": "missing"}}}
        arch = round_manifest("arch", sites=2, rounds=1)
        arch["spec"]["model"] = {"architecture": "resnet-9000"}
        for b in (nobody, three, gpus, image, base, arch):
            await api.create(ROUNDS, b)

        async def reason(name, ctype, expected):
            obj = await get_round(api, name)
            return obj if cond(obj, ctype).get("reason") == expected else None

        # (Ready follows once the admission handler's Valid is in too: until then it says NotStarted,
        # "waiting for Valid", even when the scheduler has already found no quorum)
        obj = await eventually(lambda: reason("nobody", "Ready", "QuorumNotMet"), timeout=30)
        assert cond(obj, "ParticipantsSelected")["reason"] == "QuorumNotMet"
        assert "the selector matches no HospitalNode" in cond(obj, "ParticipantsSelected")["message"]
        assert obj["status"]["phase"] == "Pending"
        obj = await eventually(lambda: reason("three", "ParticipantsSelected", "QuorumNotMet"), timeout=30)
        assert cond(obj, "ParticipantsSelected")["message"].startswith("2 of 3 required sites eligible")
        obj = await eventually(lambda: reason("gpus", "ParticipantsSelected", "QuorumNotMet"), timeout=30)
        message = cond(obj, "ParticipantsSelected")["message"]
        assert "rouen: " in message and "lyon: " in message and "2 needed" in message
        obj = await eventually(lambda: reason("image", "Failed", "AggregatorFailed"), timeout=60)
        assert "ErrImagePull" in cond(obj, "Failed")["message"] and obj["status"]["phase"] == "Failed"
        assert cond(obj, "Ready")["status"] == "False"
        obj = await eventually(lambda: reason("base", "Failed", "InvalidSpec"), timeout=30)
        assert "modelReleaseRef: ModelRelease missing does not exist" in cond(obj, "Failed")["message"]
        obj = await eventually(lambda: reason("arch", "Ready", "InvalidSpec"), timeout=30)
        assert "architecture" in cond(obj, "Ready")["message"] and obj["status"]["phase"] == "Invalid"
        # a waiting round fails at its deadline (the deadline is status: as if the time had passed)
        past = (dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1)).replace(microsecond=0).isoformat()
        await api.patch(Ref(API_VERSION, "federatedrounds", "default", "three"),
                        {"status": {"deadline": past.replace("+00:00", "Z")}}, status=True)
        obj = await eventually(lambda: reason("three", "Failed", "DeadlineExceeded"), timeout=30)
        assert "activeDeadlineSeconds" in cond(obj, "Failed")["message"] and obj["status"]["phase"] == "Failed"
        # nothing ran for any of them
        assert await api.list(Ref(API_VERSION, "roundassignments")) == []
        assert await pods_of(api, WORK_NAMESPACE) == []
