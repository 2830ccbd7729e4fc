"""`fedcare status` and kstatus health through what the sandbox runs today.

The hub and one site agent on the emulated API; a second site whose agent never connects.
Each object's kstatus (and so Argo CD's and Flux's health) is asserted at every step the code
has without training. The kstatus of every kind through a real round (Scheduling, Running,
Succeeded, Failed; assignments answered and running; a release verified, anchored, revoked)
is asserted in test_round_observability.py.
"""

from __future__ import annotations

import asyncio
import io
import json

from rich.console import Console

from fedcare import status_view
from fedcare.api.resources import API_VERSION, site_namespace
from fedcare.health import kstatus
from fedcare.integrations.kube import Ref
from fedcare.sandbox.kubeconfig import write_kubeconfig
from tests.integration.test_metrics import NODES, _assign, example, node_body, site_agent
from tests.support.fake_nvml import FakeNVML, gpus
from tests.support.harness import eventually

ROUNDS = Ref(API_VERSION, "federatedrounds", "default")
RELEASES = Ref(API_VERSION, "modelreleases", "default")
#: (what happened, expected kstatus of the FederatedRound). Extend with execution's phases.
ROUND_STEPS = [("admitted, waiting for the scheduler", "InProgress")]


async def health_of(api, ref: Ref) -> str:
    return kstatus(await api.get(ref)).status


async def health_is(api, ref: Ref, want: str):
    obj = await api.get_or_none(ref)
    return obj if obj and kstatus(obj).status == want else None


async def test_kstatus_at_each_step_and_status_shows_the_federation(emulator, hub, api, tmp_path, capsys):
    rouen, lyon = Ref(API_VERSION, "hospitalnodes", None, "rouen"), Ref(API_VERSION, "hospitalnodes", None, "lyon")
    kubeconfig = str(write_kubeconfig(emulator.url, tmp_path / "kubeconfig"))
    async with hub():
        created = await api.create(NODES, node_body("rouen"))
        assert kstatus(created).status == "InProgress"                 # not observed by the hub yet
        never = node_body("lyon")
        never["spec"]["leaseDurationSeconds"] = 600      # its agent never connects: AgentNotConnected all along
        await api.create(NODES, never)
        await eventually(lambda: _enrolled(api, rouen), timeout=15)
        assert await health_of(api, rouen) == "InProgress"              # enrolled, agent not connected
        async with site_agent(emulator, "rouen", FakeNVML(gpus(2))) as agent:
            await eventually(lambda: health_is(api, rouen, "Current"), timeout=20)
            rnd = await api.create(ROUNDS, example("federatedround-ultrasound.yaml"))
            assert kstatus(rnd).status == "InProgress"
            rnd_ref = Ref(API_VERSION, "federatedrounds", "default", rnd["metadata"]["name"])
            await eventually(lambda: _observed(api, rnd_ref), timeout=15)
            for _, want in ROUND_STEPS:
                assert await health_of(api, rnd_ref) == want
            rel = await api.create(RELEASES, example("modelrelease-ultrasound.yaml"))
            rel_ref = Ref(API_VERSION, "modelreleases", "default", rel["metadata"]["name"])
            await eventually(lambda: _observed(api, rel_ref), timeout=15)
            assert await health_of(api, rel_ref) == "InProgress"         # awaiting anchoring
            await _assign(api, "rouen", gpus=1)
            await _assign(api, "lyon", gpus=1, wait=False)                         # lyon has no agent: unanswered
            ra = Ref(API_VERSION, "roundassignments", site_namespace("rouen"), "r-rouen")
            assert await health_of(api, ra) == "Current"                  # accepted

            # a spec change is InProgress until the hub observes it, then Current again
            changed = await api.patch(rouen, {"spec": {"cordoned": True}})
            assert changed["metadata"]["generation"] == 2 and kstatus(changed).status == "InProgress"
            await eventually(lambda: health_is(api, rouen, "Current"), timeout=15)

            # fedcare status -o json, through a kubeconfig
            assert await status_view.run(kubeconfig=kubeconfig, context=None, output="json", watch=False,
                                         interval=1) == 0
            snap = json.loads(capsys.readouterr().out)
            sites = {s["name"]: s for s in snap["sites"]}
            assert sites["rouen"]["ready"] == "True" and sites["rouen"]["health"] == "Current"
            assert sites["rouen"]["phase"] == "Cordoned"
            assert sites["rouen"]["gpus"] == {"healthy": 2, "total": 2, "free": 2}
            assert 0 <= sites["rouen"]["heartbeatAgeSeconds"] < 30
            assert sites["lyon"]["available"] == "Unknown" and sites["lyon"]["health"] == "InProgress"
            [r] = snap["rounds"]
            assert r["phase"] == "Pending" and r["rounds"] == rnd["spec"]["rounds"] and r["health"] == "InProgress"
            assert {(s["site"], s["state"]) for s in r["sites"]} == {("rouen", "Accepted"), ("lyon", "Unanswered")}
            [m] = snap["releases"]
            assert m["phase"] == "Pending" and m["health"] == "InProgress" and m["chain"]

            # the rich tables, and --watch (two refreshes)
            out = io.StringIO()
            console = Console(file=out, width=220, force_terminal=False)
            assert await status_view.run(kubeconfig=kubeconfig, context=None, output="table", watch=True,
                                         interval=0.1, console=console, iterations=2) == 0
            text = out.getvalue()
            for needle in ("Sites (1/2 ready)", "rouen", "lyon", "2/2 (2 free)", "Rounds (1)", "0/",
                           "rouen=Accepted", "Releases (1)", "InProgress", "Current"):
                assert needle in text, (needle, text)
        # the agent stopped: after one lease duration (10 s) the site is lost → Failed (Degraded)
        lost = await eventually(lambda: health_is(api, rouen, "Failed"), timeout=25)
        assert kstatus(lost).argo == "Degraded"


async def _enrolled(api, ref):
    obj = await api.get_or_none(ref)
    return obj and any(c["type"] == "Enrolled" and c["status"] == "True"
                       for c in (obj.get("status") or {}).get("conditions", []))


async def _observed(api, ref):
    obj = await api.get_or_none(ref)
    return obj and (obj.get("status") or {}).get("observedGeneration") == obj["metadata"]["generation"]


async def test_status_says_what_is_wrong_with_a_kubeconfig_or_an_unreachable_api(tmp_path, capsys):
    missing = tmp_path / "nope"
    assert await status_view.run(kubeconfig=str(missing), context=None, output="table", watch=False,
                                 interval=1) == 2
    assert f"cannot load the kubeconfig {missing}" in capsys.readouterr().err
    dead = write_kubeconfig("http://127.0.0.1:9", tmp_path / "dead")        # nothing listens on port 9
    assert await asyncio.wait_for(status_view.run(kubeconfig=str(dead), context=None, output="json",
                                                  watch=False, interval=1), 60) == 1
    assert "the API server did not answer" in capsys.readouterr().err
