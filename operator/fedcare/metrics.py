"""Prometheus metrics of the hub and the site agent (prometheus-client), and how they are served.

Every metric is documented in ``docs/metrics.md``; a test checks the two agree and runs
``promtool check metrics`` on what both processes serve. Conventions: ``fedcare_`` prefix,
base units (seconds), ``_total`` counters, histograms with buckets sized for what they time.

Cardinality is bounded: labels take values from small fixed sets (kind, verb, resource,
HTTP code, phase, condition, reason) except ``site``, one value per HospitalNode. Known
label combinations are created at zero up front, so dashboards show 0 rather than "no data".

Metric objects are module-level (the prometheus-client way) and registered, per process
role, into a registry of its own: the hub serves the hub and API metrics, an agent the
agent and API metrics. Nothing here imports hub/ or site/.
"""

from __future__ import annotations

import logging
import re
import time
import threading
from collections.abc import Callable, Iterable
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import (CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, Info,
                               ProcessCollector, disable_created_metrics, generate_latest)
from prometheus_client.registry import Collector

from . import __version__

log = logging.getLogger(__name__)

# No ``*_created`` series: they would double the series count (and the scrape) for a timestamp
# nobody graphs. Process-wide, as prometheus-client offers it.
disable_created_metrics()

#: ``--metrics`` default: every interface, port 9102 (the chart's ``metrics`` port).
DEFAULT_ADDRESS = "0.0.0.0:9102"

KINDS = ("HospitalNode", "FederatedRound", "ModelRelease", "RoundAssignment")
RECONCILE_ERRORS = ("InvalidSpec", "APIError", "Unexpected")

# -- the Kubernetes API client (hub and agent) ---------------------------------------------------
# By verb only: a histogram costs a series per bucket, and the resource is on the counters.
KUBE_REQUEST_DURATION = Histogram(
    "fedcare_kube_request_duration_seconds", "Kubernetes API calls from fedcare, retries included, by verb.",
    ["verb"], registry=None, buckets=(0.005, 0.025, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0, 30.0))
KUBE_REQUESTS = Counter(
    "fedcare_kube_requests_total",
    "Kubernetes API request attempts by verb, resource and HTTP code (2xx: success; 0: no answer: connection error or "
    "timeout).", ["verb", "resource", "code"], registry=None)
KUBE_RETRIES = Counter(
    "fedcare_kube_request_retries_total",
    "Kubernetes API request attempts that were retried after a transient failure (429, 5xx, no answer).",
    ["verb", "resource"], registry=None)

# -- the hub -------------------------------------------------------------------------------------
RECONCILE_DURATION = Histogram(
    "fedcare_reconcile_duration_seconds", "Hub reconcile handler runs by kind, failed runs included.",
    ["kind"], registry=None,
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0))
RECONCILE_ERRORS_TOTAL = Counter(
    "fedcare_reconcile_errors_total",
    "Hub reconcile runs that failed, by kind and error (InvalidSpec: not retried until the spec changes; "
    "APIError: retried with backoff; Unexpected: a bug).", ["kind", "error"], registry=None)
AVAILABILITY_TRANSITIONS = Counter(
    "fedcare_site_availability_transitions_total",
    "Available condition changes the hub wrote, by new status (True: recovered; Unknown: lost).",
    ["status"], registry=None)
LEASE_WATCH_RESTARTS = Counter(
    "fedcare_lease_watch_restarts_total",
    "Times the hub's Lease watch started over, by reason (APIError, Expired).", ["reason"], registry=None)
EVENTS_POSTED = Counter(
    "fedcare_events_total", "Kubernetes Events fedcare posted, by type and result (posted; duplicate: already "
    "posted, e.g. before a hub restart; failed).",
    ["type", "result"], registry=None)
