"""One hospital's agent: heartbeat + inventory loops, and a kopf registry that answers the
site's RoundAssignments. It only makes outbound calls, with the narrow rights its Role gives."""

from __future__ import annotations

import asyncio
import copy
import logging
from typing import Any

import kopf

from .. import events, metrics
from ..api import resources as r
from ..kopf_setup import add_agent_login, configure
from ..integrations.kube import Kube, KubeError, Ref
from . import assignments
from .heartbeat import Heartbeat, SiteGone, check_site_exists, node_ref
from .reporter import InventoryReporter
from .work import SiteWork
from .work_metrics import RestartCounter

log = logging.getLogger(__name__)


class SiteAgent:
    def __init__(self, site: str, hub: Kube, reporter: InventoryReporter, *, agent_id: str,
                 heartbeat: Heartbeat | None = None, work: SiteWork | None = None):
        self.site, self.hub, self.reporter, self.agent_id = site, hub, reporter, agent_id
        self.heartbeat = heartbeat or Heartbeat(hub, site, agent_id)
        self.namespace = r.site_namespace(site)
        self.gone: str | None = None
        self._answering = asyncio.Lock()    # one answer at a time: GPU reservations must not race
        self.answer_resync_seconds = 30.0
        metrics.init_agent_site(site)
        self.restarts = RestartCounter(site)
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
                 asyncio.create_task(self.reporter.run(stop), name="inventory"),
                 asyncio.create_task(self.resync_answers(stop), name="answer-resync")]
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

    async def answer(self, raw: dict[str, Any], logger: Any = log) -> None:
        """Answer one assignment if it needs it (idempotent); API failures are left to the resync."""
        try:
            async with self._answering:
                cache = self.work.assignments if self.work is not None and self.work.assignments.fresh else None
                answered = await assignments.answer_with_reason(self.hub, self.site, self.agent_id, raw,
                                                                self.reporter.free_gpus,
                                                                self.reporter.gpu_ready_status, cache=cache)
        except KubeError as err:     # the next event, or the answer resync, brings it back
            logger.warning("Could not answer the assignment: %s", err)
            return
        if answered is not None:
            accepted, reason = answered
            round_name = (raw["spec"].get("roundRef") or {}).get("name", "?")
            verdict = "Accepted" if accepted else "Rejected"
            metrics.ASSIGNMENT_ANSWERS.labels(metrics.label_value(self.site), verdict.lower(), reason).inc()
            logger.info("%s the assignment for round %s", verdict, round_name)
            md = raw["metadata"]
            await events.post(self.hub, raw, events.NORMAL if accepted else events.WARNING, verdict,
                              f"Site {self.site} {verdict.lower()} RoundAssignment {md['namespace']}/{md['name']} "
                              f"({reason})", component="fedcare-agent")

    async def resync_answers(self, stop: asyncio.Event) -> None:
        """Every ``answer_resync_seconds``, answer what is still unanswered: a failed answer is
        never re-delivered by a watch event (nothing changed on the object), so without this it
        would wait for the next re-list, minutes away. Bounded: one list per pass, none when the
        work loop's watched copy of the assignments is at hand."""
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), timeout=self.answer_resync_seconds)
                return
            except asyncio.TimeoutError:
                pass
            try:
                if self.work is not None and self.work.assignments.fresh:
                    listed = list(self.work.assignments.items.values())     # the work loop's watched copy
                else:
                    listed = await self.hub.list(Ref(r.API_VERSION, r.ROUND_ASSIGNMENTS.plural, self.namespace))
                pending = [copy.deepcopy(a) for a in listed if assignments.needs_answer(a)]
            except KubeError as err:
                log.warning("Could not list the site's assignments (%s); next try in %.0fs", err,
                            self.answer_resync_seconds)
                continue
            for raw in pending:
                await self.answer(raw)

    def registry(self, *, hub_kubeconfig: str | None = None) -> kopf.OperatorRegistry:
        """``hub_kubeconfig``: log in to the hub with it (production); None: the caller adds a login."""
        registry = kopf.OperatorRegistry()
        if hub_kubeconfig:
            add_agent_login(registry, hub_kubeconfig)

        @kopf.on.startup(registry=registry)
        def start(settings: kopf.OperatorSettings, **_: Any) -> None:
            configure(settings)
            # The agent's hub identity may not list namespaces or CRDs (hub/enrollment.py): kopf's
            # restricted mode, declared, serves exactly the site's namespace. Scanning would also
            # race: kopf lists the namespaces, then its namespace watch re-lists and ignores what
            # that listing holds, so a namespace created in between is never served.
            settings.scanning.disabled = True

        # on.event, not on.create/update: the agent may not patch RoundAssignments (only their
        # status), so kopf must keep no state on them; answers are idempotent instead.
        @kopf.on.event(r.GROUP, r.VERSION, r.ROUND_ASSIGNMENTS.plural, registry=registry,
                       when=lambda body, type, **_: type != "DELETED" and assignments.needs_answer(body))
        async def assignment(body: kopf.Body, logger: Any, **_: Any) -> None:
            await self.answer(copy.deepcopy(dict(body)), logger)
            if self.work is not None:
                self.work.wake.set()

        @kopf.on.event(r.GROUP, r.VERSION, r.ROUND_ASSIGNMENTS.plural, registry=registry, id="work-wake",
                       when=lambda type, **_: self.work is not None)
        async def assignment_changed(body: kopf.Body, type: str | None, **_: Any) -> None:
            """Any change (Accepted, deleted at the round's end): converge the pods now, not at the next poll."""
            assert self.work is not None
            self.restarts.observe(body, type)       # fedcare_agent_training_pod_restarts_total
            self.work.wake.set()

        return registry
