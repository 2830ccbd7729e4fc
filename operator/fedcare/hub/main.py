"""``fedcare hub``: run the hub controllers until SIGTERM (kopf handles graceful shutdown)."""

from __future__ import annotations

import asyncio
import logging
import os

import kopf

from .context import HubContext
from .handlers import QuietEventHandlers, make_registry
from .round_scheduler import RoundConfig

log = logging.getLogger(__name__)


def run_hub(*, liveness: str = "", kubeconfig: str | None = None, namespaces: list[str] | None = None,
            rounds: RoundConfig | None = None) -> int:
    if kubeconfig:
        os.environ["KUBECONFIG"] = kubeconfig    # read by kopf's own login and by our client alike
    registry = make_registry(HubContext(kubeconfig=kubeconfig, rounds=rounds), login=True)
    logging.getLogger("kopf.objects").addFilter(QuietEventHandlers())
    scope = {"namespaces": namespaces} if namespaces else {"clusterwide": True}
    log.info("Starting the fedcare hub (liveness endpoint: %s)", liveness or "off")
    # standalone: one replica (the chart uses strategy Recreate), no peering resource needed.
    asyncio.run(kopf.operator(registry=registry, standalone=True, liveness_endpoint=liveness or None, **scope))
    return 0
