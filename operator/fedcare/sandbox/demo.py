"""``make demo``: the whole control plane on one machine, narrated.

An emulated Kubernetes API (no cluster needed), the real hub operator (kopf), and one real
site agent per hospital with simulated GPUs. The demo enrolls the hospitals, shows their
heartbeats and GPU health, admits a FederatedRound, lets the sites answer their work, loses a
site and gets it back, trains a federated model on synthetic ultrasound data with the Flower
app in workloads/ (when it is installed), releases it (verified, signed and anchored on a local
anvil chain by the hub, then checked with `fedcare verify`), and finally removes a hospital.
While it runs, `kubectl --kubeconfig .sandbox/kubeconfig get fedcare` works from another shell.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import copy
import logging
import pathlib
import time
from typing import Any

import kopf
import yaml

from ..api.hospital_node import AgentVersions
from ..api.resources import API_VERSION, site_namespace
from ..hub.context import HubContext
from ..hub.handlers import make_registry
from ..integrations.kube import Kube, Ref, RetryPolicy
from ..integrations.nvml import NVMLReader
from ..kopf_runner import run_kopf
from ..site.agent import SiteAgent
from ..site.heartbeat import Heartbeat
from ..site.reporter import InventoryReporter
from .emulator import fedcare_emulator
from .kubeconfig import write_kubeconfig
from .simulated_nvml import FakeNVML, gpus
from . import release as sandbox_release
from .anvil import run_anvil
from .secure_training import run_training_tls as run_training   # TLS + SuperNode auth, material from Vault

ROOT = pathlib.Path(__file__).resolve().parents[3]
LEASE = 10
POLICY = RetryPolicy(attempts=3, base_delay=0.1, max_delay=1.0, timeout=5.0)


def say(text: str) -> None:
    print(f"\n== {text}", flush=True)


def table(nodes: list[dict[str, Any]]) -> None:
    def cond(obj, ctype):
        return next((c for c in obj.get("status", {}).get("conditions", []) if c["type"] == ctype), {})

    print(f"   {'NAME':8} {'PHASE':10} {'READY':6} {'AVAILABLE':10} {'GPUS':5} {'REASON':18} MESSAGE")
    for n in sorted(nodes, key=lambda n: n["metadata"]["name"]):
        st, ready = n.get("status", {}), cond(n, "Ready")
        print(f"   {n['metadata']['name']:8} {st.get('phase', ''):10} {ready.get('status', ''):6} "
              f"{cond(n, 'Available').get('status', ''):10} {st.get('gpuSummary', '-'):5} "
              f"{ready.get('reason', ''):18} {ready.get('message', '')[:70]}")


class Operators:
    """kopf registries running in this process against the sandbox API."""

    def __init__(self, url: str):
        self.url, self.tasks, self.stops = url, [], []

    def start(self, registry: kopf.OperatorRegistry, **scope: Any) -> asyncio.Event:
        url = self.url

        @kopf.on.login(registry=registry)
        def login(**_: Any) -> kopf.ConnectionInfo:
            return kopf.ConnectionInfo(server=url, insecure=True, default_namespace="default")

        stop = asyncio.Event()
        scope = scope or {"clusterwide": True}
        # run_kopf: stopping one kopf.operator() would cancel every other task in this loop
        self.tasks.append(asyncio.create_task(run_kopf(registry=registry, standalone=True, stop_flag=stop,
                                                       **scope)))
        self.stops.append(stop)
        return stop

    async def close(self) -> None:
        for stop in self.stops:
            stop.set()
        await asyncio.wait_for(asyncio.gather(*self.tasks, return_exceptions=True), 20)


class Site:
    """One hospital's agent. A "lost" agent stops its heartbeat and inventory loops, as a cut
    network would; its kopf registry (assignment answers) runs for the whole demo."""

    def __init__(self, url: str, name: str, nvml: FakeNVML, operators: Operators):
        self.name, self.nvml, self.operators, self.url = name, nvml, operators, url
        self.task: asyncio.Task | None = None
        self.kopf_started = False

    async def start(self) -> None:
        self.hub = Kube.from_url(self.url, policy=POLICY)
        reporter = InventoryReporter(self.hub, self.name, reader=NVMLReader(self.nvml), poll_interval=1.0,
                                     versions=AgentVersions(agent="sandbox", flwr="1.42.0"))
        agent_id = f"{self.name}/agent-0"
        self.agent = SiteAgent(self.name, self.hub, reporter, agent_id=agent_id,
                               heartbeat=Heartbeat(self.hub, self.name, agent_id))
        await self.agent.prepare()
        self.stop = asyncio.Event()
        if not self.kopf_started:
            self.operators.start(self.agent.registry(), namespaces=[site_namespace(self.name)])
            self.kopf_started = True
        self.task = asyncio.create_task(self.agent.run(self.stop))

    async def halt(self) -> None:
        if self.task is None:
            return
        self.stop.set()
        await asyncio.gather(self.task, return_exceptions=True)
        self.task = None
        await self.hub.close()


async def wait_for(api: Kube, what: str, check, timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = await check()
        if result:
            return result
        await asyncio.sleep(0.3)
    raise RuntimeError(f"the sandbox did not reach '{what}' within {timeout:.0f}s")


async def demo(sites: list[str], keep: float, workdir: pathlib.Path, train: bool = True) -> int:
    workdir.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as stack:
        chain = stack.enter_context(run_anvil()) if train and sandbox_release.available() else None
        return await _demo(sites, keep, workdir, train, chain)


async def _demo(sites: list[str], keep: float, workdir: pathlib.Path, train: bool, chain: Any) -> int:
    release_cfg = sandbox_release.release_config(chain.url, chain.chain_id) if chain else None
    async with fedcare_emulator(max_history=1000) as k:
        kubeconfig = write_kubeconfig(k.url, workdir / "kubeconfig")
        say(f"Sandbox Kubernetes API at {k.url} (kubeconfig: {kubeconfig})")
        api = Kube.from_url(k.url, policy=POLICY)
        ops = Operators(k.url)
        extra = {"release": release_cfg} if release_cfg else {}
        ops.start(make_registry(HubContext(kube=Kube.from_url(k.url, policy=POLICY), **extra)))
        nodes_ref = Ref(API_VERSION, "hospitalnodes")
        agents: dict[str, Site] = {}
        try:
            say(f"Enrolling hospitals {', '.join(sites)} (kubectl apply -f examples/hospitalnode-*.yaml)")
            template = yaml.safe_load((ROOT / "examples" / "hospitalnode-rouen.yaml").read_text())
            for name in sites:
                body = copy.deepcopy(template)
                body["metadata"]["name"] = name
                body["spec"].update(displayName=f"Hospital {name}", leaseDurationSeconds=LEASE)
                await api.create(nodes_ref, body)

            async def listed():
                return await api.list(nodes_ref)

            async def all_enrolled():
                items = await listed()
                return items if all(any(c["type"] == "Enrolled" and c["status"] == "True"
                                        for c in i.get("status", {}).get("conditions", [])) for i in items) else None

            table(await wait_for(api, "every site enrolled", all_enrolled))

            say("Starting one site agent per hospital (simulated NVML; the last site has a GPU with ECC errors)")
            for i, name in enumerate(sites):
                fake = FakeNVML(gpus(2))
                if i == len(sites) - 1:
                    fake.gpus[1].ecc_uncorrectable = 3
                agents[name] = Site(k.url, name, fake, ops)
                await agents[name].start()

            async def all_reported():
                items = await listed()
                return items if all(i.get("status", {}).get("gpuSummary") and
                                    any(c["type"] == "Available" and c["status"] == "True"
                                        for c in i["status"].get("conditions", [])) for i in items) else None

            table(await wait_for(api, "every site heartbeating", all_reported))

            say("Admitting a FederatedRound that needs 2 sites with 1 free GPU each")
            round_body = yaml.safe_load((ROOT / "examples" / "federatedround-ultrasound.yaml").read_text())
            await api.create(Ref(API_VERSION, "federatedrounds", "default"), round_body)
            rnd = await wait_for(api, "round admitted", lambda: _with_status(
                api, Ref(API_VERSION, "federatedrounds", "default", round_body["metadata"]["name"])))
            ready = next(c for c in rnd["status"]["conditions"] if c["type"] == "Ready")
            print(f"   eligibleSites={rnd['status'].get('eligibleSites')}  Ready={ready['status']} "
                  f"({ready['reason']}): {ready['message']}")

            say("Each site answers its RoundAssignment (the last one asks for more GPUs than a site has free)")
            digest = round_body["spec"]["training"]["image"]
            for i, name in enumerate(sites):
                need = 4 if i == len(sites) - 1 else 1
                await api.create(Ref(API_VERSION, "roundassignments", site_namespace(name)), {
                    "apiVersion": API_VERSION, "kind": "RoundAssignment",
                    "metadata": {"name": f"{round_body['metadata']['name']}-{name}"},
                    "spec": {"roundRef": {"namespace": "default", "name": round_body["metadata"]["name"]},
                             "nodeName": name, "training": {"image": digest, "gpusPerSite": need}}})
            for name in sites:
                ref = Ref(API_VERSION, "roundassignments", site_namespace(name),
                          f"{round_body['metadata']['name']}-{name}")
                ra = await wait_for(api, f"{name} answered", lambda: _with_status(api, ref, "phase"))
                print(f"   {name:8} {ra['status']['phase']:9} {ra['status']['message']}")

            lost = sites[1] if len(sites) > 1 else sites[0]
            say(f"The agent of {lost} stops (network cut): after one lease duration ({LEASE}s) the hub marks it "
                "Unknown")
            await agents[lost].halt()
            table(await wait_for(api, f"{lost} unavailable", lambda: _available_is(api, lost, "Unknown"),
                                 timeout=LEASE + 15))
            say(f"The agent of {lost} comes back")
            await agents[lost].start()
            table(await wait_for(api, f"{lost} available", lambda: _available_is(api, lost, "True")))

            if train and await run_training(sites, workdir / "training"):
                await _release(api, release_cfg, workdir / "training" / "out")

            gone = sites[-1]
            say(f"Removing hospital {gone}: the hub deletes its namespace and identity; its agent stops")
            await api.delete(Ref(API_VERSION, "hospitalnodes", None, gone))
            await wait_for(api, f"{gone} agent stopped", lambda: _done(agents[gone]), timeout=30)
            print(f"   agent: {agents[gone].agent.gone}")
            ns = await api.get_or_none(Ref("v1", "namespaces", None, site_namespace(gone)))
            print(f"   namespace {site_namespace(gone)}: {'still there' if ns else 'deleted'}")
            table(await listed())
            if keep > 0:
                say(f"Sandbox stays up for {keep:.0f}s: kubectl --kubeconfig {kubeconfig} get fedcare")
                await asyncio.sleep(keep)
            say("Demo complete")
            return 0
        finally:
            for site in agents.values():
                await site.halt()
            await ops.close()
            await api.close()


async def _release(api: Kube, cfg: Any, out: pathlib.Path) -> None:
    if cfg is None:
        say("Release skipped: anvil is not installed (make contracts-deps)")
        return
    address = await sandbox_release.deploy(cfg)
    say(f"Local chain: anvil at {cfg.rpc_url}; ModelRegistry deployed at {address} (fedcare chain deploy)")
    say("Releasing the trained model: the hub verifies its sha256 and provenance, signs the release digest, "
        "anchors it on chain and promotes it to Staging")
    obj = await sandbox_release.release_model(api, cfg, out, say)
    if obj is None:
        return
    st = obj["status"]
    print(f"   phase={st.get('phase')} stage={st.get('stage')} tx={st['anchor']['txHash']} "
          f"block={st['anchor']['blockNumber']} provenanceRoot={st.get('provenanceRoot', '')[:16]}…")
    say(f"Anyone can now check it: fedcare verify {out / 'model.safetensors'} --rpc {cfg.rpc_url} "
        f"--contract {address}")
    from ..cli import main as cli_main
    code = await asyncio.to_thread(cli_main, ["verify", str(out / "model.safetensors"), "--rpc", cfg.rpc_url,
                                              "--contract", address])
    print(f"   fedcare verify exit status {code}")


async def _with_status(api: Kube, ref: Ref, field: str = "conditions") -> Any:
    obj = await api.get_or_none(ref)
    return obj if obj and (obj.get("status") or {}).get(field) else None


async def _available_is(api: Kube, site: str, status: str) -> Any:
    items = await api.list(Ref(API_VERSION, "hospitalnodes"))
    node = next((i for i in items if i["metadata"]["name"] == site), None)
    ok = node and any(c["type"] == "Available" and c["status"] == status
                      for c in node.get("status", {}).get("conditions", []))
    return items if ok else None


async def _done(site: Site) -> bool:
    return site.task is None or site.task.done()


def main(args: argparse.Namespace) -> int:
    logging.getLogger().setLevel(logging.WARNING)     # the narration is the output; problems still show
    for noisy in ("kopf", "aiohttp.access", "fedcare") if not args.verbose else ("aiohttp.access",):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    sites = [s.strip() for s in args.sites.split(",") if s.strip()]
    return asyncio.run(demo(sites, args.seconds, ROOT / ".sandbox", train=args.train))
