"""Chain fixtures: a real anvil per test (free loopback port, stopped after) and a deployed registry."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator

import pytest

from fedcare.integrations.chain import ChainClient, ChainSettings, RpcPolicy
from fedcare.integrations.keyref import EnvKeyRef
from fedcare.sandbox.anvil import DEV_KEY, INSTALL_HINT, Anvil, anvil_binary, run_anvil

KEY_VAR = "FEDCARE_TEST_CHAIN_KEY"
FAST_RPC = RpcPolicy(timeout=3.0, attempts=3, base_delay=0.05, max_delay=0.3)


def need_anvil() -> None:
    if anvil_binary() is None:
        if os.environ.get("FEDCARE_REQUIRE_ANVIL"):
            pytest.fail(f"anvil is required under make test but missing: {INSTALL_HINT}")
        pytest.skip(f"anvil is not installed: run `{INSTALL_HINT}`")


@pytest.fixture()
def anvil() -> Iterator[Anvil]:
    need_anvil()
    with run_anvil() as node:
        yield node


@pytest.fixture()
def dev_key(monkeypatch: pytest.MonkeyPatch) -> EnvKeyRef:
    monkeypatch.setenv(KEY_VAR, DEV_KEY)
    return EnvKeyRef(KEY_VAR)


def settings(node: Anvil, address: str = "", **kw: object) -> ChainSettings:
    kw.setdefault("confirmations", 1)
    kw.setdefault("receipt_timeout", 20.0)
    kw.setdefault("poll_interval", 0.05)
    kw.setdefault("policy", FAST_RPC)
    return ChainSettings(node.url, node.chain_id, address, **kw)  # type: ignore[arg-type]


@pytest.fixture()
async def registry(anvil: Anvil, dev_key: EnvKeyRef) -> AsyncIterator[str]:
    """The address of a freshly deployed ModelRegistry (owner and registrar: the dev key)."""
    async with ChainClient(settings(anvil), dev_key) as client:
        address, _ = await client.deploy()
    yield address
