"""A real round and a real release, watched as a platform team would: Events, metrics, kstatus.

The sandbox federation (the hub, an agent and a process kubelet per hospital, real Flower
processes) trains a 2-site, 2-server-round FederatedRound; the hub then releases its model
(verify, sign, anchor on a real anvil, promote). While that runs, every HospitalNode,
FederatedRound, RoundAssignment and ModelRelease is read continuously and its kstatus result
(what Flux shows; Argo CD maps it to Healthy/Progressing/Degraded) recorded per observed phase.
A round that cannot start (an image that does not exist) gives the Failed side.
"""

from __future__ import annotations

import asyncio
import collections
import importlib.util
import json

import pytest

from fedcare import metrics
from fedcare.api.resources import API_VERSION
from fedcare.health import kstatus
from fedcare.integrations.kube import Kube, Ref
from fedcare.sandbox import release as sandbox_release
from fedcare.sandbox.anvil import DEV_KEY
from fedcare.sandbox.federation import TRAIN_IMAGE, Federation, round_manifest
from tests.support.harness import eventually

pytestmark = pytest.mark.skipif(importlib.util.find_spec("fedcare_workloads") is None,
                                reason="needs the workloads package: pip install -c constraints.txt -e ./workloads")

ROUNDS = Ref(API_VERSION, "federatedrounds", "default")
RELEASES = Ref(API_VERSION, "modelreleases", "default")
KINDS = (("hospitalnodes", None), ("federatedrounds", "default"), ("roundassignments", None),
         ("modelreleases", "default"))


def sample(hist) -> tuple[float, float]:
    """(count, sum) of an unlabelled prometheus-client histogram, as a scrape would read them."""
    values = {s.name: s.value for m in hist.collect() for s in m.samples}
    name = hist._name
    return values[f"{name}_count"], values[f"{name}_sum"]


class Recorder:
    """Reads every object of the four kinds every 0.2 s; keeps (kind, phase) -> {kstatus}."""

    def __init__(self, api: Kube):
        self.api = api
        self.seen: dict[tuple[str, str], set[str]] = collections.defaultdict(set)
        self.flux: dict[tuple[str, str], set[str]] = collections.defaultdict(set)
        self.argo: dict[tuple[str, str], set[str]] = collections.defaultdict(set)
        self.stop = asyncio.Event()

    async def run(self) -> None:
        while not self.stop.is_set():
            for plural, ns in KINDS:
                for obj in await self.api.list(Ref(API_VERSION, plural, ns)):
                    health = kstatus(obj)
                    st = obj.get("status") or {}
                    stale = (st.get("observedGeneration") or 0) < (obj["metadata"].get("generation") or 0)
                    key = (obj["kind"], (st.get("phase") or "") + (" (spec changed)" if stale else ""))
                    self.seen[key].add(health.status)
                    self.flux[key].add(health.flux)
                    self.argo[key].add(health.argo)
            try:
                await asyncio.wait_for(self.stop.wait(), 0.2)
            except asyncio.TimeoutError:
                pass


async def events_of(api: Kube, name: str) -> list[dict]:
    return [e for e in await api.list(Ref("v1", "events", "default"))
            if (e.get("involvedObject") or {}).get("name") == name]


def reasons(evts: list[dict]) -> collections.Counter:
    return collections.Counter(e["reason"] for e in evts)


async def phase(api: Kube, ref: Ref, *phases: str):
    obj = await api.get_or_none(ref)
    return obj if obj and (obj.get("status") or {}).get("phase") in phases else None