# Round and release execution (filled by the round scheduler and the release pipeline; defined
# here so the dashboard and the docs are complete, and so their series exist at zero).
SERVER_ROUND_DURATION = Histogram(
    "fedcare_server_round_duration_seconds", "Server rounds of federated training, from start to aggregation.",
    registry=None, buckets=(1, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 7200))
ROUND_PARTICIPANTS = Histogram(
    "fedcare_round_participants", "Sites that replied in a server round.", registry=None,
    buckets=(1, 2, 3, 5, 8, 13, 21, 34, 55, 100, 250, 1000))
AGGREGATION_DURATION = Histogram(
    "fedcare_aggregation_duration_seconds", "Time to aggregate one server round's updates.", registry=None,
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60))
ANCHORING_DURATION = Histogram(
    "fedcare_release_anchoring_duration_seconds",
    "From submitting a release's anchoring transaction to its required confirmations.", registry=None,
    buckets=(1, 5, 15, 30, 60, 120, 300, 600, 1800))
KEY_REGISTRATION_DURATION = Histogram(
    "fedcare_supernode_key_registration_seconds",
    "One burst of SuperNode public key registrations with a round's SuperLink (Control API RegisterNode).",
    registry=None, buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60))
STRAGGLERS_DROPPED = Counter(
    "fedcare_round_stragglers_dropped_total", "Sites dropped from a server round for missing its deadline.",
    registry=None)

# -- the site agent ------------------------------------------------------------------------------
RENEWALS = Counter("fedcare_agent_lease_renewals_total", "Lease renewals that reached the hub.", ["site"],
                   registry=None)
RENEWAL_FAILURES = Counter("fedcare_agent_lease_renewal_failures_total",
                           "Lease renewals that failed (the hub did not answer, or refused).", ["site"],
                           registry=None)
NVML_POLL_DURATION = Histogram(
    "fedcare_agent_nvml_poll_duration_seconds", "NVML inventory polls, failed ones included.", ["site"],
    registry=None, buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5))
NVML_ERRORS = Counter(
    "fedcare_agent_nvml_poll_errors_total",
    "NVML polls that gave no usable inventory, by error (Unavailable, Timeout, InvalidInventory).",
    ["site", "error"], registry=None)
NVML_ERROR_KINDS = ("Unavailable", "Timeout", "InvalidInventory")
GPUS = Gauge("fedcare_agent_gpus", "GPUs of the site as of the last NVML poll, by state (healthy, total).",
             ["site", "state"], registry=None)
INVENTORY_REPORTS = Counter("fedcare_agent_inventory_reports_total",
                            "Inventory (GPUReady, capacity) writes to the HospitalNode status.", ["site"],
                            registry=None)
INVENTORY_REPORT_FAILURES = Counter("fedcare_agent_inventory_report_failures_total",
                                    "Inventory writes that failed (kept for the next try).", ["site"],
                                    registry=None)
ASSIGNMENT_ANSWERS = Counter(
    "fedcare_agent_assignment_answers_total", "RoundAssignment answers by result (accepted, rejected) and reason.",
    ["site", "result", "reason"], registry=None)
ANSWER_REASONS = {"accepted": ("Accepted",), "rejected": ("InsufficientGPU", "WrongSite", "InvalidSpec")}
TRAINING_POD_RESTARTS = Counter("fedcare_agent_training_pod_restarts_total",
                                "Restarts of the site's training pods (filled by round execution).", ["site"],
                                registry=None)

KUBE_METRICS = (KUBE_REQUEST_DURATION, KUBE_REQUESTS, KUBE_RETRIES, EVENTS_POSTED)
HUB_METRICS = (RECONCILE_DURATION, RECONCILE_ERRORS_TOTAL, AVAILABILITY_TRANSITIONS, LEASE_WATCH_RESTARTS,
               SERVER_ROUND_DURATION, ROUND_PARTICIPANTS, AGGREGATION_DURATION, ANCHORING_DURATION,
               STRAGGLERS_DROPPED, KEY_REGISTRATION_DURATION)
