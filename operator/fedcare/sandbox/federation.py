"""A whole federation on one machine, through the operator: the sandbox demo, the round tests
and the round-overhead benchmark all build it here.

On one emulated Kubernetes API: the hub (kopf, with round execution), and per hospital a
HospitalNode, a site agent (heartbeat, inventory, assignment answers and training pods),
and a process kubelet (a Node labelled ``fedcare.io/site=<name>``, which the HospitalNode's
``scheduling.nodeSelector`` targets). A ``hub`` kubelet runs the SuperLink. Every hospital's
synthetic dataset is a local PersistentVolume (hostPath) bound to the claim its
HospitalNode names; the hub's artifact store is one too, so the ServerApp's ``out-dir`` is
the same folder for the hub and for the SuperLink's pod. Nothing here is special-cased in
the hub or the agent: they create the manifests they create on a real cluster.

The hub and the sites share one API server here (the site cluster *is* the hub cluster);
the agents' pods go to the ``fedcare-training`` namespace.

Flower runs with TLS and SuperNode authentication by default: a dev OpenBao
(``sandbox/vault_setup.py``) holds the PKI, the hub's footprint rights and each site's
least-privilege identity; the hub gets its VaultClient (``fed.vault``, address ``fed.bao.addr``)
and each agent its own site-scoped client. Only without the OpenBao binary (or with
``tls=False``) does it fall back to plaintext Flower, saying so.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import logging
import pathlib
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import kopf

from ..api.hospital_node import AgentVersions
from ..api.resources import API_VERSION, site_namespace
from ..hub.aggregator import AggregatorConfig
from ..hub.context import HubContext
from ..hub.flower_runs import FlowerCLI
from ..hub.handlers import make_registry
from ..hub.release_service import ReleaseConfig
from ..hub.round_scheduler import RoundConfig
from ..hub.round_settings import default_app
from ..integrations.kube import Kube, Ref, RetryPolicy
from ..integrations.nvml import NVMLReader
from ..kopf_runner import run_kopf
from ..site.agent import SiteAgent
from ..site.heartbeat import Heartbeat
from ..site.privacy import SitePrivacy
from ..site.reporter import InventoryReporter
from ..site.work import SiteWork
from ..integrations.vault import VaultClient
from . import vault_setup
from .kubelet import ProcessKubelet
from .openbao import BaoMissing, bao_binary
from .vault_setup import SandboxVault
from .simulated_nvml import FakeNVML, gpus

log = logging.getLogger(__name__)

POLICY = RetryPolicy(attempts=3, base_delay=0.1, max_delay=1.0, timeout=10.0)
WORK_NAMESPACE = "fedcare-training"
ARTIFACT_CLAIM = "fedcare-artifacts"
SITE_LABEL = "fedcare.io/site"
#: Each sandbox hospital's privacy budget (its agent's --privacy-budget-epsilon) unless given.
DEFAULT_BUDGET = 10.0
TRAIN_IMAGE = ("ghcr.io/fedcare/ultrasound-train@sha256:"
               "b1844e262ceb52d3bc76564512d13303e63260f29bcf690357af563e591a0a59")


def synth(data: pathlib.Path, sites: int, images: int, holdout: int = 150, seed: int = 0) -> None:
    """Synthetic ultrasound datasets (workloads/ synth): data/site-a, site-b, …, data/holdout."""
    if (data / "holdout" / "labels.csv").is_file() and all(
            (data / f"site-{chr(97 + i)}" / "labels.csv").is_file() for i in range(sites)):
        return
    subprocess.run([sys.executable, "-m", "fedcare_workloads.cli", "synth", "--out", str(data), "--sites",
                    str(sites), "--images-per-site", str(images), "--holdout", str(holdout), "--seed", str(seed)],
                   check=True, stdout=subprocess.DEVNULL, timeout=600)


def hospital(name: str, *, gpu_count: int = 0, claim: str = "", lease: int = 10,
             labels: dict[str, str] | None = None, size: int = 0) -> dict[str, Any]:
    return {"apiVersion": API_VERSION, "kind": "HospitalNode",
            "metadata": {"name": name, "labels": {"fedcare.io/modality": "ultrasound", **(labels or {})}},
            "spec": {"displayName": f"Hospital {name}", "gpu": {"count": gpu_count},
                     "dataset": {"claimName": claim or f"dataset-{name}", "size": size},
                     "scheduling": {"nodeSelector": {SITE_LABEL: name},
                                    "tolerations": [{"key": SITE_LABEL, "operator": "Equal", "value": name,
                                                     "effect": "NoSchedule"}]},
                     "leaseDurationSeconds": lease}}


def round_manifest(name: str, *, sites: int, rounds: int, min_available: int | None = None,
                   epochs: int = 1, gpus_per_site: int = 0, holdout: str = "", namespace: str = "default",
                   **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "apiVersion": API_VERSION, "kind": "FederatedRound", "metadata": {"name": name, "namespace": namespace},
        "spec": {"participants": {"selector": {"matchLabels": {"fedcare.io/modality": "ultrasound"}},
                                  "minAvailable": min_available or sites, "maxParticipants": sites},
                 "rounds": rounds,
                 "strategy": {"name": "FedAvg", "fractionEvaluate": "0.0",
                              "config": {"server-eval-path": holdout} if holdout else {}},
                 "training": {"image": TRAIN_IMAGE, "epochs": epochs, "batchSize": 16, "learningRate": "0.002",
                              "gpusPerSite": gpus_per_site, "maxRestarts": 2},
                 "roundTimeoutSeconds": 300, "activeDeadlineSeconds": 1800}}
    body["spec"].update(spec)
    return body


async def local_volume(api: Kube, name: str, path: pathlib.Path, namespace: str, claim: str) -> None:
    """A hostPath PersistentVolume bound to ``namespace/claim`` (a pre-provisioned local volume)."""
    path.mkdir(parents=True, exist_ok=True)
    await api.create(Ref("v1", "persistentvolumes"), {
        "apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": name},
        "spec": {"capacity": {"storage": "10Gi"}, "accessModes": ["ReadWriteMany"],
                 "hostPath": {"path": str(path)}, "claimRef": {"namespace": namespace, "name": claim},
                 "persistentVolumeReclaimPolicy": "Retain"}})
    await api.create(Ref("v1", "persistentvolumeclaims", namespace), {
        "apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": claim, "namespace": namespace},
        "spec": {"accessModes": ["ReadWriteMany"], "volumeName": name,
                 "resources": {"requests": {"storage": "10Gi"}}}})


def _login(registry: kopf.OperatorRegistry, url: str, info: kopf.ConnectionInfo | None = None) -> None:
    @kopf.on.login(registry=registry)
    def login(**_: Any) -> kopf.ConnectionInfo:
        return info or kopf.ConnectionInfo(server=url, insecure=True, default_namespace="default")


@dataclass
class SiteHandle:
    name: str
    agent: SiteAgent
    kubelet: ProcessKubelet
    hub: Kube
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task | None = None
    kopf_task: asyncio.Task | None = None
    kopf_stop: asyncio.Event = field(default_factory=asyncio.Event)


class Federation:
    """Start with ``async with federation(url, workdir, sites) as fed``; see module doc."""

    def __init__(self, url: str, workdir: pathlib.Path, sites: list[str], *, site_gpus: dict[str, int] | None = None,
                 poll: float = 1.0, kubelet_kwargs: dict[str, Any] | None = None, site_kubelets: bool = True,
                 site_budgets: dict[str, float] | None = None, site_sizes: dict[str, int] | None = None,
                 kubeconfig: str | None = None, login: kopf.ConnectionInfo | None = None,
                 release: ReleaseConfig | None = None, tls: bool | None = None, inventory_poll: float = 1.0):
        self.url, self.workdir, self.sites = url, workdir, sites
        #: TLS + SuperNode authentication from a dev OpenBao; None: on when the binary is there.
        self.tls = tls
        self.bao: SandboxVault | None = None
        self.site_gpus = site_gpus or {}
        self.site_budgets = site_budgets or {}     # site -> privacy budget epsilon (its agent's setting)
        self.site_sizes = site_sizes or {}         # site -> registered dataset size (default: images)
        self.images = 0
        self.poll = poll
        #: The agents' inventory poll: 1 s so that tests see a GPU change at once; an agent's own
        #: default is 15 s (benchmarks use that: 18 reporters at 1 s are most of an idle sandbox's work).
        self.inventory_poll = inventory_poll
        self.site_kubelets = site_kubelets     # False: training pods are created but never run (benchmarks)
        self.kubelet_kwargs = {"backoff_base": 0.5, "backoff_cap": 5.0, "shutdown_grace": 5.0,
                               "lease_duration": 20, **(kubelet_kwargs or {})}
        # The emulator by default; a real API server with ``kubeconfig`` (its client
        # certificates) and ``login`` (the same, for kopf).
        self.kubeconfig, self.login = kubeconfig, login
        self.api = Kube.from_url(url, policy=POLICY)
        self.artifact_dir = workdir / "artifacts"
        self.data = workdir / "data"
        self.handles: dict[str, SiteHandle] = {}
        self.hub_kubelet: ProcessKubelet | None = None
        self.hub_task: asyncio.Task | None = None
        self.hub_stop = asyncio.Event()
        self.hub_ctx: HubContext | None = None
        self.release = release           # the hub's chain/signing configuration (sandbox/release.py)

    async def start(self, *, images: int = 120) -> None:
        """Data, kubelets, hub, enrollment, one agent per site; returns once every site is Ready."""
        await self.prepare(images=images)
        await self.start_kubelets()
        await self.start_hub()
        await self.wait_enrolled()
        for site in self.sites:
            await self.start_agent(site)
        await self.wait_sites_ready()

    async def connect(self) -> Kube:
        if self.kubeconfig:
            return await Kube.from_kubeconfig(self.kubeconfig, policy=POLICY)
        return Kube.from_url(self.url, policy=POLICY)

    def ledger_dir(self, site: str) -> pathlib.Path:
        return self.workdir / f"ledger-{site}"

    @property
    def vault(self) -> VaultClient | None:
        """The hub's VaultClient (hub policy: footprints, PKI issue, transit fedcare-release)."""
        return self.bao.hub if self.bao is not None else None

    def round_config(self) -> RoundConfig:
        return RoundConfig(flower=FlowerCLI(self.workdir / "flwr-home", timeout=120.0), app=default_app(),
                           aggregator=AggregatorConfig(artifact_dir=str(self.artifact_dir),
                                                       artifact_claim=ARTIFACT_CLAIM, insecure=not self.tls),
                           poll_interval=self.poll)

    async def start_vault(self) -> None:
        """A dev OpenBao for TLS rounds; without the binary, plaintext Flower with the reason."""
        if self.tls is False:
            log.warning("Sandbox federation without Vault (tls=False): Flower runs WITHOUT TLS or SuperNode "
                        "authentication")
            return
        try:
            bao_binary()
        except BaoMissing as err:
            if self.tls:
                raise
            log.warning("Sandbox federation: %s; Flower runs WITHOUT TLS or SuperNode authentication", err)
            self.tls = False
            return
        self.bao = await asyncio.to_thread(vault_setup.start, self.workdir / "openbao")
        self.tls = True
        log.info("Sandbox Vault (OpenBao) at %s: PKI, hub policy, a JWT identity per site", self.bao.addr)

    # -- pieces ----------------------------------------------------------------------------------
    async def prepare(self, *, images: int = 120, holdout: int = 150) -> None:
        """Namespaces, volumes, datasets (synthetic), HospitalNodes."""
        await asyncio.to_thread(synth, self.data, len(self.sites), images, holdout)
        self.images = images
        if self.bao is None and self.tls is not False:
            await self.start_vault()
        await self.api.create(Ref("v1", "namespaces"), {"apiVersion": "v1", "kind": "Namespace",
                                                        "metadata": {"name": WORK_NAMESPACE}})
        await local_volume(self.api, "fedcare-artifacts", self.artifact_dir, "default", ARTIFACT_CLAIM)
        for i, site in enumerate(self.sites):
            await local_volume(self.api, f"dataset-{site}", self.data / f"site-{chr(97 + i)}", WORK_NAMESPACE,
                               f"dataset-{site}")
            # the site's privacy ledger: its own storage, kept across rounds (site/privacy.py)
            await local_volume(self.api, f"ledger-{site}", self.ledger_dir(site), WORK_NAMESPACE,
                               f"privacy-ledger-{site}")
            await self.api.create(Ref(API_VERSION, "hospitalnodes"),
                                  hospital(site, gpu_count=self.site_gpus.get(site, 0),
                                           size=self.site_sizes.get(site, images)))

    async def start_hub(self) -> None:
        self.hub_stop = asyncio.Event()
        extra: dict[str, Any] = {"release": self.release} if self.release is not None else {}
        if self.bao is not None:
            extra.update(vault=self.bao.hub, vault_footprint=self.bao.footprint)
        self.hub_ctx = HubContext(kube=await self.connect(), round_config=self.round_config(), **extra)
        registry = make_registry(self.hub_ctx)
        _login(registry, self.url, self.login)
        self.hub_task = asyncio.create_task(run_kopf(registry=registry, standalone=True, stop_flag=self.hub_stop,
                                                     clusterwide=True))

    async def stop_hub(self) -> None:
        """Stop the hub operator (a crash as far as the rounds can tell: nothing is cleaned up)."""
        if self.hub_task is not None:
            self.hub_stop.set()
            await asyncio.wait_for(asyncio.gather(self.hub_task, return_exceptions=True), 30)
            self.hub_task = None

    async def start_kubelets(self) -> None:
        self.hub_kubelet = ProcessKubelet(self.api, "hub", self.workdir / "kubelet-hub", bind=None,
                                          labels={"fedcare.io/role": "hub"}, **self.kubelet_kwargs)
        await self.hub_kubelet.start()
        for site in self.sites:
            if not self.site_kubelets:
                self.handles[site] = SiteHandle(site, None, None,  # type: ignore[arg-type]
                                                await self.connect())
                continue
            kubelet = ProcessKubelet(self.api, f"node-{site}", self.workdir / f"kubelet-{site}", bind=None,
                                     gpus=self.site_gpus.get(site, 0), labels={SITE_LABEL: site},
                                     taints=[{"key": SITE_LABEL, "value": site, "effect": "NoSchedule"}],
                                     **self.kubelet_kwargs)
            await kubelet.start()
            self.handles[site] = SiteHandle(site, None, kubelet,  # type: ignore[arg-type]
                                            await self.connect())

    async def start_agent(self, site: str) -> None:
        h = self.handles[site]
        count = self.site_gpus.get(site, 0)
        reader = NVMLReader(FakeNVML(gpus(count))) if count else None
        reporter = InventoryReporter(h.hub, site, reader=reader, site_kube=h.hub,
                                     poll_interval=self.inventory_poll,
                                     versions=AgentVersions(agent="sandbox", flwr="1.42.0"))
        agent_id = f"{site}/agent-0"
        privacy = SitePrivacy(self.site_budgets.get(site, DEFAULT_BUDGET), ledger_claim=f"privacy-ledger-{site}")
        work = SiteWork(h.hub, h.hub, site, agent_id, namespace=WORK_NAMESPACE, insecure=not self.tls,
                        privacy=privacy, vault=self.bao.site_client(site) if self.bao is not None else None)
        h.agent = SiteAgent(site, h.hub, reporter, agent_id=agent_id, heartbeat=Heartbeat(h.hub, site, agent_id),
                            work=work)
        await h.agent.prepare()
        h.stop, h.kopf_stop = asyncio.Event(), asyncio.Event()
        registry = h.agent.registry()
        _login(registry, self.url, self.login)
        h.kopf_task = asyncio.create_task(run_kopf(registry=registry, standalone=True, stop_flag=h.kopf_stop,
                                                   namespaces=[site_namespace(site)]))
        h.task = asyncio.create_task(h.agent.run(h.stop))

    async def stop_agent(self, site: str) -> None:
        h = self.handles[site]
        h.stop.set()
        h.kopf_stop.set()
        await asyncio.wait_for(asyncio.gather(*(t for t in (h.task, h.kopf_task) if t), return_exceptions=True), 30)
        h.task = h.kopf_task = None

    async def wait_enrolled(self, timeout: float = 120.0) -> None:
        """Each site's hub namespace exists (an agent's kopf watches it from its start)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while loop.time() < deadline:
            found = [await self.api.get_or_none(Ref("v1", "namespaces", None, site_namespace(s))) for s in self.sites]
            if all(found):
                return
            await asyncio.sleep(0.2)
        raise TimeoutError(f"the sites were not enrolled within {timeout:.0f}s")

    async def wait_sites_ready(self, timeout: float = 420.0) -> None:
        """Generous: on a loaded 2-core machine the agents' first reports can take minutes."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        nodes: list[dict] = []
        while loop.time() < deadline:
            nodes = await self.api.list(Ref(API_VERSION, "hospitalnodes"))
            if len(nodes) >= len(self.sites) and all(
                    any(c["type"] == "Ready" and c["status"] == "True"
                        for c in (n.get("status") or {}).get("conditions", [])) for n in nodes):
                return
            await asyncio.sleep(0.3)
        why = "; ".join(f"{n['metadata']['name']}: " + next(
            (f"{c['reason']}: {c.get('message', '')[:120]}" for c in (n.get("status") or {}).get("conditions", [])
             if c["type"] == "Ready"), "no Ready condition") for n in nodes)
        raise TimeoutError(f"the sites were not Ready within {timeout:.0f}s ({why or 'no HospitalNode'})")

    async def close(self) -> None:
        for site in list(self.handles):
            if self.handles[site].task is not None:
                await self.stop_agent(site)
        await self.stop_hub()
        if self.hub_ctx is not None:
            await self.hub_ctx.close()
        kubelets = [h.kubelet for h in self.handles.values() if h.kubelet] + \
            ([self.hub_kubelet] if self.hub_kubelet else [])
        await asyncio.gather(*(k.stop() for k in kubelets), return_exceptions=True)
        for h in self.handles.values():
            await h.hub.close()
        await self.api.close()
        if self.bao is not None:
            await asyncio.to_thread(self.bao.stop)

    def processes(self) -> list[int]:
        kubelets = [h.kubelet for h in self.handles.values() if h.kubelet] + \
            ([self.hub_kubelet] if self.hub_kubelet else [])
        return [pid for k in kubelets for pid in k.processes]


@contextlib.asynccontextmanager
async def federation(url: str, workdir: pathlib.Path, sites: list[str], *, images: int = 120,
                     **kwargs: Any) -> AsyncIterator[Federation]:
    fed = Federation(url, workdir, sites, **kwargs)
    try:
        if fed.kubeconfig:
            await fed.api.close()
            fed.api = await fed.connect()
        await fed.start(images=images)
        yield fed
    finally:
        await fed.close()


def copy_manifest(body: dict[str, Any]) -> dict[str, Any]:
    return copy.deepcopy(body)
