"""Graceful pod deletion, as the API server does it (the emulator's pod strategy).

Deleting a pod that is bound to a node (``spec.nodeName``) and not finished does not remove
it: the API server sets ``deletionTimestamp`` (now + the grace period) and
``deletionGracePeriodSeconds`` (the DELETE's ``gracePeriodSeconds``, else the pod's
``terminationGracePeriodSeconds``, else 30), and the node's kubelet stops the containers
and then deletes the object with ``gracePeriodSeconds=0``. An unbound or finished pod, or a
grace period of 0, goes at once. A second DELETE can only shorten the grace period.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import kmock

PODS = kmock.resource("v1/pods")
DEFAULT_GRACE = 30


def requested_grace(opts: dict[str, Any], query: Any = None) -> int | None:
    """``gracePeriodSeconds`` from DeleteOptions (body) or the query string."""
    value = opts.get("gracePeriodSeconds")
    if value is None and query is not None:
        value = query.get("gracePeriodSeconds")
    return None if value is None else max(0, int(value))


def graceful_delete(res: Any, pod: dict[str, Any], grace: int | None) -> int | None:
    """The grace period to wait for the kubelet, or None when the pod is deleted at once."""
    if res != PODS:
        return None
    spec, md = pod.get("spec") or {}, pod["metadata"]
    if not spec.get("nodeName") or (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
        return None
    if grace is None:
        grace = int(spec.get("terminationGracePeriodSeconds", DEFAULT_GRACE))
    current = md.get("deletionGracePeriodSeconds")
    if current is not None and md.get("deletionTimestamp"):
        grace = min(grace, int(current))
    return grace or None


def mark_deleting(md: dict[str, Any], grace: int) -> None:
    when = dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=grace)
    md.update(deletionTimestamp=when.strftime("%Y-%m-%dT%H:%M:%SZ"), deletionGracePeriodSeconds=grace)