AGENT_METRICS = (RENEWALS, RENEWAL_FAILURES, NVML_POLL_DURATION, NVML_ERRORS, GPUS, INVENTORY_REPORTS,
                 INVENTORY_REPORT_FAILURES, ASSIGNMENT_ANSWERS, TRAINING_POD_RESTARTS)

for _kind in KINDS[:3]:
    RECONCILE_DURATION.labels(_kind)
    for _error in RECONCILE_ERRORS:
        RECONCILE_ERRORS_TOTAL.labels(_kind, _error)
for _status in ("True", "Unknown"):
    AVAILABILITY_TRANSITIONS.labels(_status)
for _reason in ("APIError", "Expired"):
    LEASE_WATCH_RESTARTS.labels(_reason)


# -- labels --------------------------------------------------------------------------------------
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
MAX_LABEL = 253


def label_value(text: Any) -> str:
    """A label value that is safe anywhere: control characters replaced, length capped.

    Prometheus accepts any UTF-8 in a label value and prometheus-client escapes ``\\``, ``"``
    and newlines; control characters and unbounded length are what we guard against (a site
    name comes from a Lease label or an object name the API server checked, but a label
    another tool wrote could still be odd)."""
    return _CONTROL.sub("_", str(text))[:MAX_LABEL]


_VERSIONED = re.compile(r"^/(?:api/[^/]+|apis/[^/]+/[^/]+)(/.*)?$")


def resource_of(path: str) -> str:
    """``/apis/g/v/namespaces/ns/leases/x/status`` → ``leases/status``: a bounded label."""
    match = _VERSIONED.match(path.split("?", 1)[0])
    if not match:
        return path.strip("/").split("/", 1)[0] or "root"       # /version, /healthz
    parts = [p for p in (match.group(1) or "").split("/") if p]
    if len(parts) >= 2 and parts[0] == "namespaces" and len(parts) > 2:
        parts = parts[2:]                                        # drop namespaces/<ns>
    if not parts:
        return "discovery"
    plural = parts[0]
    return f"{plural}/{parts[2]}" if len(parts) >= 3 else plural


# -- the agent's per-site series -----------------------------------------------------------------
def init_agent_site(site: str) -> None:
    """Create a site's agent series at zero (dashboards show 0, not "no data")."""
    s = label_value(site)
    RENEWALS.labels(s)
    RENEWAL_FAILURES.labels(s)
    NVML_POLL_DURATION.labels(s)
    INVENTORY_REPORTS.labels(s)
    INVENTORY_REPORT_FAILURES.labels(s)
    TRAINING_POD_RESTARTS.labels(s)
    for kind in NVML_ERROR_KINDS:
        NVML_ERRORS.labels(s, kind)
    for result, reasons in ANSWER_REASONS.items():
        for reason in reasons:
            ASSIGNMENT_ANSWERS.labels(s, result, reason)


def forget_agent_site(site: str) -> None:
    s = label_value(site)
    for metric in (RENEWALS, RENEWAL_FAILURES, NVML_POLL_DURATION, INVENTORY_REPORTS, INVENTORY_REPORT_FAILURES,
                   TRAINING_POD_RESTARTS):
        _remove(metric, s)
    for kind in NVML_ERROR_KINDS:
        _remove(NVML_ERRORS, s, kind)
    for result, reasons in ANSWER_REASONS.items():
        for reason in reasons:
            _remove(ASSIGNMENT_ANSWERS, s, result, reason)
    for state in ("healthy", "total"):
        _remove(GPUS, s, state)


def _remove(metric: Any, *labels: str) -> None:
    try:
        metric.remove(*labels)
    except KeyError:
        pass


# -- timing helper -------------------------------------------------------------------------------
class Timer:
    """``with Timer() as t: ...; t.seconds`` (perf_counter)."""

    def __enter__(self) -> "Timer":
        self.start = time.perf_counter()
        self.seconds = 0.0
        return self

    def __exit__(self, *_: Any) -> None:
        self.seconds = time.perf_counter() - self.start


