"""The hub's kopf handlers. Thin: validate, call the service, map errors. Logic lives in *_service.py."""

from __future__ import annotations

import copy
import logging
from typing import Any

import kopf

from ..api.resources import FEDERATED_ROUNDS, GROUP, HOSPITAL_NODES, MODEL_RELEASES, VERSION
from ..integrations.kube import KubeError
from . import hospital_node_service as nodes
from . import round_scheduler, round_service
from .context import HubContext
from .errors import handled
from .settings import configure


#: An event handler that runs on every HospitalNode event; its success is not worth a log line.
QUIET_HANDLER = "node-seen"


class QuietEventHandlers(logging.Filter):
    """Drops kopf's "Handler 'node-seen' succeeded." (one per event: noise, and CPU at scale)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.levelno == logging.INFO and f"'{QUIET_HANDLER}' succeeded" in record.getMessage())


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

    @kopf.on.delete(GROUP, VERSION, HOSPITAL_NODES.plural, registry=registry)
    async def hospital_node_deleted(body: kopf.Body, retry: int, logger: Any, **_: Any) -> None:
        async with handled(body, retry, logger):
            await nodes.finalize(ctx.api, plain(body), logger)

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

    # Round execution (hub/round_scheduler.py): a level-based pass every poll interval.
    @kopf.timer(GROUP, VERSION, FEDERATED_ROUNDS.plural, registry=registry, id="round-execution",
                interval=ctx.rounds.poll_interval if ctx.rounds else 2.0, when=round_scheduler.needs_pass)
    async def federated_round_pass(body: kopf.Body, logger: Any, **_: Any) -> None:
        try:
            await ctx.round_reconciler.reconcile(plain(body))
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
            await round_service.reconcile_release(ctx.api, plain(body))

    return registry


def add_login(registry: kopf.OperatorRegistry) -> None:
    """Log in from the pod's ServiceAccount, else from KUBECONFIG/~/.kube/config.

    A registry of our own gets none of kopf's default login handlers (those are registered on
    kopf's global registry only), so production registries add these explicitly. Tests and
    the sandbox add their own instead, so they can never reach a developer's real cluster.
    """
    @kopf.on.login(registry=registry)
    def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
        return kopf.login_with_service_account(**kwargs) or kopf.login_with_kubeconfig(**kwargs)


def make_registry(ctx: HubContext, *, login: bool = False) -> kopf.OperatorRegistry:
    registry = register(kopf.OperatorRegistry(), ctx)
    if login:
        add_login(registry)
    return registry
