"""``fedcare agent --site NAME``: the site agent process."""

from __future__ import annotations

import asyncio
import importlib.metadata
import logging
import os
import socket
from typing import Any

from .. import __version__, metrics
from ..api import resources as r
from ..api.hospital_node import AgentVersions
from ..integrations.kube import Kube, KubeError
from ..integrations.nvml import NVMLReader
from ..kopf_runner import run_kopf
from .agent import SiteAgent
from .heartbeat import SiteGone
from .reporter import InventoryReporter
from .privacy import SitePrivacy
from .work import SiteWork

log = logging.getLogger(__name__)


def _flwr_version() -> str:
    try:
        return importlib.metadata.version("flwr")
    except importlib.metadata.PackageNotFoundError:
        return ""


async def _site_cluster(kubeconfig: str | None) -> Kube | None:
    if kubeconfig == "":
        return None
    try:
        return await Kube.from_kubeconfig(kubeconfig)
    except Exception as err:  # noqa: BLE001 - no site cluster config is a supported mode
        log.warning("No access to the site cluster (%s): allocatable GPUs will not be reported", err)
        return None


async def _kubernetes_version(site: Kube | None) -> str:
    if site is None:
        return ""
    try:
        return str((await site.request("GET", "/version")).get("gitVersion", ""))
    except KubeError:
        return ""


async def _hub_from_vault(site: str):
    """The hub API client from the short-lived token the hub stores in Vault (hub_credential)."""
    from ..integrations.secrets_backend import vault_from_env
    from .hub_credential import HubCredential

    vault = vault_from_env(site=site)
    if vault is None:
        raise SystemExit("--hub-credential vault needs secrets.backend=vault and FEDCARE_VAULT_ADDR")
    cred = HubCredential(vault, site)
    await asyncio.to_thread(cred.refresh)
    return cred, cred.connect()


def _site_vault(site: str):
    """The agent's site-scoped Vault client (its SuperNode key for TLS rounds), or None."""
    from ..integrations.secrets_backend import vault_from_env

    return vault_from_env(site=site)


async def run(site: str, hub_kubeconfig: str, liveness: str, site_kubeconfig: str | None,
              metrics_address: str = "", hub_credential: str = "kubeconfig",
              work_namespace: str = "fedcare-training", insecure_flower: bool = False,
              privacy: SitePrivacy | None = None) -> int:
    server = metrics.serve(metrics_address, metrics.build_registry("agent"))
    try:
        return await _run(site, hub_kubeconfig, liveness, site_kubeconfig, hub_credential, work_namespace,
                          insecure_flower, privacy)
    finally:
        if server is not None:
            server.close()


async def _run(site: str, hub_kubeconfig: str, liveness: str, site_kubeconfig: str | None,
               hub_credential: str = "kubeconfig", work_namespace: str = "fedcare-training",
               insecure_flower: bool = False, privacy: SitePrivacy | None = None) -> int:
    cred = None
    if hub_credential == "vault":
        cred, hub = await _hub_from_vault(site)
    else:
        hub = await Kube.from_kubeconfig(hub_kubeconfig)
    site_kube = await _site_cluster(site_kubeconfig)
    versions = AgentVersions(agent=__version__, kubernetes=await _kubernetes_version(site_kube),
                             flwr=_flwr_version())
    reader = NVMLReader(node_name=os.environ.get("NODE_NAME", ""))
    agent_id = f"{site}/{os.environ.get('POD_NAME') or socket.gethostname()}"
    vault = cred.vault if cred is not None else _site_vault(site)
    work = SiteWork(hub, site_kube, site, agent_id, namespace=work_namespace, insecure=insecure_flower,
                    privacy=privacy, vault=vault) if site_kube is not None else None
    agent = SiteAgent(site, hub, InventoryReporter(hub, site, reader=reader, site_kube=site_kube,
                                                   versions=versions), agent_id=agent_id, work=work)
    try:
        await agent.prepare()
    except SiteGone as err:
        log.error("%s: enroll it on the hub first (kubectl apply -f a HospitalNode named %s)", err, site)
        return 2
    stop = asyncio.Event()
    registry = agent.registry(hub_kubeconfig=None if cred else hub_kubeconfig)
    if cred is not None:
        import kopf

        @kopf.on.login(registry=registry)
        def login(**kwargs: Any) -> kopf.ConnectionInfo:    # the current token; kopf asks again on 401
            return cred.login(**kwargs)

        asyncio.create_task(cred.keep_fresh(stop), name="hub-credential")
    try:
        operator = asyncio.create_task(run_kopf(
            registry=registry, standalone=True, namespaces=[r.site_namespace(site)],
            liveness_endpoint=liveness or None, stop_flag=stop))
        operator.add_done_callback(lambda _: stop.set())   # kopf handles SIGTERM: then we stop too
        # run_kopf, not kopf.operator: on exit the latter cancels every task in the loop, ours too
        await agent.run(stop)
        await operator
    finally:
        reader.shutdown()
        await hub.close()
        if site_kube is not None:
            await site_kube.close()
    return 3 if agent.gone else 0


def run_agent(*, site: str, hub_kubeconfig: str, liveness: str = "", site_kubeconfig: str | None = None,
              metrics_address: str = "", hub_credential: str = "kubeconfig",
              work_namespace: str = "fedcare-training", insecure_flower: bool = False,
              privacy: SitePrivacy | None = None) -> int:
    return asyncio.run(run(site, hub_kubeconfig, liveness, site_kubeconfig, metrics_address, hub_credential,
                           work_namespace, insecure_flower, privacy))
