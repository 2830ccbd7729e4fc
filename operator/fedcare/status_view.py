"""``fedcare status``: the federation at a glance (rich tables), ``--watch``, ``-o json``.

Reads HospitalNodes, FederatedRounds, RoundAssignments and ModelReleases through any
kubeconfig (four LIST calls, with the client's timeout and bounded retry) and shows sites with
readiness, heartbeat age and GPUs; rounds with phase, server round i/n and per-site state;
releases with stage and chain status; and each object's kstatus health (``fedcare.health``).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import sys
from typing import Any

from rich.console import Console, Group
from rich.table import Table
from rich.text import Text

from .api.resources import API_VERSION, FEDERATED_ROUNDS, HOSPITAL_NODES, MODEL_RELEASES, ROUND_ASSIGNMENTS
from .health import kstatus
from .integrations.kube import Kube, KubeError, Ref, RetryPolicy

POLICY = RetryPolicy(attempts=3, base_delay=0.2, max_delay=1.0, timeout=10.0)
COLOURS = {"True": "green", "False": "red", "Unknown": "yellow", "Current": "green", "InProgress": "yellow",
           "Failed": "red", "Terminating": "magenta"}


def _cond(obj: dict[str, Any], ctype: str) -> dict[str, Any]:
    return next((c for c in (obj.get("status") or {}).get("conditions") or [] if c.get("type") == ctype), {})


def _parse_time(value: Any) -> dt.datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        return dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


def _site(node: dict[str, Any], now: dt.datetime) -> dict[str, Any]:
    st = node.get("status") or {}
    beat = _parse_time(st.get("lastHeartbeatTime"))
    cap = st.get("capacity") or {}
    health = kstatus(node)
    return {"name": node["metadata"]["name"], "phase": st.get("phase") or "",
            "ready": _cond(node, "Ready").get("status", "Unknown"),
            "available": _cond(node, "Available").get("status", "Unknown"),
            "gpuReady": _cond(node, "GPUReady").get("status", "Unknown"),
            "heartbeatAgeSeconds": round((now - beat).total_seconds(), 1) if beat else None,
            "gpus": {"healthy": cap.get("gpusHealthy", 0), "total": cap.get("gpusTotal", 0),
                     "free": cap.get("gpusFree", 0)} if cap else None,
            "reason": _cond(node, "Ready").get("reason", ""), "message": _cond(node, "Ready").get("message", ""),
            "health": health.status}


def _round(obj: dict[str, Any], assignments: list[dict[str, Any]]) -> dict[str, Any]:
    md, st, spec = obj["metadata"], obj.get("status") or {}, obj.get("spec") or {}
    sites = [{"site": p.get("node", ""), "state": p.get("state", ""), "lastRound": p.get("lastRound", 0)}
             for p in st.get("participants") or []]
    if not sites:          # before the scheduler reports participants: the sites' own answers
        for ra in assignments:
            ref = (ra.get("spec") or {}).get("roundRef") or {}
            if ref.get("name") == md["name"] and ref.get("namespace", md.get("namespace")) == md.get("namespace"):
                sites.append({"site": (ra.get("spec") or {}).get("nodeName", ""),
                              "state": (ra.get("status") or {}).get("phase") or "Unanswered", "lastRound": 0})
    return {"namespace": md.get("namespace", ""), "name": md["name"], "phase": st.get("phase") or "",
            "currentRound": st.get("currentRound", 0), "rounds": spec.get("rounds"),
            "roundsCompleted": st.get("roundsCompleted", 0), "eligibleSites": st.get("eligibleSites"),
            "sites": sorted(sites, key=lambda s: s["site"]), "reason": _cond(obj, "Ready").get("reason", ""),
            "message": _cond(obj, "Ready").get("message", ""), "health": kstatus(obj).status}


def _release(obj: dict[str, Any]) -> dict[str, Any]:
    md, st, spec = obj["metadata"], obj.get("status") or {}, obj.get("spec") or {}
    anchor = st.get("anchor") or {}
    if anchor.get("txHash"):
        chain = f"tx {anchor['txHash'][:12]}…, {anchor.get('confirmations', 0)} confirmations"
    elif spec.get("anchor"):
        chain = "not anchored yet"
    else:
        chain = "no anchoring requested"
    return {"namespace": md.get("namespace", ""), "name": md["name"], "model": spec.get("modelName", ""),
            "version": spec.get("version", ""), "stage": spec.get("stage", ""), "phase": st.get("phase") or "",
            "chain": chain, "revoked": bool((spec.get("revocation") or {}).get("revoked")),
            "reason": _cond(obj, "Ready").get("reason", ""), "health": kstatus(obj).status}


async def collect(kube: Kube, *, now: dt.datetime | None = None) -> dict[str, Any]:
    """One snapshot of the federation (JSON-able). Raises KubeError."""
    now = now or dt.datetime.now(dt.UTC)
    nodes, rounds, assignments, releases = await asyncio.gather(
        *(kube.list(Ref(API_VERSION, res.plural)) for res in (HOSPITAL_NODES, FEDERATED_ROUNDS, ROUND_ASSIGNMENTS,
                                                                MODEL_RELEASES)))
    by_name = lambda o: (o["metadata"].get("namespace", ""), o["metadata"]["name"])  # noqa: E731
    return {"time": now.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "sites": [_site(n, now) for n in sorted(nodes, key=by_name)],
            "rounds": [_round(r, assignments) for r in sorted(rounds, key=by_name)],
            "releases": [_release(r) for r in sorted(releases, key=by_name)]}


def _c(value: Any) -> Text:
    text = "" if value is None else str(value)
    return Text(text, style=COLOURS.get(text, ""))


def render(snap: dict[str, Any]) -> Group:
    sites = Table(title=f"Sites ({sum(s['ready'] == 'True' for s in snap['sites'])}/{len(snap['sites'])} ready)",
                  title_justify="left")
    for col in ("SITE", "PHASE", "READY", "AVAILABLE", "GPU", "HEARTBEAT", "GPUS", "HEALTH", "WHY"):
        sites.add_column(col, overflow="fold")
    for s in snap["sites"]:
        age = "-" if s["heartbeatAgeSeconds"] is None else f"{s['heartbeatAgeSeconds']:.0f}s ago"
        gpus = "-" if not s["gpus"] else f"{s['gpus']['healthy']}/{s['gpus']['total']} ({s['gpus']['free']} free)"
        why = "" if s["ready"] == "True" else f"{s['reason']}: {s['message']}"[:80]
        sites.add_row(s["name"], s["phase"], _c(s["ready"]), _c(s["available"]), _c(s["gpuReady"]), age, gpus,
                      _c(s["health"]), why)
    rounds = Table(title=f"Rounds ({len(snap['rounds'])})", title_justify="left")
    for col in ("ROUND", "PHASE", "SERVER ROUND", "ELIGIBLE", "SITES", "HEALTH", "WHY"):
        rounds.add_column(col, overflow="fold")
    for r in snap["rounds"]:
        per_site = ", ".join(f"{s['site']}={s['state']}" for s in r["sites"]) or "-"
        rounds.add_row(f"{r['namespace']}/{r['name']}", r["phase"], f"{r['currentRound']}/{r['rounds']}",
                       str(r["eligibleSites"] if r["eligibleSites"] is not None else "-"), per_site,
                       _c(r["health"]), r["reason"])
    releases = Table(title=f"Releases ({len(snap['releases'])})", title_justify="left")
    for col in ("RELEASE", "MODEL", "STAGE", "PHASE", "CHAIN", "HEALTH"):
        releases.add_column(col, overflow="fold")
    for r in snap["releases"]:
        releases.add_row(f"{r['namespace']}/{r['name']}", f"{r['model']} {r['version']}",
                         r["stage"] + (" (revoked)" if r["revoked"] else ""), r["phase"], r["chain"], _c(r["health"]))
    return Group(Text(f"fedcare federation at {snap['time']}", style="bold"), sites, rounds, releases)


async def _client(kubeconfig: str | None, context: str | None) -> Kube:
    return await Kube.from_kubeconfig(kubeconfig, context=context, policy=POLICY)


async def run(*, kubeconfig: str | None, context: str | None, output: str, watch: bool, interval: float,
              console: Console | None = None, iterations: int | None = None) -> int:
    console = console or Console()
    try:
        kube = await _client(kubeconfig, context)
    except Exception as err:  # noqa: BLE001 - kubeconfig problems come in many types; say which file
        print(f"fedcare status: cannot load the kubeconfig {kubeconfig or '(default)'}"
              f"{f' context {context}' if context else ''}: {err}", file=sys.stderr)
        return 2
    try:
        if not watch:
            try:
                snap = await collect(kube)
            except KubeError as err:
                print(f"fedcare status: the API server did not answer: {err}", file=sys.stderr)
                return 1
            if output == "json":
                print(json.dumps(snap, indent=2))
            else:
                console.print(render(snap))
            return 0
        if output == "json":                 # one JSON object per line, per refresh
            return await _watch_json(kube, interval, iterations)
        from rich.live import Live

        done = 0
        with Live(console=console, auto_refresh=False) as live:
            while iterations is None or done < iterations:
                try:
                    view: Any = render(await collect(kube))
                except KubeError as err:      # keep watching: the API may come back
                    view = Text(f"the API server did not answer ({err}); retrying in {interval:.0f}s", style="red")
                live.update(view, refresh=True)
                done += 1
                if iterations is None or done < iterations:
                    await asyncio.sleep(interval)
        return 0
    finally:
        await kube.close()


async def _watch_json(kube: Kube, interval: float, iterations: int | None) -> int:
    done = 0
    while iterations is None or done < iterations:
        try:
            print(json.dumps(await collect(kube)), flush=True)
        except KubeError as err:
            print(json.dumps({"error": f"the API server did not answer: {err}"}), flush=True)
        done += 1
        if iterations is None or done < iterations:
            await asyncio.sleep(interval)
    return 0
