"""hub/lifecycle.py on the emulated API: the status sequences the round scheduler and the release
pipeline write, fed as the hub's watch delivers them (repeated, squashed, after a restart).

The real round and release are in test_round_observability.py; here the cases a real run
cannot produce on demand: a straggler, a refused release, a refused promotion, a restart an
hour later, and the anchoring latency (a real anvil confirms faster than kopf batches events).
"""

from __future__ import annotations

import copy
import datetime as dt

from fedcare import metrics
from fedcare.api.resources import API_VERSION
from fedcare.hub.lifecycle import Lifecycle, release_facts, round_facts
from fedcare.integrations.kube import Ref


def iso(seconds_ago: float = 0) -> str:
    return (dt.datetime.now(dt.UTC) - dt.timedelta(seconds=seconds_ago)).strftime("%Y-%m-%dT%H:%M:%SZ")


def round_body(status: dict, name: str = "r1", uid: str = "uid-r1") -> dict:
    return {"apiVersion": API_VERSION, "kind": "FederatedRound",
            "metadata": {"name": name, "namespace": "default", "uid": uid, "generation": 1}, "status": status}


def cond(ctype: str, status: str, reason: str, message: str, ago: float = 0) -> dict:
    return {"type": ctype, "status": status, "reason": reason, "message": message, "lastTransitionTime": iso(ago)}


def site(name: str, status: str) -> dict:
    return {"site": name, "status": status, "examples": 10 if status == "ok" else 0,
            "reason": "" if status == "ok" else "no reply within the round timeout"}


RUNNING = {"phase": "Running", "attempt": 1, "startTime": iso(), "runId": "42", "serverRound": "0/3",
           "participants": [{"node": "rouen"}, {"node": "lyon"}, {"node": "lille"}], "roundsCompleted": 0,
           "conditions": []}


async def events_about(api, name: str) -> list[dict]:
    return [e for e in await api.list(Ref("v1", "events", "default"))
            if (e.get("involvedObject") or {}).get("name") == name]


def counter(c) -> float:
    return c._value.get()


async def test_a_straggler_is_told_once_per_site_and_server_round(api):
    life = Lifecycle(lambda: api)
    dropped_before = counter(metrics.STRAGGLERS_DROPPED)
    participants_before = {s.name: s.value for m in metrics.ROUND_PARTICIPANTS.collect() for s in m.samples}
    await life.round_seen(round_body({"phase": "Pending", "attempt": 1, "startTime": iso()}), None)
    await life.round_seen(round_body(RUNNING), "MODIFIED")
    one = {**RUNNING, "roundsCompleted": 1, "serverRound": "1/3",
           "serverRounds": [{"round": 1, "sites": [site("rouen", "ok"), site("lyon", "ok"), site("lille", "dropped")]}]}
    for _ in range(3):                                   # every pass rewrites the same status
        await life.round_seen(round_body(one), "MODIFIED")
    two = copy.deepcopy(one)
    two["roundsCompleted"], two["serverRound"] = 2, "2/3"
    two["serverRounds"].append({"round": 2, "sites": [site("rouen", "ok"), site("lyon", "dropped"),
                                                      site("lille", "dropped")]})
    await life.round_seen(round_body(two), "MODIFIED")
    failed = {**two, "phase": "Failed", "completionTime": iso(),
              "conditions": [cond("Failed", "True", "QuorumLost", "1 of 2 required sites replied in round 3")]}
    await life.round_seen(round_body(failed), "MODIFIED")
    await life.round_seen(round_body(failed), "MODIFIED")

    evts = await events_about(api, "r1")
    got = sorted((e["reason"], e["type"], e["message"]) for e in evts)
    assert got == sorted([
        ("RoundStarted", "Normal", "Round r1 started training (attempt 1): 3 site(s) (lille, lyon, rouen), "
                                   "3 server round(s)"),
        ("StragglerDropped", "Warning", "Site lille was dropped from server round 1 of round r1 (attempt 1): "
                                        "no reply within the round timeout"),
        ("StragglerDropped", "Warning", "Site lyon was dropped from server round 2 of round r1 (attempt 1): "
                                        "no reply within the round timeout"),
        ("StragglerDropped", "Warning", "Site lille was dropped from server round 2 of round r1 (attempt 1): "
                                        "no reply within the round timeout"),
        ("RoundFailed", "Warning", "Round r1 failed (attempt 1), QuorumLost: 1 of 2 required sites replied in "
                                   "round 3"),
    ]), got
    assert all(e["involvedObject"]["kind"] == "FederatedRound" and e["involvedObject"]["uid"] == "uid-r1"
               for e in evts)
    assert counter(metrics.STRAGGLERS_DROPPED) - dropped_before == 3
    after = {s.name: s.value for m in metrics.ROUND_PARTICIPANTS.collect() for s in m.samples}
    assert after["fedcare_round_participants_count"] - participants_before["fedcare_round_participants_count"] == 2
    assert after["fedcare_round_participants_sum"] - participants_before["fedcare_round_participants_sum"] == 3

    # a restarted hub (a new Lifecycle) sees the same status: the API server refuses the same names
    duplicates = counter(metrics.EVENTS_POSTED.labels("Warning", "duplicate"))
    dropped = counter(metrics.STRAGGLERS_DROPPED)
    await Lifecycle(lambda: api).round_seen(round_body(failed), None)
    assert len(await events_about(api, "r1")) == len(evts)
    assert counter(metrics.EVENTS_POSTED.labels("Warning", "duplicate")) - duplicates == 4
    assert counter(metrics.STRAGGLERS_DROPPED) == dropped          # first sight: nothing counted again

    # a new attempt (the round resumed) is a new transition
    again = {**RUNNING, "attempt": 2, "startTime": iso()}
    await life.round_seen(round_body(again), "MODIFIED")
    assert sum(e["reason"] == "RoundStarted" for e in await events_about(api, "r1")) == 2


