"""A round whose SuperLink loses its state mid-run fails at once, not at its deadline.

A real round on the emulator (hub, agents, process kubelets, real Flower): once the run id is
recorded, the SuperLink's state volume is deleted with its pod, as when a volume is lost. The
hub makes a new SuperLink (a new, empty volume: the sandbox kubelet gives a new claim a new
folder), registers the keys again, asks it about the run, gets 404 ("Run ID not found") and
fails the round with AggregatorFailed naming the lost run; everything of the round is cleaned up.

The control: the same pod deleted with its volume kept, once the run is training. The new
SuperLink has the run (Flower 1.42 does not resume an in-flight run after a restart: it marks
it ``finished:failed`` when the ServerApp's heartbeat is missed, ~1 min; shared/FLOWER.md §4),
so the round fails with what Flower says of the run, never as "lost", and no ``flwr stop`` is
sent for a run that has ended."""

from __future__ import annotations

import importlib.util

import pytest

from fedcare.api.resources import API_VERSION
from fedcare.hub import aggregator as agg
from fedcare.hub.flower_runs import FlowerCLI
from fedcare.integrations.kube import Ref
from fedcare.sandbox.federation import WORK_NAMESPACE, federation, round_manifest
from tests.support.harness import eventually

pytestmark = pytest.mark.skipif(importlib.util.find_spec("fedcare_workloads") is None,
                                reason="needs the workloads package: pip install -c constraints.txt -e ./workloads")

ROUNDS = Ref(API_VERSION, "federatedrounds", "default")


def cond(obj, ctype):
    return next((c for c in ((obj or {}).get("status") or {}).get("conditions", []) if c["type"] == ctype), {})


@pytest.mark.timeout(900)
async def test_a_superlink_that_lost_its_state_fails_the_round_at_once(emulator, tmp_path):
    async with federation(str(emulator.url), tmp_path, ["rouen", "lyon"], images=20) as fed:
        api = fed.api
        obj, run_id, names = await _running(fed, api, "lost")
        # the volume is lost, then the pod: the hub makes both again, empty
        await api.delete(Ref("v1", "persistentvolumeclaims", "default", names["state"]))
        await api.delete(Ref("v1", "pods", "default", names["pod"]))

        # at once: the wait is far shorter than activeDeadlineSeconds (1800 s) or a server round's timeout
        done = await eventually(lambda: _ended(api, "lost"), timeout=300, interval=0.5)
        st = done["status"]
        f = cond(done, "Failed")
        assert st["phase"] == "Failed" and f["status"] == "True" and f["reason"] == "AggregatorFailed", (st, f)
        assert f"Flower run {run_id} is lost" in f["message"] and "does not know run" in f["message"], f
        assert "create a new FederatedRound" in f["message"], f
        assert st["runId"] == run_id                    # the hub never submitted a second run
        assert cond(done, "Ready")["status"] == "False" and cond(done, "Ready")["reason"] == "AggregatorFailed"
        # a new SuperLink answered the 404: it ran on a new, empty volume
        new_claims = list((fed.workdir / "kubelet-hub").glob(f"volumes/pvc/default/{names['state']}-*"))
        assert len(new_claims) == 2, new_claims
        await _cleaned_up(fed, api, names)
        assert (await api.get(Ref(API_VERSION, "federatedrounds", "default", "lost")))["status"]["phase"] == "Failed"


@pytest.mark.timeout(900)
async def test_a_superlink_restarted_on_its_kept_volume_still_knows_the_run(emulator, tmp_path, monkeypatch):
    stops: list[str] = []
    stop = FlowerCLI.stop

    async def counted(self, key, address, run_id, **kwargs):
        stops.append(run_id)
        return await stop(self, key, address, run_id, **kwargs)
    monkeypatch.setattr(FlowerCLI, "stop", counted)
    async with federation(str(emulator.url), tmp_path, ["rouen", "lyon"], images=20) as fed:
        api = fed.api
        obj, run_id, names = await _running(fed, api, "kept")

        async def trained_once():       # the run is under way in the ServerApp, not only submitted
            obj = await api.get(Ref(API_VERSION, "federatedrounds", "default", "kept"))
            return obj if int((obj.get("status") or {}).get("roundsCompleted") or 0) >= 1 else None
        await eventually(trained_once, timeout=300, interval=0.5)
        await api.delete(Ref("v1", "pods", "default", names["pod"]))     # the volume stays

        done = await eventually(lambda: _ended(api, "kept"), timeout=300, interval=0.5)
        st, f = done["status"], cond(done, "Failed")
        assert st["phase"] == "Failed" and f["reason"] == "AggregatorFailed", (st, f)
        # Flower's words: the restarted SuperLink marks the run failed once its ServerApp's heartbeat is missed
        assert f"Flower run {run_id} finished:failed" in f["message"] and "is lost" not in f["message"], f
        assert "heartbeat" in f["message"], f
        assert st["runId"] == run_id
        assert stops == [], "a flwr stop was sent for a run that had ended"
        # the same volume: the new SuperLink read the old state
        claims = list((fed.workdir / "kubelet-hub").glob(f"volumes/pvc/default/{names['state']}-*"))
        assert len(claims) == 1, claims
        await _cleaned_up(fed, api, names)


async def _running(fed, api, name: str):
    """A round with many server rounds, once its run id is recorded: (round, run id, names)."""
    await api.create(ROUNDS, round_manifest(name, sites=2, rounds=50, activeDeadlineSeconds=1800))

    async def recorded():
        obj = await api.get(Ref(API_VERSION, "federatedrounds", "default", name))
        st = obj.get("status") or {}
        return obj if st.get("runId") or st.get("phase") == "Failed" else None
    obj = await eventually(recorded, timeout=300, interval=0.5)
    assert obj["status"]["phase"] == "Running" and obj["status"]["runId"], obj["status"]
    names = agg.names(obj)
    assert list((fed.workdir / "kubelet-hub").glob(f"volumes/pvc/default/{names['state']}-*/state.db"))
    return obj, obj["status"]["runId"], names


async def _ended(api, name: str):
    obj = await api.get(Ref(API_VERSION, "federatedrounds", "default", name))
    return obj if (obj.get("status") or {}).get("phase") in ("Failed", "Succeeded") else None


async def _cleaned_up(fed, api, names) -> None:
    """Cleaned up as any failed round: SuperLink, its Service, state volume and TLS Secret,
    assignments, training pods, and no process left."""
    async def nothing_left():
        pods = [p for ns in ("default", WORK_NAMESPACE) for p in await api.list(Ref("v1", "pods", ns))]
        ras = await api.list(Ref(API_VERSION, "roundassignments"))
        claims = [c for c in await api.list(Ref("v1", "persistentvolumeclaims", "default"))
                  if c["metadata"]["name"] == names["state"]]
        left = pods + ras + claims + await api.list(Ref("v1", "services", "default"))
        return (not left and not fed.processes()) or None
    await eventually(nothing_left, timeout=120, interval=0.5)
