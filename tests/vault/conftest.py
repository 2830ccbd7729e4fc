"""Fixtures for the Vault tests: one real OpenBao dev server per session, plus helpers."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from fedcare.integrations import vault as v
from tests.support.openbao import INSTALL_HINT, BaoMissing, DevServer, bao_binary, dev_server


@pytest.fixture(scope="session")
def openbao(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevServer]:
    """A dev OpenBao on a free loopback port for the whole session, stopped after."""
    try:
        bao_binary()
    except BaoMissing:
        pytest.skip(INSTALL_HINT)
    with dev_server(tmp_path_factory.mktemp("openbao")) as server:
        root = server.client()
        mounts = root.sys.list_mounted_secrets_engines()["data"]
        if "fedcare/" not in mounts:
            root.sys.enable_secrets_engine("kv", path="fedcare", options={"version": "2"})
        if "transit/" not in mounts:
            root.sys.enable_secrets_engine("transit", path="transit")
        yield server


@pytest.fixture()
def unique() -> str:
    """A fresh, DNS-safe name so tests sharing the session server never collide."""
    return "t" + uuid.uuid4().hex[:8]


def fast_retry(attempts: int = 3, timeout: float = 2.0) -> v.RetryPolicy:
    return v.RetryPolicy(attempts=attempts, base_delay=0.02, max_delay=0.1, timeout=timeout)


def root_settings(server: DevServer, **kw) -> v.VaultSettings:
    return v.VaultSettings(addr=server.addr, auth_method="token", token=server.root_token,
                           retry=kw.pop("retry", fast_retry()), **kw)


@pytest.fixture()
def root_client(openbao: DevServer) -> v.VaultClient:
    client = v.VaultClient(root_settings(openbao))
    client.login()
    return client


@pytest.fixture()
def bao_installed() -> None:
    """Skip, naming the install command, when the OpenBao binary is missing (tests that start
    their own server, e.g. a sandbox federation's)."""
    try:
        bao_binary()
    except BaoMissing as err:
        pytest.skip(str(err))