async def test_a_restart_an_hour_later_does_not_repeat_history(api):
    old = {**RUNNING, "phase": "Succeeded", "startTime": iso(7300), "completionTime": iso(7200),
           "conditions": [cond("Complete", "True", "RunSucceeded", "3 server rounds aggregated; model sha256:ab",
                               7200)]}
    await Lifecycle(lambda: api).round_seen(round_body(old, name="old", uid="uid-old"), None)
    assert await events_about(api, "old") == []
    recent = {**old, "completionTime": iso(10)}
    await Lifecycle(lambda: api).round_seen(round_body(recent, name="recent", uid="uid-recent"), None)
    assert sorted(e["reason"] for e in await events_about(api, "recent")) == ["RoundSucceeded"]


def release_body(status: dict, generation: int = 1) -> dict:
    return {"apiVersion": API_VERSION, "kind": "ModelRelease",
            "metadata": {"name": "m1", "namespace": "default", "uid": "uid-m1", "generation": generation},
            "status": status}


async def test_release_refused_promotion_refused_and_anchoring_latency(api):
    now = [100.0]
    life = Lifecycle(lambda: api, clock=lambda: now[0])
    refused = {"phase": "Failed", "conditions": [cond("Verified", "False", "DigestMismatch",
                                                      "the artifact's sha256 is not spec.artifact.digest")]}
    await life.release_seen(release_body(refused), None)
    await life.release_seen(release_body(refused), "MODIFIED")
    [ev] = await events_about(api, "m1")
    assert (ev["reason"], ev["type"]) == ("ReleaseRefused", "Warning")
    assert ev["message"] == "ModelRelease m1 refused, DigestMismatch: the artifact's sha256 is not spec.artifact.digest"

    count, total = (lambda v: (v["fedcare_release_anchoring_duration_seconds_count"],
                               v["fedcare_release_anchoring_duration_seconds_sum"]))(
        {s.name: s.value for m in metrics.ANCHORING_DURATION.collect() for s in m.samples})
    verified = [cond("Verified", "True", "Verified", "sha256 matches"),
                cond("Signed", "True", "Signed", "release digest signed with sandbox:ed25519:v1")]
    pending = {"phase": "Verified", "verifiedDigest": "sha256:ab", "signature": {"keyId": "sandbox:ed25519:v1"},
               "anchor": {"pendingTx": "0xabc"}, "conditions": verified + [
                   cond("Anchored", "False", "TransactionPending", "anchoring transaction 0xabc sent")]}
    await life.release_seen(release_body(pending, 2), "MODIFIED")
    now[0] += 7.5
    await life.release_seen(release_body(pending, 2), "MODIFIED")
    now[0] += 5.0
    anchored = {**pending, "phase": "Anchored", "stage": "Candidate",
                "anchor": {"txHash": "0xabc", "blockNumber": 7, "anchoredTime": iso()},
                "stageHistory": [{"stage": "Candidate", "time": iso(), "reason": "Created"}],
                "conditions": verified + [cond("Anchored", "True", "Anchored", "anchored in block 7 of chain 31337")]}
    await life.release_seen(release_body(anchored, 2), "MODIFIED")
    after = {s.name: s.value for m in metrics.ANCHORING_DURATION.collect() for s in m.samples}
    assert after["fedcare_release_anchoring_duration_seconds_count"] - count == 1
    assert after["fedcare_release_anchoring_duration_seconds_sum"] - total == 12.5

    back = {**anchored, "stage": "Production",
            "stageHistory": anchored["stageHistory"] + [{"stage": "Production", "time": iso(), "reason": "Promoted"}],
            "conditions": anchored["conditions"] + [cond("Promoted", "False", "StageCannotGoBack",
                                                         "Production cannot go back to Staging; archive it instead")]}
    await life.release_seen(release_body(back, 3), "MODIFIED")
    await life.release_seen(release_body(back, 3), "MODIFIED")
    got = sorted(e["reason"] for e in await events_about(api, "m1"))
    assert got == ["PromotionRefused", "ReleaseAnchored", "ReleasePromoted", "ReleaseRefused", "ReleaseSigned",
                   "ReleaseVerified"]


