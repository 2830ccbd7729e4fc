"""Shared fixtures: a fresh emulated Kubernetes API per test, a raw HTTP client for it, and
one real control plane per session (marker ``cluster``; ``tiers`` runs a test on both)."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator, Iterator

import pytest

from fedcare.sandbox.cluster import ClusterError, RealCluster, find_binary
from fedcare.sandbox.emulator import RealisticEmulator, fedcare_emulator
from tests.support.cluster import Cluster, EmulatorTier, RealTier
from tests.support.kube import KubeClient


def _children(pid: int) -> list[int]:
    """Every descendant of ``pid`` (from /proc), to prove nothing is left running."""
    found, todo = [], [pid]
    while todo:
        parent = todo.pop()
        try:
            kids = open(f"/proc/{parent}/task/{parent}/children").read().split()
        except OSError:
            continue
        found += [int(k) for k in kids]
        todo += [int(k) for k in kids]
    return found


def _alive(pid: int) -> bool:
    """True if ``pid`` runs (a zombie, dead but not yet reaped, does not count)."""
    try:
        return open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.fixture(scope="session")
def real_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """The real control plane, started once per session, CRDs applied server-side."""
    try:
        find_binary()
    except ClusterError as err:
        if os.environ.get("CI"):
            pytest.fail(str(err), pytrace=False)    # `make test` builds it: never a silent skip in CI
        pytest.skip(str(err))
    real = RealCluster(tmp_path_factory.mktemp("fedcare-kube")).start()
    pid = real.process.pid
    children = _children(pid)      # etcd runs inside fedcare-kube; these are the three components
    assert len(children) >= 3, f"fedcare-kube runs {len(children)} child processes, expected 3"
    try:
        cluster = Cluster(real)
        cluster.apply_crds()
        yield cluster
    finally:
        real.stop()
        left = [p for p in children if _alive(p)]
        for p in left:
            os.kill(p, signal.SIGKILL)
        assert not left, f"fedcare-kube left processes running after SIGTERM: {left}"


@pytest.fixture()
def apiserver(request: pytest.FixtureRequest):
    """The API server a test talks to: the emulator, or (parametrised by ``tiers``) the real one.

    A sync fixture: it asks for the (async) emulator fixture by name, which an async one could
    not do from inside the running loop; the real tier's clean-up runs in a loop of its own.
    """
    if getattr(request, "param", "emulator") == "emulator":
        yield EmulatorTier(request.getfixturevalue("emulator"))
        return
    tier = RealTier(request.getfixturevalue("real_cluster"))
    asyncio.run(tier.reset())
    yield tier
    asyncio.run(tier.reset())


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if metafunc.definition.get_closest_marker("tiers") and "apiserver" in metafunc.fixturenames:
        metafunc.parametrize("apiserver", ["emulator", "real"], indirect=True)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:   # a test on the real tier needs the control plane: mark it so `-m cluster` selects it
        if "real_cluster" in getattr(item, "fixturenames", ()) or "[real" in item.name:
            item.add_marker(pytest.mark.cluster)


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