# -- registries and serving ----------------------------------------------------------------------
def build_registry(role: str, extra: Iterable[Collector] = ()) -> CollectorRegistry:
    """A registry for one process role (``hub`` or ``agent``; ``sandbox`` = both): its metrics,
    the API client's, ``fedcare_build_info``, and ``extra`` collectors (the hub's state)."""
    registry = CollectorRegistry(auto_describe=True)
    groups = {"hub": HUB_METRICS, "agent": AGENT_METRICS, "sandbox": HUB_METRICS + AGENT_METRICS}[role]
    for metric in KUBE_METRICS + groups:
        registry.register(metric)
    info = Info("fedcare_build", "fedcare version and process role.", registry=registry)
    info.info({"version": __version__, "role": role})
    ProcessCollector(registry=registry)           # process_cpu_seconds_total, process_resident_memory_bytes
    for collector in extra:
        registry.register(collector)
    return registry


def parse_address(address: str) -> tuple[str, int]:
    """``HOST:PORT`` or ``:PORT`` → (host, port). Raises ValueError saying what is expected."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"--metrics {address!r}: expected HOST:PORT (for example 0.0.0.0:9102), or '' for off")
    return (host.strip("[]") or "0.0.0.0"), int(port)


#: Pre-rendered exposition text appended to the registry's (the hub's per-site families).
Extra = Callable[[], bytes]


def exposition(registry: CollectorRegistry, extras: Iterable[Extra] = ()) -> bytes:
    """What ``/metrics`` answers: the registry in text format 0.0.4, then each extra."""
    return generate_latest(registry) + b"".join(extra() for extra in extras)


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:   # noqa: A002 - the stdlib's name
        pass


class MetricsServer:
    """``/metrics`` on its own threads (a stdlib WSGI server, as prometheus-client's own): a
    scrape never waits on the event loop, so it is answered during an API outage or a busy
    reconcile. Our own small app rather than prometheus-client's ``start_http_server``: the
    hub appends its per-site families as pre-rendered text (see ``hub/metrics_state.py``)."""

    def __init__(self, address: str, registry: CollectorRegistry, extras: Iterable[Extra] = ()):
        host, port = parse_address(address)
        self.registry, self.extras = registry, list(extras)
        self.server = make_server(host, port, self._app, _Server, handler_class=_Quiet)
        self.thread = threading.Thread(target=self.server.serve_forever, name="metrics", daemon=True)
        self.thread.start()
        self.port = self.server.server_port
        self.url = f"http://{'127.0.0.1' if host in ('0.0.0.0', '') else host}:{self.port}/metrics"
        log.info("Serving Prometheus metrics on %s:%d/metrics", host, self.port)

    def _app(self, environ: dict[str, Any], start_response: Any) -> list[bytes]:
        if environ.get("PATH_INFO") not in ("/metrics", "/"):
            start_response("404 Not Found", [("Content-Type", "text/plain")])
            return [b"Not found: the metrics are at /metrics\n"]
        body = exposition(self.registry, self.extras)
        start_response("200 OK", [("Content-Type", CONTENT_TYPE_LATEST), ("Content-Length", str(len(body)))])
        return [body]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


def serve(address: str, registry: CollectorRegistry, extras: Iterable[Extra] = ()) -> MetricsServer | None:
    """Serve ``/metrics`` on ``address`` ('' = off). A port that cannot be bound is logged as an
    error and the process runs on without metrics: the controller matters more than its metrics."""
    if not address:
        return None
    try:
        return MetricsServer(address, registry, extras)
    except OSError as err:
        log.error("Cannot serve metrics on %s (%s): pass --metrics HOST:PORT with a free port, or --metrics '' "
                  "to turn them off; running without metrics", address, err.strerror or err)
        return None
