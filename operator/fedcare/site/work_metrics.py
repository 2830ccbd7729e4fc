"""``fedcare_agent_training_pod_restarts_total`` from the site's RoundAssignment status.

The work loop (``site/work.py``) writes ``status.restarts`` (container restarts plus pods
re-created) on every pass; this counts its increases, as the agent's watch delivers them. A
RoundAssignment's first sight only records its count (a restarted agent does not count the
restarts again), a deleted one is forgotten. No hook in the work loop: one call per watch event.
"""

from __future__ import annotations

from typing import Any

from .. import metrics


class RestartCounter:
    def __init__(self, site: str):
        self.site = metrics.label_value(site)
        self._restarts: dict[str, int] = {}       # assignment uid -> restarts last seen

    def observe(self, body: dict[str, Any], event_type: str | None) -> None:
        uid = (body.get("metadata") or {}).get("uid") or ""
        if event_type == "DELETED":
            self._restarts.pop(uid, None)
            return
        try:
            now = int((body.get("status") or {}).get("restarts") or 0)
        except (TypeError, ValueError):
            return
        before = self._restarts.get(uid)
        self._restarts[uid] = max(now, before or 0)
        if before is not None and now > before:
            metrics.TRAINING_POD_RESTARTS.labels(self.site).inc(now - before)
