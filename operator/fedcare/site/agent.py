"""One hospital's agent: heartbeat + inventory loops, and a kopf registry that answers the
site's RoundAssignments. It only makes outbound calls, with the narrow rights its Role gives."""

from __future__ import annotations

import asyncio
import copy
import logging
from typing import Any

import kopf

from ..api import resources as r
from ..hub.handlers import add_login
from ..hub.settings import configure
from ..integrations.kube import Kube, KubeError
from . import assignments
from .heartbeat import Heartbeat, SiteGone, check_site_exists, node_ref
from .reporter import InventoryReporter
from .work import SiteWork

log = logging.getLogger(__name__)


class SiteAgent:
    def __init__(self, site: str, hub: Kube, reporter: InventoryReporter, *, agent_id: str,
                 heartbeat: Heartbeat | None = None, work: SiteWork | None = None):
        self.site, self.hub, self.reporter, self.agent_id = site, hub, reporter, agent_id
        self.heartbeat = heartbeat or Heartbeat(hub, site, agent_id)
        self.namespace = r.site_namespace(site)
        self.gone: str | None = None
        self._answering = asyncio.Lock()    # one answer at a time: GPU reservations must not race
        #: Training pods in the site cluster (None: this agent only answers, e.g. no site cluster).
        self.work = work
        if work is not None:
            work.lock = self._answering

    async def prepare(self) -> None:
        """Check the site is enrolled and adopt its lease duration. Raises SiteGone, KubeError."""
        await check_site_exists(self.hub, self.site)
        node = await self.hub.get(node_ref(self.site))
        self.heartbeat.lease_seconds = int((node.get("spec") or {}).get("leaseDurationSeconds") or 40)

    async def run(self, stop: asyncio.Event) -> None:
        """Run until ``stop`` is set or the site disappears (then ``stop`` is set for the others)."""
        tasks = [asyncio.create_task(self.heartbeat.run(stop), name="heartbeat"),
                 asyncio.create_task(self.reporter.run(stop), name="inventory")]
        if self.work is not None:
            tasks.append(asyncio.create_task(self.work.run(stop), name="work"))
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
            for task in done:
                exc = task.exception()
                if isinstance(exc, SiteGone):
                    self.gone = str(exc)
                    log.error("%s; the agent for site %s is stopping", exc, self.site)
                elif exc is not None:
                    raise exc
        finally:
            stop.set()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    def registry(self, *, login: bool = False) -> kopf.OperatorRegistry:
        registry = kopf.OperatorRegistry()
        if login:
            add_login(registry)

        @kopf.on.startup(registry=registry)
        def start(settings: kopf.OperatorSettings, **_: Any) -> None:
            configure(settings)

        # on.event, not on.create/update: the agent may not patch RoundAssignments (only their
        # status), so kopf must keep no state on them; answers are idempotent instead.
        @kopf.on.event(r.GROUP, r.VERSION, r.ROUND_ASSIGNMENTS.plural, registry=registry,
                       when=lambda body, type, **_: type != "DELETED" and assignments.needs_answer(body))
        async def assignment(body: kopf.Body, logger: Any, **_: Any) -> None:
            raw = copy.deepcopy(dict(body))
            try:
                async with self._answering:
                    accepted = await assignments.answer(self.hub, self.site, self.agent_id, raw,
                                                        self.reporter.free_gpus)
            except KubeError as err:     # the next event (or kopf's re-list) brings it back
                logger.warning("Could not answer the assignment: %s", err)
                return
            if accepted is not None:
                logger.info("%s the assignment for round %s", "Accepted" if accepted else "Rejected",
                            (raw["spec"].get("roundRef") or {}).get("name", "?"))
            if self.work is not None:
                self.work.wake.set()

        @kopf.on.event(r.GROUP, r.VERSION, r.ROUND_ASSIGNMENTS.plural, registry=registry, id="work-wake",
                       when=lambda type, **_: self.work is not None)
        async def assignment_changed(**_: Any) -> None:
            """Any change (Accepted, deleted at the round's end): converge the pods now, not at the next poll."""
            assert self.work is not None
            self.work.wake.set()

        return registry
