"""FederatedRound and ModelRelease admission by the real hub: validation at the edge, honest status."""

from __future__ import annotations

import copy
import pathlib

import yaml

from fedcare.api.resources import API_VERSION
from fedcare.integrations.kube import Ref
from tests.support.harness import eventually

ROOT = pathlib.Path(__file__).resolve().parents[2]
ROUND = yaml.safe_load((ROOT / "examples" / "federatedround-ultrasound.yaml").read_text())
RELEASE = yaml.safe_load((ROOT / "examples" / "modelrelease-ultrasound.yaml").read_text())
ROUNDS = Ref(API_VERSION, "federatedrounds", "default")
RELEASES = Ref(API_VERSION, "modelreleases", "default")


def cond(obj, ctype):
    return next((c for c in (obj or {}).get("status", {}).get("conditions", []) if c["type"] == ctype), {})


async def status_of(api, plural, name):
    obj = await api.get_or_none(Ref(API_VERSION, plural, "default", name))
    return obj if cond(obj, "Ready") else None


async def warnings_for(api, name):
    events = await api.list(Ref("v1", "events", "default"))
    found = [e for e in events if (e.get("involvedObject") or {}).get("name") == name and e["type"] == "Warning"]
    return found or None


async def test_round_with_quorum_above_maximum_is_rejected(hub, api):
    bad = copy.deepcopy(ROUND)
    bad["spec"]["participants"]["minAvailable"] = 5
    async with hub():
        await api.create(ROUNDS, bad)
        obj = await eventually(lambda: status_of(api, "federatedrounds", bad["metadata"]["name"]), timeout=15)
        events = await eventually(lambda: warnings_for(api, bad["metadata"]["name"]), timeout=10)
    ready = cond(obj, "Ready")
    assert ready["status"] == "False" and ready["reason"] == "InvalidSpec"
    assert "participants.minAvailable must not exceed participants.maxParticipants" in ready["message"]
    assert obj["status"]["phase"] == "Invalid" and cond(obj, "Valid")["status"] == "False"
    assert any("minAvailable" in e["message"] for e in events)
    # nothing was created for it
    assert await api.list(Ref(API_VERSION, "roundassignments")) == []


async def test_valid_round_waits_for_quorum_honestly(hub, api):
    async def waiting():
        obj = await status_of(api, "federatedrounds", ROUND["metadata"]["name"])
        return obj if cond(obj, "Ready").get("reason") == "QuorumNotMet" else None

    async with hub():
        await api.create(ROUNDS, copy.deepcopy(ROUND))
        obj = await eventually(waiting, timeout=15)
    assert cond(obj, "Valid")["status"] == "True"
    assert cond(obj, "Valid")["message"].startswith("spec is valid; 0 of 2 required sites eligible at admission")
    ready = cond(obj, "Ready")
    assert ready["status"] == "False" and ready["message"].startswith("0 of 2 required sites eligible")
    assert obj["status"]["phase"] == "Pending" and obj["status"]["deadline"]
    assert obj["status"]["eligibleSites"] == 0 and obj["status"]["observedGeneration"] == 1


async def test_release_with_malformed_digest_is_rejected(hub, api):
    bad = copy.deepcopy(RELEASE)
    bad["spec"]["artifact"]["digest"] = "sha256:not-a-digest"
    async with hub():
        await api.create(RELEASES, bad)
        obj = await eventually(lambda: status_of(api, "modelreleases", bad["metadata"]["name"]), timeout=15)
        await eventually(lambda: warnings_for(api, bad["metadata"]["name"]), timeout=10)
    assert cond(obj, "Ready")["reason"] == "InvalidSpec"
    assert "spec.artifact.digest" in cond(obj, "Ready")["message"]
    assert "not-a-digest" not in cond(obj, "Ready")["message"]     # input values are never echoed
    assert obj["status"]["phase"] == "Invalid"


async def test_valid_release_says_what_is_still_to_come(hub, api):
    async with hub():
        await api.create(RELEASES, copy.deepcopy(RELEASE))

        async def verified():
            obj = await api.get_or_none(Ref(API_VERSION, "modelreleases", "default", RELEASE["metadata"]["name"]))
            return obj if cond(obj, "Verified") else None

        obj = await eventually(verified, timeout=15)
    assert cond(obj, "Valid")["status"] == "True"
    # The example names a round that does not exist here: the pipeline waits for it, and says so.
    assert cond(obj, "Ready")["reason"] == "RoundNotFound" and obj["status"]["phase"] == "Pending"
    assert cond(obj, "Verified")["status"] == "False"
