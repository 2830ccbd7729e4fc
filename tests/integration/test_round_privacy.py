"""Privacy through the operator (issue 11 items 2 and 11, issue 8 item 2), on the emulator with
real Flower processes: the hub passes registered examples and the update-norm bound, each
site's agent gives its pods the hospital's budget and a ledger on the site's own storage, a
site whose budget would be exceeded refuses (its assignment says PrivacyBudgetExhausted, the
round says so too), and the ClientApp's per-round metrics reach the assignments' status."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import time

import pytest

from fedcare.api.resources import API_VERSION
from fedcare.integrations.kube import Ref
from fedcare.sandbox.federation import federation, round_manifest

pytestmark = pytest.mark.skipif(importlib.util.find_spec("fedcare_workloads") is None,
                                reason="needs the workloads package: pip install -c constraints.txt -e ./workloads")

ROUNDS = Ref(API_VERSION, "federatedrounds", "default")
DP = {"differentialPrivacy": {"enabled": True, "noiseMultiplier": "1.5", "maxGradNorm": "1.0", "delta": "1e-5"}}


def cond(obj, ctype):
    return next((c for c in (obj or {}).get("status", {}).get("conditions", []) if c["type"] == ctype), {})


def ledger(fed, site):
    path = fed.ledger_dir(site) / f"{site}.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


async def follow(api, name, timeout):
    """Poll the round until it ends; keep every assignment status seen (the hub deletes them at the end)."""
    seen: dict[str, dict] = {}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for ra in await api.list(Ref(API_VERSION, "roundassignments")):
            if ra["metadata"]["labels"].get("fedcare.io/round") == name and ra.get("status"):
                site = ra["spec"]["nodeName"]
                st = ra["status"]
                # keep the most telling status: a Failed one, else the latest with metrics
                if seen.get(site, {}).get("phase") != "Failed" and (st.get("phase") == "Failed" or st.get("metrics")
                                                                   or site not in seen):
                    seen[site] = st
        obj = await api.get(Ref(API_VERSION, "federatedrounds", "default", name))
        if obj.get("status", {}).get("phase") in ("Succeeded", "Failed"):
            return obj, seen
        await asyncio.sleep(0.5)
    raise AssertionError(f"round {name} did not end within {timeout}s: {obj.get('status')}")


@pytest.mark.timeout(1500)
async def test_the_hospitals_budget_holds_through_the_operator(emulator, tmp_path):
    # two sites (a 2-core machine): rouen (registered 10 examples, budget 1000), nice (budget 0.5)
    async with federation(str(emulator.url), tmp_path, ["rouen", "nice"], images=40,
                          site_budgets={"rouen": 1000.0, "nice": 0.5}, site_sizes={"rouen": 10}) as fed:
        api = fed.api
        # quorum 1: the round goes on without the refusing site (2 server rounds: nice, if it connects after
        # round 1 started, is sampled in round 2)
        body = round_manifest("dp1", sites=2, min_available=1, rounds=2, privacy=DP)
        body["spec"]["roundTimeoutSeconds"] = 600      # cold ClientApp starts on a loaded 2-core machine
        body["spec"]["strategy"]["maxUpdateNorm"] = "50"
        body["spec"]["strategy"]["config"]["max-update-norm"] = "1e9"          # reserved: ignored
        body["spec"]["strategy"]["config"]["registered-examples"] = "rouen=99999"  # reserved: ignored
        await api.create(ROUNDS, body)
        done, seen = await follow(api, "dp1", 900)
        st = done["status"]
        assert st["phase"] == "Succeeded", (st, cond(done, "Failed"))

        # the site whose budget would be exceeded refused: nothing spent, its assignment and the round say so
        nice = seen["nice"]
        assert nice["phase"] == "Failed", nice
        assert cond({"status": nice}, "Ready")["reason"] == "PrivacyBudgetExhausted"
        assert "privacy budget would be exceeded" in nice["message"]
        entries = ledger(fed, "nice")
        assert [e["kind"] for e in entries] == ["budget"] and entries[0]["epsilon"] == 0.5
        part = {p["node"]: p for p in st["participants"]}
        assert part["nice"]["state"] in ("Failed", "Dropped") and "PrivacyBudgetExhausted" in part["nice"]["reason"]
        nice_rounds = [s for r in st["serverRounds"] for s in r["sites"] if s["site"] == "nice"]
        assert nice_rounds and all(s["status"] != "ok" for s in nice_rounds)
        assert any(s["status"] == "failed" and "PrivacyBudgetExhausted" in s["reason"] for s in nice_rounds), \
            nice_rounds
        # the other trained with DP, spending from the ledger on its own storage, with the hospital's budget
        for site in ("rouen",):
            entries = ledger(fed, site)
            assert [e["kind"] for e in entries] == ["budget", "spend", "spend"], entries
            assert entries[0]["epsilon"] == 1000.0 and entries[1]["noise_multiplier"] == 1.5
            assert part[site]["state"] == "Finished" and float(part[site]["epsilon"]) > 0
        # registered examples (HospitalNode dataset.size) cap rouen's weight (28 trained); the spec could not
        # override it
        assert all(s["examples"] == 10 for r in st["serverRounds"] for s in r["sites"] if s["site"] == "rouen")
        card = json.loads((fed.artifact_dir / st["result"]["storageUri"].removeprefix("pvc://fedcare-artifacts/"))
                          .with_name("model-card.json").read_text())
        text = json.dumps(card)
        assert '"max_update_norm": 50.0' in text and '"rouen": 10' in text and '"nice": 40' in text

        # the ClientApp's per-round metrics reached the assignments: aggregate-safe values only
        for site in ("rouen",):
            ra = seen[site]
            assert ra["lastServerRound"] >= 1 and ra["numExamples"] == 28, ra
            names = {m["name"] for m in ra["metrics"]}
            assert {"train-loss", "val-accuracy", "dp-epsilon-total"} <= names <= {
                "train-loss", "val-loss", "val-accuracy", "val-auroc", "dp-epsilon-total", "dp-epsilon-dataset"}
            assert all(len(m["value"]) <= 10 and float(m["value"]) == float(m["value"]) for m in ra["metrics"]
                       if m["value"] != "nan")
            assert "/" not in json.dumps(ra["metrics"])

        # a round that needs the refusing site cannot reach quorum: it fails with the site's reason
        await api.create(ROUNDS, round_manifest("dp2", sites=2, min_available=2, rounds=1, privacy=DP))
        failed, _ = await follow(api, "dp2", 600)
        assert failed["status"]["phase"] == "Failed"
        assert cond(failed, "Failed")["reason"] == "PrivacyBudgetExhausted", cond(failed, "Failed")
        assert [e["kind"] for e in ledger(fed, "nice")] == ["budget"]     # still nothing spent
