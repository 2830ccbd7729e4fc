"""The sandbox API's discovery (what kopf, kubectl and kr8s read first) and its standalone server."""

from __future__ import annotations

import asyncio
import pathlib

import kmock
import pytest
import yaml
from kubernetes_asyncio import client as k8s
from kubernetes_asyncio import config as k8s_config

from fedcare.api.resources import RESOURCES
from fedcare.sandbox.emulator import BUILTINS, RealisticEmulator, ensure_builtins
from fedcare.sandbox.kubeconfig import CONTEXT, write_kubeconfig
from fedcare.sandbox.server import serve
from tests.support.kube import KubeClient


async def test_discovery_serves_every_fedcare_resource_with_its_scope(kube: KubeClient):
    groups = (await kube.request("GET", "/apis")).ok()["groups"]
    ours = next(g for g in groups if g["name"] == "fedcare.io")
    assert ours["preferredVersion"]["groupVersion"] == "fedcare.io/v1alpha1"
    listing = (await kube.request("GET", "/apis/fedcare.io/v1alpha1")).ok()
    assert listing["groupVersion"] == "fedcare.io/v1alpha1"
    served = {r["name"]: r for r in listing["resources"]}
    for res in RESOURCES:
        entry = served[res.plural]
        assert (entry["kind"], entry["namespaced"], entry["singularName"]) == (res.kind, res.namespaced, res.singular)
        assert sorted(entry["shortNames"]) == sorted(res.short_names)
        assert {"get", "list", "watch", "create", "patch", "update", "delete"} <= set(entry["verbs"])
        status = served[f"{res.plural}/status"]  # kopf patches status through it when declared
        assert status["shortNames"] == [] and status["namespaced"] == res.namespaced
    assert len(served) == 2 * len(RESOURCES)


async def test_core_and_builtin_discovery(kube: KubeClient):
    core = (await kube.request("GET", "/api/v1")).ok()
    assert core["groupVersion"] == "v1"  # kmock says "/v1"
    for name, (kind, namespaced) in BUILTINS.items():
        *group_version, plural = name.split("/")
        path = "/api/v1" if group_version == ["v1"] else "/apis/" + "/".join(group_version)
        entries = {r["name"]: r for r in (await kube.request("GET", path)).ok()["resources"]}
        assert (entries[plural]["kind"], entries[plural]["namespaced"]) == (kind, namespaced), name


@pytest.mark.parametrize("path", ["/version", "/api", "/apis"])
async def test_kr8s_trailing_slash_paths(kube: KubeClient, path: str):
    bare, slashed = await kube.request("GET", path), await kube.request("GET", path + "/")
    assert bare.status == slashed.status == 200 and bare.body == slashed.body


async def test_missing_builtins_are_registered():
    async with RealisticEmulator() as k:  # no bundle loaded: every builtin is missing
        assert sorted(ensure_builtins(k)) == sorted(BUILTINS)
        assert k.resources[kmock.resource("coordination.k8s.io/v1/leases")].namespaced is True
        assert ensure_builtins(k) == []


def test_kubeconfig_points_at_the_server_without_tls(tmp_path: pathlib.Path):
    path = write_kubeconfig("http://127.0.0.1:1234/", tmp_path / "deep" / "kubeconfig")
    cfg = yaml.safe_load(path.read_text())
    assert cfg["current-context"] == CONTEXT == "fedcare-sandbox"
    cluster = cfg["clusters"][0]["cluster"]
    assert cluster == {"server": "http://127.0.0.1:1234", "insecure-skip-tls-verify": True}
    assert cfg["users"][0]["user"]["token"] and path.stat().st_mode & 0o077 == 0


async def test_serve_writes_a_kubeconfig_that_clients_use_and_removes_it(tmp_path: pathlib.Path):
    path = tmp_path / "sandbox.kubeconfig"
    up = asyncio.Event()
    server = asyncio.create_task(serve(kubeconfig_path=path, on_ready=lambda k: up.set()))
    try:
        async with asyncio.timeout(10):
            await up.wait()
        cfg = k8s.Configuration()
        await k8s_config.load_kube_config(config_file=str(path), client_configuration=cfg)
        async with k8s.ApiClient(cfg) as api:
            names = [ns.metadata.name for ns in (await k8s.CoreV1Api(api).list_namespace()).items]
        assert "default" in names and "kube-system" in names
    finally:
        server.cancel()
        with pytest.raises(asyncio.CancelledError):
            await server
    assert not path.exists()  # a stale kubeconfig would point at a dead port
