"""The hub's kopf handlers. Thin: validate, call the service, map errors. Logic lives in *_service.py."""

from __future__ import annotations

import copy
import logging
from typing import Any

import kopf

from ..api.resources import FEDERATED_ROUNDS, GROUP, HOSPITAL_NODES, MODEL_RELEASES, VERSION
from ..integrations.kube import KubeError
from . import hospital_node_service as nodes
from . import release_service, round_scheduler, round_service
from . import vault_footprint
from .context import HubContext
from .errors import handled
from ..kopf_setup import add_hub_login, configure


#: An event handler that runs on every HospitalNode event; its success is not worth a log line.
QUIET_HANDLER = "node-seen"
QUIET_HANDLERS = (QUIET_HANDLER, "round-seen", "release-seen")


class QuietEventHandlers(logging.Filter):
    """Drops kopf's "Handler 'node-seen' succeeded." (one per event: noise, and CPU at scale)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno != logging.INFO:
            return True
        message = record.getMessage()
        return not any(f"'{quiet}' succeeded" in message for quiet in QUIET_HANDLERS)


def plain(body: Any) -> dict[str, Any]:
    return copy.deepcopy(dict(body))


def register(registry: kopf.OperatorRegistry, ctx: HubContext) -> kopf.OperatorRegistry:
    @kopf.on.startup(registry=registry)
    async def start(settings: kopf.OperatorSettings, **_: Any) -> None:
        configure(settings)
        await ctx.start()     # the API client and the availability monitor

    @kopf.on.cleanup(registry=registry)
    async def stop(**_: Any) -> None:
        await ctx.close()

    @kopf.on.resume(GROUP, VERSION, HOSPITAL_NODES.plural, registry=registry)
    @kopf.on.create(GROUP, VERSION, HOSPITAL_NODES.plural, registry=registry)
    @kopf.on.update(GROUP, VERSION, HOSPITAL_NODES.plural, registry=registry)
    async def hospital_node(body: kopf.Body, retry: int, logger: Any, **_: Any) -> None:
        async with handled(body, retry, logger):
            await nodes.reconcile(ctx.api, plain(body), logger)
            await vault_footprint.enroll(ctx, plain(body), logger)

    @kopf.on.delete(GROUP, VERSION, HOSPITAL_NODES.plural, registry=registry)
    async def hospital_node_deleted(body: kopf.Body, retry: int, logger: Any, **_: Any) -> None:
        async with handled(body, retry, logger):
            await nodes.finalize(ctx.api, plain(body), logger)
            await vault_footprint.remove_site(ctx.vault, ctx.vault_footprint, plain(body), logger)

    if ctx.hub_credential is not None:
        interval = max(30.0, ctx.hub_credential.ttl_seconds * ctx.hub_credential.refresh_fraction / 4)

        @kopf.timer(GROUP, VERSION, HOSPITAL_NODES.plural, registry=registry, interval=interval,
                    initial_delay=interval)
        async def hospital_node_credential(body: kopf.Body, retry: int, logger: Any, **_: Any) -> None:
            async with handled(body, retry, logger):
                await vault_footprint.rotate_credential(ctx, plain(body), logger)

    @kopf.on.event(GROUP, VERSION, HOSPITAL_NODES.plural, registry=registry, id=QUIET_HANDLER)
    async def hospital_node_seen(body: kopf.Body, type: str | None, **_: Any) -> None:
        if type == "DELETED":
            ctx.availability.node_gone(body["metadata"]["name"])
        else:
            ctx.availability.node_seen(plain(body))

    @kopf.on.event(GROUP, VERSION, HOSPITAL_NODES.plural, registry=registry, when=nodes.ready_is_stale)
    async def hospital_node_readiness(body: kopf.Body, logger: Any, **_: Any) -> None:
        """The agent changed GPUReady: recompute Ready (a hub condition) from it."""
        try:
            await nodes.refresh_ready(ctx.api, plain(body))
        except KubeError as err:    # the next event recomputes it again
            logger.warning("Could not refresh Ready: %s", err)

    @kopf.on.resume(GROUP, VERSION, FEDERATED_ROUNDS.plural, registry=registry)
    @kopf.on.create(GROUP, VERSION, FEDERATED_ROUNDS.plural, registry=registry)
    @kopf.on.update(GROUP, VERSION, FEDERATED_ROUNDS.plural, registry=registry)
    async def federated_round(body: kopf.Body, retry: int, logger: Any, **_: Any) -> None:
        async with handled(body, retry, logger):
            await round_service.reconcile_round(ctx.api, plain(body))

    @kopf.on.event(GROUP, VERSION, FEDERATED_ROUNDS.plural, registry=registry, id="round-seen")
    async def federated_round_seen(body: kopf.Body, type: str | None, **_: Any) -> None:
        ctx.rounds.observe(body, type)        # fedcare_rounds{phase}
        await ctx.lifecycle.round_seen(plain(body), type)     # Events and metrics of its transitions

    @kopf.on.event(GROUP, VERSION, MODEL_RELEASES.plural, registry=registry, id="release-seen")
    async def model_release_seen(body: kopf.Body, type: str | None, **_: Any) -> None:
        ctx.releases.observe(body, type)      # fedcare_releases{phase}
        await ctx.lifecycle.release_seen(plain(body), type)   # Events and metrics of its transitions

    # Round execution (hub/round_scheduler.py): a level-based pass every poll interval.
    @kopf.timer(GROUP, VERSION, FEDERATED_ROUNDS.plural, registry=registry, id="round-execution",
                interval=ctx.round_config.poll_interval if ctx.round_config else 2.0, when=round_scheduler.needs_pass)
    async def federated_round_pass(body: kopf.Body, logger: Any, stopped: Any = None, **_: Any) -> None:
        try:
            await ctx.round_reconciler.reconcile(plain(body), stopped.is_set if stopped is not None else None)
        except KubeError as err:        # the next pass tries again
            logger.warning("Round pass failed: %s", err)
        except (RuntimeError, AssertionError):
            if ctx.kube is None:        # the hub stopped under a pass kopf left running: nothing to do
                return
            raise

    @kopf.on.delete(GROUP, VERSION, FEDERATED_ROUNDS.plural, registry=registry)
    async def federated_round_deleted(body: kopf.Body, retry: int, logger: Any, **_: Any) -> None:
        async with handled(body, retry, logger):
            await ctx.round_reconciler.finalize(plain(body))

    @kopf.on.resume(GROUP, VERSION, MODEL_RELEASES.plural, registry=registry)
    @kopf.on.create(GROUP, VERSION, MODEL_RELEASES.plural, registry=registry)
    @kopf.on.update(GROUP, VERSION, MODEL_RELEASES.plural, registry=registry)
    async def model_release(body: kopf.Body, retry: int, logger: Any, **_: Any) -> None:
        async with handled(body, retry, logger):
            await release_service.reconcile(ctx.api, ctx.release, plain(body))

    @kopf.on.delete(GROUP, VERSION, MODEL_RELEASES.plural, registry=registry)
    async def model_release_deleted(body: kopf.Body, retry: int, logger: Any, **_: Any) -> None:
        async with handled(body, retry, logger):
            await release_service.finalize(ctx.api, ctx.release, plain(body))

    return registry


def make_registry(ctx: HubContext, *, login: bool = False) -> kopf.OperatorRegistry:
    """``login``: add the production login (``ctx.kubeconfig``, else the pod's ServiceAccount)."""
    registry = register(kopf.OperatorRegistry(), ctx)
    if login:
        add_hub_login(registry, ctx.kubeconfig)
    return registry
