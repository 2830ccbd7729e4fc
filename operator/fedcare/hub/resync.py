"""Drift repair: every enrolled site's objects are re-ensured on a slow, bounded schedule.

Watch events alone miss drift that produces no event on a HospitalNode: a deleted Lease, a
deleted RoleBinding, a failed write that nothing retried. One loop (not a kopf timer per
object: at 1,000 sites per-object tasks cost more than the rest of the hub, see
docs/performance.md) lists the HospitalNodes every ``interval`` seconds and runs the same
idempotent reconcile as the handlers, a few at a time, spread over the interval.

The same pass repairs what somebody outside the hub wrote into the hub's part of a status:
reconcile rewrites Enrolled, siteNamespace, observedGeneration, phase and Ready (recomputed),
and each listed node is shown to the availability monitor (``observe``), which writes back
Available and lastHeartbeatTime if they are not what it last wrote — in case the watch event
of that outside write was missed.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
from collections.abc import Callable

from ..api.resources import API_VERSION, HOSPITAL_NODES
from ..api.validation import SpecError
from ..integrations.kube import Kube, KubeError, Ref
from . import hospital_node_service as nodes

log = logging.getLogger(__name__)
DEFAULT_INTERVAL = 300.0
CONCURRENCY = 4


def interval_from_env() -> float:
    """``FEDCARE_RESYNC_SECONDS`` (default 300; 0 turns the resync off; at least 5)."""
    raw = os.environ.get("FEDCARE_RESYNC_SECONDS", "")
    try:
        value = float(raw) if raw else DEFAULT_INTERVAL
    except ValueError:
        log.warning("FEDCARE_RESYNC_SECONDS=%r is not a number; using %.0f s", raw, DEFAULT_INTERVAL)
        value = DEFAULT_INTERVAL
    return 0.0 if value <= 0 else max(5.0, value)


async def resync_once(kube: Kube, observe: Callable[[dict], None] | None = None, *, spread: float = 0.0) -> int:
    """Re-ensure every live HospitalNode's objects (and show each to ``observe``, the
    availability monitor's ``node_seen``). Returns how many were reconciled. ``spread``: seconds
    over which the sites' starts are spaced evenly (0: as fast as CONCURRENCY allows) — at
    1,000 sites an unspaced pass is ~8,000 API calls in a burst that delays every other write."""
    sem = asyncio.Semaphore(CONCURRENCY)
    done = 0

    async def one(index: int, node: dict) -> None:
        nonlocal done
        name = node["metadata"]["name"]
        if spread > 0:     # spaced out: the listed copy is old by now, read the node again
            await asyncio.sleep(index * spread / len(items))
            try:
                node = await kube.get_or_none(Ref(API_VERSION, HOSPITAL_NODES.plural, None, name))
            except KubeError as err:
                log.warning("Resync of site %s failed (%s); the next pass retries", name, err)
                return
            if node is None or node["metadata"].get("deletionTimestamp"):
                return
        async with sem:
            if observe is not None:
                observe(node)
            try:
                await nodes.reconcile(kube, node, log)
                done += 1
            except SpecError:
                pass          # reported in status by the reconcile; nothing to repair
            except KubeError as err:
                log.warning("Resync of site %s failed (%s); the next pass retries", name, err)

    items = [n for n in await kube.list(Ref(API_VERSION, HOSPITAL_NODES.plural))
             if not n["metadata"].get("deletionTimestamp")]
    await asyncio.gather(*(one(i, n) for i, n in enumerate(items)))
    return done


async def resync_loop(kube: Callable[[], Kube], interval: float,
                      observe: Callable[[dict], None] | None = None) -> None:
    """Runs until cancelled; API errors back off to the next pass, never a tight loop."""
    while True:
        await asyncio.sleep(interval * random.uniform(0.9, 1.1))
        try:
            count = await resync_once(kube(), observe, spread=interval / 2)
            log.debug("Resync pass reconciled %d site(s)", count)
        except KubeError as err:
            log.warning("Resync pass could not list HospitalNodes (%s); next pass in %.0fs", err, interval)
