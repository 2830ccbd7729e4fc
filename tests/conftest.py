"""Shared fixtures: a fresh emulated Kubernetes API per test, and a raw HTTP client for it."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from fedcare.sandbox.emulator import RealisticEmulator, fedcare_emulator
from tests.support.kube import KubeClient


@pytest.fixture()
async def emulator() -> AsyncIterator[RealisticEmulator]:
    """Builtins + fedcare CRs + the usual namespaces; bookmarks every 0.2 s (quick tests)."""
    async with fedcare_emulator(bookmark_interval=0.2) as k:
        yield k


@pytest.fixture()
async def kube(emulator: RealisticEmulator) -> AsyncIterator[KubeClient]:
    async with KubeClient(emulator.url) as client:
        yield client


# Chain fixtures (real anvil): anvil, dev_key, registry.
from tests.support.chain import anvil, dev_key, registry  # noqa: E402,F401