@pytest.mark.timeout(3600)
async def test_a_real_round_and_release_give_events_metrics_and_kstatus(emulator, anvil, tmp_path):
    before = {h: sample(h) for h in (metrics.SERVER_ROUND_DURATION, metrics.ROUND_PARTICIPANTS,
                                     metrics.AGGREGATION_DURATION)}
    cfg = sandbox_release.release_config(anvil.url, anvil.chain_id)
    fed = Federation(str(emulator.url), tmp_path, ["rouen", "lyon"], release=cfg)
    recorder = Recorder(fed.api)
    watching = None
    try:
        await fed.start(images=40)
        api = fed.api
        watching = asyncio.create_task(recorder.run())

        # -- the round ------------------------------------------------------------------------
        # roundTimeoutSeconds generous: on the shared 2-core machine (load 60) a site's update once
        # took longer than the default 300 s and the round failed QuorumLost, correctly.
        await api.create(ROUNDS, round_manifest("r1", sites=2, rounds=2, holdout=str(fed.data / "holdout"),
                                                roundTimeoutSeconds=900, activeDeadlineSeconds=3600))
        r1 = Ref(API_VERSION, "federatedrounds", "default", "r1")
        running = await eventually(lambda: phase(api, r1, "Running", "Failed"), timeout=300, interval=0.5)
        assert running["status"]["phase"] == "Running", running["status"]
        started = await eventually(lambda: events_of(api, "r1"), timeout=30)
        assert reasons(started)["RoundStarted"] == 1
        [ev] = [e for e in started if e["reason"] == "RoundStarted"]
        assert ev["type"] == "Normal" and "Round r1 started training (attempt 1): 2 site(s) (lyon, rouen)" \
            in ev["message"] and "2 server round(s)" in ev["message"]
        done = await eventually(lambda: phase(api, r1, "Succeeded", "Failed"), timeout=2400, interval=1.0)
        st = done["status"]
        assert st["phase"] == "Succeeded", st

        evts = await eventually(lambda: _with(api, "r1", "RoundSucceeded"), timeout=30)
        got = reasons(evts)
        assert got["RoundStarted"] == 1 and got["RoundSucceeded"] == 1 and got["RoundFailed"] == 0, got
        [ok] = [e for e in evts if e["reason"] == "RoundSucceeded"]
        assert "Round r1 succeeded (attempt 1): 2 server rounds aggregated" in ok["message"]

        # metrics: one observation per server round, as the ServerApp measured it
        prov = json.loads((fed.artifact_dir / st["result"]["storageUri"].removeprefix("pvc://fedcare-artifacts/"))
                          .with_name("provenance.json").read_text())
        measured = [r for r in prov["rounds"] if r["round"] > 0]
        assert all(r["duration_seconds"] > 0 and r["aggregation_seconds"] > 0 for r in measured), measured
        count, total = sample(metrics.SERVER_ROUND_DURATION)
        assert count - before[metrics.SERVER_ROUND_DURATION][0] == 2
        assert total - before[metrics.SERVER_ROUND_DURATION][1] == pytest.approx(
            sum(r["duration_seconds"] for r in measured), abs=0.01)
        count, total = sample(metrics.ROUND_PARTICIPANTS)
        assert (count - before[metrics.ROUND_PARTICIPANTS][0], total - before[metrics.ROUND_PARTICIPANTS][1]) \
            == (2, 4)                                # 2 server rounds, 2 sites each
        count, total = sample(metrics.AGGREGATION_DURATION)
        assert count - before[metrics.AGGREGATION_DURATION][0] == 2
        assert total - before[metrics.AGGREGATION_DURATION][1] == pytest.approx(
            sum(r["aggregation_seconds"] for r in measured), abs=0.001)

        # -- the release of its model -----------------------------------------------------------
        await sandbox_release.deploy(cfg)
        model = fed.artifact_dir / st["result"]["storageUri"].removeprefix("pvc://fedcare-artifacts/")
        body = {"apiVersion": API_VERSION, "kind": "ModelRelease",
                "metadata": {"name": "r1-model", "namespace": "default"},
                "spec": {"modelName": "ultrasound-cnn", "version": "1.0.0",
                         "artifact": {"storageUri": model.resolve().as_uri(), "digest": st["result"]["digest"]},
                         "provenance": {"federatedRoundRef": {"namespace": "default", "name": "r1"}},
                         "stage": "Staging"}}
        await api.create(RELEASES, body)
        rel = Ref(API_VERSION, "modelreleases", "default", "r1-model")
        await eventually(lambda: _with(api, "r1-model", "ReleasePromoted"), timeout=120, interval=0.5)
        # The recorder polls (every 0.2 s plus four lists, slower under load): let it see the
        # anchored release before the revocation moves it on (a full run once missed it).
        await eventually(lambda: asyncio.sleep(0, recorder.seen.get(("ModelRelease", "Anchored"))),
                         timeout=30, interval=0.2)
        await api.patch(rel, {"spec": {"revocation": {"revoked": True, "reason": "superseded by a retrain"}}})
        evts = await eventually(lambda: _with(api, "r1-model", "ReleaseArchived"), timeout=60, interval=0.5)
        got = reasons(e for e in evts if e["reason"] != "Validated")
        assert got == {"ReleaseVerified": 1, "ReleaseSigned": 1, "ReleaseAnchored": 1,
                       "ReleasePromoted": 1, "ReleaseRevoked": 1, "ReleaseArchived": 1}, got
        by = {e["reason"]: e for e in evts}
        assert by["ReleasePromoted"]["message"].startswith("ModelRelease r1-model promoted to Staging")
        assert by["ReleaseRevoked"]["type"] == "Warning" and "revoked on chain" in by["ReleaseRevoked"]["message"]
        assert "anchored in block" in by["ReleaseAnchored"]["message"]

        # -- a round that cannot start ------------------------------------------------------------
        bad = round_manifest("r2", sites=2, rounds=1)
        bad["spec"]["training"]["image"] = "registry.example/unknown@" + TRAIN_IMAGE.split("@")[1]
        await api.create(ROUNDS, bad)
        failed = await eventually(lambda: _with(api, "r2", "RoundFailed"), timeout=120, interval=0.5)
        [ev] = [e for e in failed if e["reason"] == "RoundFailed"]
        assert ev["type"] == "Warning" and ev["message"].startswith("Round r2 failed (attempt 1), AggregatorFailed: ")

        # -- a hub restart repeats no Event ------------------------------------------------------
        counts = {n: reasons(await events_of(api, n)) for n in ("r1", "r1-model", "r2")}
        duplicates = metrics.EVENTS_POSTED.labels("Normal", "duplicate")._value.get()
        await fed.stop_hub()
        await fed.hub_ctx.close()
        await fed.start_hub()
        await eventually(lambda: metrics.EVENTS_POSTED.labels("Normal", "duplicate")._value.get()
                         >= duplicates + 3, timeout=60, interval=0.5)     # it tried, the API server said 409
        await asyncio.sleep(3)
        assert {n: reasons(await events_of(api, n)) for n in ("r1", "r1-model", "r2")} == counts

        # nothing secret in any Event
        everything = json.dumps(await api.list(Ref("v1", "events")))
        assert DEV_KEY.removeprefix("0x") not in everything
    finally:
        recorder.stop.set()
        if watching is not None:
            await asyncio.gather(watching, return_exceptions=True)
        await fed.close()

    # -- kstatus at each step: what Flux / Argo CD showed ---------------------------------------
    seen = recorder.seen
    assert seen[("HospitalNode", "Ready")] == {"Current"}, dict(seen)
    for step in ("Pending", "Scheduling", "Running"):
        assert seen.get(("FederatedRound", step), {"InProgress"}) <= {"InProgress"}, (step, dict(seen))
    assert ("FederatedRound", "Running") in seen
    assert seen[("FederatedRound", "Succeeded")] == {"Current"}
    assert recorder.flux[("FederatedRound", "Succeeded")] == {"Ready"}
    assert recorder.argo[("FederatedRound", "Succeeded")] == {"Healthy"}
    assert seen[("FederatedRound", "Failed")] == {"Failed"}
    assert recorder.argo[("FederatedRound", "Failed")] == {"Degraded"}
    assert recorder.argo[("FederatedRound", "Running")] == {"Progressing"}
    # an assignment: InProgress until the site answered, Current once accepted and while it trains
    assert seen[("RoundAssignment", "Running")] == {"Current"}, dict(seen)
    assert seen.get(("RoundAssignment", ""), {"InProgress"}) == {"InProgress"}
    assert seen.get(("RoundAssignment", "Accepted"), {"Current"}) == {"Current"}
    # a release: InProgress until anchored, Current once anchored, and (finished) once revoked
    assert seen.get(("ModelRelease", "Pending"), {"InProgress"}) == {"InProgress"}
    assert seen.get(("ModelRelease", "Verified"), {"InProgress"}) == {"InProgress"}
    assert seen[("ModelRelease", "Anchored")] == {"Current"}
    assert seen[("ModelRelease", "Revoked")] == {"Current"}
    assert seen.get(("ModelRelease", "Anchored (spec changed)"), {"InProgress"}) == {"InProgress"}


async def _with(api: Kube, name: str, reason: str):
    evts = await events_of(api, name)
    return evts if any(e["reason"] == reason for e in evts) else None
