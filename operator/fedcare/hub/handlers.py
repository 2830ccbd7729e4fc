"""The hub's kopf handlers. Thin: validate, call the service, map errors. Logic lives in *_service.py."""

from __future__ import annotations

import copy
from typing import Any

import kopf

from ..api.resources import FEDERATED_ROUNDS, GROUP, HOSPITAL_NODES, MODEL_RELEASES, VERSION
from . import hospital_node_service as nodes
from . import round_service
from .context import HubContext
from .errors import handled
from .settings import configure


def plain(body: Any) -> dict[str, Any]:
    return copy.deepcopy(dict(body))


def register(registry: kopf.OperatorRegistry, ctx: HubContext) -> kopf.OperatorRegistry:
    @kopf.on.startup(registry=registry)
    async def start(settings: kopf.OperatorSettings, **_: Any) -> None:
        configure(settings)
        await ctx.start()

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

    @kopf.on.resume(GROUP, VERSION, FEDERATED_ROUNDS.plural, registry=registry)
    @kopf.on.create(GROUP, VERSION, FEDERATED_ROUNDS.plural, registry=registry)
    @kopf.on.update(GROUP, VERSION, FEDERATED_ROUNDS.plural, registry=registry)
    async def federated_round(body: kopf.Body, retry: int, logger: Any, **_: Any) -> None:
        async with handled(body, retry, logger):
            await round_service.reconcile_round(ctx.api, plain(body))

    @kopf.on.resume(GROUP, VERSION, MODEL_RELEASES.plural, registry=registry)
    @kopf.on.create(GROUP, VERSION, MODEL_RELEASES.plural, registry=registry)
    @kopf.on.update(GROUP, VERSION, MODEL_RELEASES.plural, registry=registry)
    async def model_release(body: kopf.Body, retry: int, logger: Any, **_: Any) -> None:
        async with handled(body, retry, logger):
            await round_service.reconcile_release(ctx.api, plain(body))

    return registry


def make_registry(ctx: HubContext) -> kopf.OperatorRegistry:
    return register(kopf.OperatorRegistry(), ctx)
