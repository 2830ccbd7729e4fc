"""Kubernetes Events for the state changes a user cares about (``kubectl describe``, ``kubectl events``).

Posted with our own API client (timeout, one quick retry) rather than kopf's ``kopf.info``:
most of them come from the hub's availability monitor and the agent's loops, which run
outside kopf's handlers (and so outside the context kopf's event poster needs).

Rules: the reason is a past-tense CamelCase word (``Enrolled``, ``SiteRecovered``), the
message names the object and says what happened; messages are built from object names and
fixed text only, never from a spec, a token or anything read from a patient's data. Posting
is best effort: a failure is counted (``fedcare_events_total{result="failed"}``) and logged
at debug level, and never fails the caller.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
from typing import Any

from . import metrics
from .integrations.kube import Conflict, Kube, KubeError, Ref, RetryPolicy

log = logging.getLogger(__name__)

NORMAL, WARNING = "Normal", "Warning"
#: Events of cluster-scoped objects (HospitalNode) go to this namespace, as the kubelet's do for Nodes.
CLUSTER_EVENTS_NAMESPACE = "default"
MAX_MESSAGE = 1024
FAST = RetryPolicy(attempts=2, base_delay=0.2, max_delay=0.5, timeout=5.0)


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def build(obj: dict[str, Any], type_: str, reason: str, message: str, *, component: str,
          name: str | None = None) -> dict[str, Any]:
    md = obj.get("metadata") or {}
    namespace = md.get("namespace") or CLUSTER_EVENTS_NAMESPACE
    involved = {"apiVersion": obj.get("apiVersion", ""), "kind": obj.get("kind", ""), "name": md.get("name", ""),
                "uid": md.get("uid", "")}
    if md.get("namespace"):
        involved["namespace"] = md["namespace"]
    now = _now()
    return {"apiVersion": "v1", "kind": "Event",
            "metadata": ({"name": name} if name else {"generateName": f"{md.get('name', 'fedcare')[:200]}."})
            | {"namespace": namespace},
            "involvedObject": involved, "type": type_, "reason": reason, "message": message[:MAX_MESSAGE],
            "source": {"component": component}, "reportingComponent": component, "reportingInstance": component,
            "firstTimestamp": now, "lastTimestamp": now, "count": 1, "action": reason}


async def post(kube: Kube, obj: dict[str, Any], type_: str, reason: str, message: str, *,
               component: str = "fedcare-hub", name: str | None = None) -> bool:
    """Post one Event about ``obj``; True if the API server has it (took it now or, for a named
    Event, already had it); False if posting failed.

    ``name``: a fixed Event name (see ``once_name``) for an Event that must exist once per
    transition: if the API server already has it (a restarted hub seeing the same status
    again), it answers 409 and nothing is posted twice (counted as ``result="duplicate"``)."""
    body = build(obj, type_, reason, message, component=component, name=name)
    try:
        await kube.with_policy(FAST).create(Ref("v1", "events", body["metadata"]["namespace"]), body)
    except Conflict:
        metrics.EVENTS_POSTED.labels(type_, "duplicate").inc()
        return True
    except KubeError as err:
        metrics.EVENTS_POSTED.labels(type_, "failed").inc()
        log.debug("Could not post the %s event about %s: %s", reason, body["involvedObject"]["name"], err)
        return False
    metrics.EVENTS_POSTED.labels(type_, "posted").inc()
    return True


def once_name(obj: dict[str, Any], fact: str) -> str:
    """A deterministic Event name for one fact about one object (its uid and the fact hashed):
    ``<object name>.<16 hex>``, a valid object name whatever the fact's text."""
    md = obj.get("metadata") or {}
    tag = hashlib.sha256(f"{md.get('uid', '')}/{fact}".encode()).hexdigest()[:16]
    return f"{str(md.get('name', 'fedcare'))[:200].rstrip('-.')}.{tag}"      # a label may not end in - or .
