"""Stragglers through the operator (issue 8 items 3 and 7), on the emulator with real Flower
processes: a site that misses a server round's timeout is dropped for that round while quorum
holds, and the round's status says so, per site and per server round."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import signal
import time

import pytest

from fedcare.api.resources import API_VERSION
from fedcare.hub import round_progress
from fedcare.integrations.kube import Ref
from fedcare.sandbox.federation import federation, round_manifest

pytestmark = pytest.mark.skipif(importlib.util.find_spec("fedcare_workloads") is None,
                                reason="needs the workloads package: pip install -c constraints.txt -e ./workloads")

ROUNDS = Ref(API_VERSION, "federatedrounds", "default")


def aggregated(folder, server_round: int) -> bool:
    try:
        doc = json.loads((folder / "provenance.json").read_text())
    except (OSError, ValueError):
        return False
    return any(e.get("round") == server_round and e.get("global_model_sha256") for e in doc.get("rounds") or [])


@pytest.mark.timeout(1200)
async def test_a_site_that_misses_the_round_timeout_is_dropped_for_that_round(emulator, tmp_path):
    async with federation(str(emulator.url), tmp_path, ["rouen", "lyon", "nice"], images=40) as fed:
        api = fed.api
        body = round_manifest("slow", sites=3, min_available=2, rounds=2)
        # generous: round 1 includes every ClientApp's first start on a loaded 2-core machine
        body["spec"]["roundTimeoutSeconds"] = 240
        obj = await api.create(ROUNDS, body)
        folder = round_progress.out_dir(str(fed.artifact_dir), "default", "slow", obj["metadata"]["uid"], 1)
        # round 1 with everyone; the moment it is aggregated, nice's SuperNode (and its ClientApp)
        # stops answering: it has been sent round 2's train message and will not reply in time
        deadline = time.monotonic() + 900
        while not aggregated(folder, 1):
            assert time.monotonic() < deadline, "round 1 was never aggregated"
            await asyncio.sleep(0.05)
        pgid = next(iter(fed.handles["nice"].kubelet.processes))
        os.killpg(pgid, signal.SIGSTOP)
        frozen = time.monotonic()
        try:
            while not aggregated(folder, 2):
                assert time.monotonic() < deadline, "round 2 was never aggregated"
                await asyncio.sleep(0.5)
            # round 2 waited for the straggler: up to its timeout, or until the SuperLink saw its node
            # stop reporting (flwr: 2 missed heartbeats of ~30 s), whichever came first
            assert time.monotonic() - frozen >= 25
        finally:
            os.killpg(pgid, signal.SIGCONT)

        async def ended():
            o = await api.get(Ref(API_VERSION, "federatedrounds", "default", "slow"))
            return o if o.get("status", {}).get("phase") in ("Succeeded", "Failed") else None
        from tests.support.harness import eventually
        done = await eventually(ended, timeout=300, interval=0.5)
        st = done["status"]
        assert st["phase"] == "Succeeded", st
        r1, r2 = ({s["site"]: s for s in r["sites"]} for r in st["serverRounds"])
        assert {s: r1[s]["status"] for s in r1} == {"rouen": "ok", "lyon": "ok", "nice": "ok"}
        assert r2["rouen"]["status"] == r2["lyon"]["status"] == "ok"
        assert r2["nice"]["status"] == "dropped", r2["nice"]
        assert "round-timeout" in r2["nice"]["reason"] or "Node Unavailable" in r2["nice"]["reason"]
        assert r2["nice"]["examples"] == 0 and st["serverRounds"][1]["examples"] == r2["rouen"]["examples"] + \
            r2["lyon"]["examples"]
        part = {p["node"]: p for p in st["participants"]}
        assert part["nice"]["lastRound"] == 1 and part["rouen"]["lastRound"] == part["lyon"]["lastRound"] == 2
