"""The hub's state as Prometheus gauges, computed when Prometheus scrapes.

Sites by condition, per-site conditions, heartbeat age and GPUs come from what the hub
already holds in memory (the availability monitor's latest copy of every HospitalNode and the
heartbeat tracker); rounds and releases by phase from a small index the watch events keep.
Nothing here calls the API, so a scrape costs no API call and works during an API outage.
A scrape runs on the metrics server's thread: it only reads (copies) the hub's dicts.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from ..api.federated_round import RoundPhase
from ..api.model_release import ReleasePhase
from ..metrics import label_value

CONDITIONS = ("Ready", "Available", "GPUReady", "Enrolled")
STATUSES = ("True", "False", "Unknown")
#: The phase label of an object not reconciled yet (or with a phase this version does not know):
#: Prometheus drops empty labels, so it cannot be ''.
UNKNOWN_PHASE = "Unknown"


class PhaseIndex:
    """namespace/name → phase of every object of one kind, fed by watch events."""

    def __init__(self, phases: tuple[str, ...]):
        self.phases = phases
        self._phase: dict[str, str] = {}

    def observe(self, body: dict[str, Any], event_type: str | None) -> None:
        md = body.get("metadata") or {}
        key = f"{md.get('namespace')}/{md.get('name')}"
        if event_type == "DELETED":
            self._phase.pop(key, None)
        else:
            self._phase[key] = str((body.get("status") or {}).get("phase") or UNKNOWN_PHASE)

    def counts(self) -> dict[str, int]:
        counts = dict.fromkeys(self.phases, 0)
        for phase in list(self._phase.values()):
            counts[phase if phase in counts else UNKNOWN_PHASE] += 1
        return counts


def round_index() -> PhaseIndex:
    return PhaseIndex((UNKNOWN_PHASE,) + tuple(p.value for p in RoundPhase))


def release_index() -> PhaseIndex:
    return PhaseIndex((UNKNOWN_PHASE,) + tuple(p.value for p in ReleasePhase))


def _conditions(body: dict[str, Any]) -> dict[str, str]:
    out = {}
    for cond in (body.get("status") or {}).get("conditions") or []:
        if isinstance(cond, dict) and cond.get("type") in CONDITIONS:
            status = cond.get("status")
            out[cond["type"]] = status if status in STATUSES else "Unknown"
    return out


class HubStateCollector(Collector):
    def __init__(self, ctx: Any):
        self.ctx = ctx

    def describe(self) -> Iterator[GaugeMetricFamily]:
        return iter(self._families())

    def _families(self) -> tuple[GaugeMetricFamily, ...]:
        return (
            GaugeMetricFamily("fedcare_sites", "HospitalNodes by condition and status (a missing condition counts "
                              "as Unknown).", labels=["condition", "status"]),
            GaugeMetricFamily("fedcare_site_condition", "1 for the status each site's condition has, 0 for the "
                              "others (as kube-state-metrics).", labels=["site", "condition", "status"]),
            GaugeMetricFamily("fedcare_site_heartbeat_age_seconds", "Seconds since the hub last saw the site's "
                              "Lease renewed (since the hub started, when none was seen since).", labels=["site"]),
            GaugeMetricFamily("fedcare_site_gpus", "GPUs the site's agent last reported, by state (healthy, total, "
                              "free).", labels=["site", "state"]),
            GaugeMetricFamily("fedcare_rounds", "FederatedRounds by phase (Unknown before the first reconcile).",
                              labels=["phase"]),
            GaugeMetricFamily("fedcare_releases", "ModelReleases by phase (Unknown before the first reconcile).",
                              labels=["phase"]),
        )

    def collect(self) -> Iterator[GaugeMetricFamily]:
        sites, per_site, age, gpus, rounds, releases = self._families()
        ctx = self.ctx
        counts = {(cond, status): 0 for cond in CONDITIONS for status in STATUSES}
        tracker = ctx.heartbeats
        now = tracker.clock()
        for view in list(ctx.availability.sites.values()):
            body = view.body or {}
            site = label_value(view.name)
            have = _conditions(body)
            for cond in CONDITIONS:
                status = have.get(cond, "Unknown")
                counts[(cond, status)] += 1
                for candidate in STATUSES:
                    per_site.add_metric([site, cond, candidate], 1.0 if candidate == status else 0.0)
            seen = tracker.last_seen(view.name)
            age.add_metric([site], max(0.0, now - (seen if seen is not None else tracker.started)))
            cap = (body.get("status") or {}).get("capacity") or {}
            if cap:
                for state, key in (("healthy", "gpusHealthy"), ("total", "gpusTotal"), ("free", "gpusFree")):
                    gpus.add_metric([site, state], float(cap.get(key) or 0))
        for (cond, status), n in counts.items():
            sites.add_metric([cond, status], n)
        for family, index in ((rounds, ctx.rounds), (releases, ctx.releases)):
            for phase, n in index.counts().items():
                family.add_metric([phase], n)
        return iter((sites, per_site, age, gpus, rounds, releases))
