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


#: Per-site condition encoding: one series per (site, condition) instead of three.
CONDITION_VALUE = {"True": "1.0", "False": "0.0", "Unknown": "-1.0"}
SITE_CONDITIONS = ("Ready", "Available", "GPUReady")
SITE_FAMILIES = (
    ("fedcare_site_condition", "Each site's condition: 1 True, 0 False, -1 Unknown (or not written yet)."),
    ("fedcare_site_heartbeat_age_seconds", "Seconds since the hub last saw the site's Lease renewed (since the hub "
                                           "started, when none was seen since)."),
    ("fedcare_site_gpus", "GPUs in the site's last inventory report, by state (healthy, total)."),
)


def _escape(value: str) -> str:
    """A label value in the text format: backslash, double quote and newline escaped."""
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


class HubStateCollector(Collector):
    """Aggregates through prometheus-client; the per-site families (the only ones that grow with
    the federation: 6 series per site) as pre-rendered text from ``site_exposition``.

    Why by hand: prometheus-client renders each sample through generic label validation and
    escaping (~10-90 µs a sample here); at 1,000 sites that made a scrape cost 0.5-1.5 s of hub
    CPU. The site's escaped label prefix is cached, so a scrape only formats the values.
    """

    def __init__(self, ctx: Any):
        self.ctx = ctx
        self._prefix: dict[str, str] = {}

    def describe(self) -> Iterator[GaugeMetricFamily]:
        return iter(self._families())

    def _families(self) -> tuple[GaugeMetricFamily, ...]:
        return (
            GaugeMetricFamily("fedcare_sites", "HospitalNodes by condition and status (a missing condition counts "
                              "as Unknown).", labels=["condition", "status"]),
            GaugeMetricFamily("fedcare_rounds", "FederatedRounds by phase (Unknown before the first reconcile).",
                              labels=["phase"]),
            GaugeMetricFamily("fedcare_releases", "ModelReleases by phase (Unknown before the first reconcile).",
                              labels=["phase"]),
        )

    def collect(self) -> Iterator[GaugeMetricFamily]:
        sites, rounds, releases = self._families()
        counts = {(cond, status): 0 for cond in CONDITIONS for status in STATUSES}
        for view in list(self.ctx.availability.sites.values()):
            have = _conditions(view.body or {})
            for cond in CONDITIONS:
                counts[(cond, have.get(cond, "Unknown"))] += 1
        for (cond, status), n in counts.items():
            sites.add_metric([cond, status], n)
        for family, index in ((rounds, self.ctx.rounds), (releases, self.ctx.releases)):
            for phase, n in index.counts().items():
                family.add_metric([phase], n)
        return iter((sites, rounds, releases))

    def site_exposition(self) -> bytes:
        """The per-site families in text format 0.0.4."""
        tracker = self.ctx.heartbeats
        now = tracker.clock()
        cond_lines: list[str] = []
        age_lines: list[str] = []
        gpu_lines: list[str] = []
        prefixes: dict[str, str] = {}
        for view in list(self.ctx.availability.sites.values()):
            prefix = self._prefix.get(view.name)
            if prefix is None:
                prefix = f'{{site="{_escape(label_value(view.name))}"'
            prefixes[view.name] = prefix
            body = view.body or {}
            have = _conditions(body)
            for cond in SITE_CONDITIONS:
                cond_lines.append(f'fedcare_site_condition{prefix},condition="{cond}"}} '
                                  f'{CONDITION_VALUE[have.get(cond, "Unknown")]}\n')
            seen = tracker.last_seen(view.name)
            age = max(0.0, now - (seen if seen is not None else tracker.started))
            age_lines.append(f"fedcare_site_heartbeat_age_seconds{prefix}}} {age:.3f}\n")
            cap = (body.get("status") or {}).get("capacity") or {}
            if cap:
                gpu_lines.append(f'fedcare_site_gpus{prefix},state="healthy"}} {float(cap.get("gpusHealthy") or 0)}\n')
                gpu_lines.append(f'fedcare_site_gpus{prefix},state="total"}} {float(cap.get("gpusTotal") or 0)}\n')
        self._prefix = prefixes            # forget sites that are gone
        parts = []
        for (name, help_text), lines in zip(SITE_FAMILIES, (cond_lines, age_lines, gpu_lines), strict=True):
            parts.append(f"# HELP {name} {help_text}\n# TYPE {name} gauge\n")
            parts.extend(lines)
        return "".join(parts).encode()
