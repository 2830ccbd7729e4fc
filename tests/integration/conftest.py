"""Fixtures for the hub and site agents running for real (kopf) against the emulated API."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import pytest

from fedcare.hub.context import HubContext
from fedcare.hub.handlers import make_registry
from fedcare.integrations.kube import Kube, RetryPolicy
from tests.support.harness import run_operator

FAST = RetryPolicy(attempts=3, base_delay=0.05, max_delay=0.2, timeout=5.0)


@pytest.fixture()
async def api(apiserver) -> AsyncIterator[Kube]:
    kube = await apiserver.kube(FAST)
    yield kube
    await kube.close()


@pytest.fixture()
def hub(apiserver):
    """``async with hub() as logs:`` runs the hub operator; can be entered again (a restart)."""

    @contextlib.asynccontextmanager
    async def start(**ctx_kwargs):
        ctx = HubContext(kube=await apiserver.kube(FAST), **ctx_kwargs)
        async with run_operator(apiserver, make_registry(ctx)) as logs:
            logs.ctx = ctx
            yield logs

    return start