def test_facts_carry_no_spec_value_or_secret():
    """Messages come from names, fixed words and what status already says; never the spec."""
    body = round_body({**RUNNING, "phase": "Succeeded", "completionTime": iso(),
                       "conditions": [cond("Complete", "True", "RunSucceeded", "ok")]})
    body["spec"] = {"training": {"image": "registry.example/secret-token-123"}}
    assert not [f for f in round_facts(body) if "secret-token" in f.message]
    rel = release_body({"conditions": [cond("Verified", "True", "Verified", "ok")]})
    rel["spec"] = {"artifact": {"storageUri": "https://user:password@host/model"}}
    assert not [f for f in release_facts(rel) if "password" in f.message]


async def test_an_event_lost_to_an_api_outage_is_posted_at_the_next_watch_event(emulator, api):
    import kmock

    life = Lifecycle(lambda: api)
    failed_before = counter(metrics.EVENTS_POSTED.labels("Normal", "failed"))
    await life.round_seen(round_body({"phase": "Pending", "attempt": 1}, name="out", uid="uid-out"), None)
    outage = emulator.inject(kmock.K8sCriteria(method=kmock.method.POST),
                             kmock.KubernetesError(503, "ServiceUnavailable", "down"), times=None)
    try:
        await life.round_seen(round_body(RUNNING, name="out", uid="uid-out"), "MODIFIED")   # never raises
    finally:
        outage.times = 0
    assert counter(metrics.EVENTS_POSTED.labels("Normal", "failed")) - failed_before == 1
    assert await events_about(api, "out") == []
    await life.round_seen(round_body(RUNNING, name="out", uid="uid-out"), "MODIFIED")
    await life.round_seen(round_body(RUNNING, name="out", uid="uid-out"), "MODIFIED")
    assert [e["reason"] for e in await events_about(api, "out")] == ["RoundStarted"]


def test_event_names_are_valid_whatever_the_object_name():
    from fedcare import events

    long = "a" * 199 + "-" + "b" * 53                     # 253 characters, a '-' at the cut
    name = events.once_name({"metadata": {"name": long, "uid": "u"}}, "started/1")
    assert len(name) <= 253 and ".." not in name and "-." not in name
    assert name == events.once_name({"metadata": {"name": long, "uid": "u"}}, "started/1")
    assert name != events.once_name({"metadata": {"name": long, "uid": "u"}}, "started/2")
