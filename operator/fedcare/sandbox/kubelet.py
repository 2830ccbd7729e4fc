"""A process kubelet for the sandbox: a Kubernetes Node whose containers are local processes.

``fedcare sandbox kubelet --kubeconfig K --node NAME --dir D [--gpus N]`` (or
:class:`ProcessKubelet` / :func:`running_kubelet` in Python) registers the Node ``NAME`` and
runs the Pods bound to it, against the sandbox emulator or a real API server alike. Every
API call goes through :class:`fedcare.integrations.kube.Kube` (timeouts, bounded retries).

Public API (stable; the hub's round tests and ``fedcare sandbox demo`` use it)
--------------------------------------------------------------------------------
``ProcessKubelet(kube, node, directory, *, gpus=0, cpu=None, memory=None, max_pods=110,
labels=None, taints=None, bind=None, backoff_base=1.0, backoff_cap=30.0, shutdown_grace=10.0,
lease_duration=40, status_interval=30.0)``
    ``await k.start()`` claims a pod network, registers the Node and starts watching;
    ``await k.stop()`` stops every pod's processes (SIGTERM, SIGKILL after the pod's grace
    period capped at ``shutdown_grace``) and marks the Node NotReady. ``k.network.cidr``,
    ``k.pod_ip(ns, name)``, ``k.log_path(ns, name, container)``, ``k.processes`` (the pids of
    the running containers' process groups).
``running_kubelet(kube, node, directory, **kwargs)``: ``async with`` start/stop.
``main(argv)``: the command line (SIGTERM/SIGINT stop it cleanly).

What it does
------------
* **Node**: labels ``kubernetes.io/hostname``, ``kubernetes.io/os``, ``kubernetes.io/arch``,
  ``sandbox.fedcare.io/process-kubelet=true`` plus ``labels``; ``taints``; capacity and
  allocatable ``cpu``, ``memory``, ``pods`` and, with ``gpus`` > 0, ``nvidia.com/gpu``
  (simulated: a container that requests them gets ``NVIDIA_VISIBLE_DEVICES``; a pod asking for
  more than are free fails admission as on a real kubelet, ``UnexpectedAdmissionError``).
  Kept Ready by status heartbeats and a Lease in ``kube-node-lease`` (``kubelet_node.py``).
* **Pods** bound to the node (``spec.nodeName``): each container is a process group started
  through a small wrapper (``kubelet_shim.py``) that dies, taking its group with it, when
  the kubelet dies; env (value, fieldRef, secretKeyRef, configMapKeyRef, envFrom), ``$(VAR)``,
  volumes (emptyDir, configMap, secret, downwardAPI, persistentVolumeClaim, hostPath) as
  folders under ``DIR`` (``kubelet_spec.py``), workingDir. Status: phase, podIP,
  containerStatuses (running/terminated with exit code and reason, waiting with reason,
  restartCount, lastState), conditions Ready/ContainersReady/Initialized/PodScheduled/
  PodReadyToStartContainers; restartPolicy with capped back-off (``kubelet_pod.py``).
* **Deletion**: a pod with a ``deletionTimestamp`` gets SIGTERM, SIGKILL after its
  ``deletionGracePeriodSeconds``, then the kubelet deletes the object with
  ``gracePeriodSeconds=0`` (as a real kubelet); a pod that vanished outright (an API server
  without graceful pod deletion) is stopped the same way with its
  ``terminationGracePeriodSeconds``.
* **Images** map to local environments through one table (``kubelet_images.py``); an image
  not in it waits with ``ErrImagePull`` and a message naming the table, never runs.
* **Networking and paths**: the only sandbox-only translation (per-pod loopback IPs,
  ``0.0.0.0:PORT`` binds, Service DNS names, mount paths) is in ``kubelet_translate.py``.
* **Logs**: each container start writes ``DIR/pods/<ns>_<pod>_<uid>/logs/<container>/<restart>.log``
  (stdout and stderr). ``kubectl logs`` is not served: it needs the API server to proxy
  to a kubelet HTTPS endpoint, which the emulator cannot do.
* **Scheduling**: on a real control plane the real scheduler binds pods. The emulator has no
  scheduler, so there the kubelet is its stand-in (``bind=None`` detects which: it binds
  only while no ``kube-system/kube-scheduler`` Lease exists): it binds an unscheduled pod
  (``schedulerName`` default) whose ``nodeSelector``, required node affinity (``In``,
  ``NotIn``, ``Exists``, ``DoesNotExist`` on labels), tolerations and ``nvidia.com/gpu``
  request fit this node, with a resourceVersion precondition so two kubelets never both
  bind it. It does not weigh nodes (the first fitting kubelet wins) nor check cpu/memory.
* **Not supported** (each reported on the pod, never silently skipped): initContainers
  (``CreateContainerConfigError``), other volume types, resourceFieldRef; probes are not run
  (logged: a running container is ready); ``securityContext`` is logged and ignored (a
  process runs as the kubelet's user); ``readOnly`` is enforced for configMap/secret/
  downwardAPI files only. ConfigMap/Secret volume files are written once per pod.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import pathlib
import signal
from collections.abc import AsyncIterator
from typing import Any

from ..integrations.kube import Conflict, Kube, KubeError, NotFound, Ref
from . import kubelet_node as kn
from .kubelet_pod import TERMINAL, PodWorker, gpu_request
from .kubelet_translate import PodNetwork

__all__ = ["ProcessKubelet", "running_kubelet", "main", "fits"]

log = logging.getLogger(__name__)
PODS = Ref("v1", "pods")
MAX_BACKOFF = 10.0


class GPUs:
    """Simulated GPU indices 0..N-1, handed to pods by uid."""

    def __init__(self, count: int):
        self.count = count
        self.held: dict[str, list[int]] = {}

    @property
    def free(self) -> int:
        return self.count - sum(len(v) for v in self.held.values())

    def allocate(self, uid: str, n: int) -> list[int] | None:
        if uid in self.held:
            return self.held[uid]
        taken = {i for v in self.held.values() for i in v}
        free = [i for i in range(self.count) if i not in taken]
        if n > len(free):
            return None
        self.held[uid] = free[:n]
        return self.held[uid]

    def release(self, uid: str) -> None:
        self.held.pop(uid, None)


def _tolerates(tolerations: list[dict[str, Any]], taint: dict[str, Any]) -> bool:
    for t in tolerations:
        if t.get("effect") and t["effect"] != taint.get("effect"):
            continue
        if not t.get("key"):
            if t.get("operator") == "Exists":
                return True
            continue
        if t["key"] != taint.get("key"):
            continue
        if t.get("operator") == "Exists" or t.get("value", "") == taint.get("value", ""):
            return True
    return False


def _match_expression(expr: dict[str, Any], labels: dict[str, str]) -> bool:
    key, op, values = expr.get("key"), expr.get("operator"), expr.get("values") or []
    if op == "In":
        return labels.get(key) in values
    if op == "NotIn":
        return labels.get(key) not in values
    if op == "Exists":
        return key in labels
    if op == "DoesNotExist":
        return key not in labels
    return False  # Gt/Lt and field expressions: not evaluated, so never assumed to fit


def fits(pod: dict[str, Any], node: dict[str, Any], gpus_free: int) -> tuple[bool, str]:
    """Whether the emulator's scheduler stand-in may bind ``pod`` to ``node`` (and why not)."""
    spec = pod.get("spec") or {}
    labels = node["metadata"].get("labels") or {}
    for key, value in (spec.get("nodeSelector") or {}).items():
        if labels.get(key) != value:
            return False, f"nodeSelector {key}={value} does not match"
    required = (((spec.get("affinity") or {}).get("nodeAffinity") or {})
                .get("requiredDuringSchedulingIgnoredDuringExecution") or {})
    terms = required.get("nodeSelectorTerms") or []
    if terms and not any(all(_match_expression(e, labels) for e in term.get("matchExpressions") or [])
                         for term in terms):
        return False, "required node affinity does not match"
    for taint in (node.get("spec") or {}).get("taints") or []:
        if taint.get("effect") in ("NoSchedule", "NoExecute") and not _tolerates(spec.get("tolerations") or [], taint):
            return False, f"untolerated taint {taint.get('key')}"
    need = gpu_request(pod)
    if need > gpus_free:
        return False, f"needs {need} {kn.GPU}, {gpus_free} free"
    return True, ""


class ProcessKubelet:
    """See the module docstring."""

    def __init__(self, kube: Kube, node: str, directory: str | os.PathLike[str], *, gpus: int = 0,
                 cpu: str | None = None, memory: str | None = None, max_pods: int = 110,
                 labels: dict[str, str] | None = None, taints: list[dict[str, str]] | None = None,
                 bind: bool | None = None, backoff_base: float = 1.0, backoff_cap: float = 30.0,
                 shutdown_grace: float = 10.0, lease_duration: int = 40, status_interval: float = 30.0):
        self.kube, self.node_name = kube, node
        self.dir = pathlib.Path(directory).resolve()
        self.gpus = GPUs(gpus)
        self.capacity = kn.capacity(cpu=cpu, memory=memory, pods=max_pods, gpus=gpus)
        self.labels, self.taints = dict(labels or {}), list(taints or [])
        self.bind = bind
        self.backoff_base, self.backoff_cap, self.shutdown_grace = backoff_base, backoff_cap, shutdown_grace
        self.lease_duration, self.status_interval = lease_duration, status_interval
        self.network: PodNetwork | None = None  # type: ignore[assignment]
        self.node: dict[str, Any] = {}
        self.workers: dict[str, PodWorker] = {}
        self.finished: set[str] = set()        # uids whose deletion this kubelet completed
        self.processes: set[int] = set()
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = False

    # ---- public -------------------------------------------------------------------------
    async def start(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        self.network = PodNetwork(await kn.claim_pod_network(self.kube, self.node_name))
        body = kn.node_body(self.node_name, labels=self.labels, taints=self.taints, pod_cidr=self.network.cidr)
        self.node = await kn.register(self.kube, body, kn.node_status(self.capacity, port=0))
        await kn.renew_lease(self.kube, self.node, self.lease_duration)
        log.info("Node %s ready: pod network %s, %s", self.node_name, self.network.cidr,
                 ", ".join(f"{k}={v}" for k, v in self.capacity.items()))
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._heartbeats(), name=f"kubelet-{self.node_name}-heartbeats"),
                       loop.create_task(self._watch_pods(), name=f"kubelet-{self.node_name}-pods"),
                       loop.create_task(self._binder(), name=f"kubelet-{self.node_name}-binder")]

    async def stop(self) -> None:
        """Stop every container (orphan-free), then the loops; mark the Node NotReady."""
        self._stopping = True
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        workers = list(self.workers.values())
        for w in workers:
            w.shutdown = True
            w.wake.set()
        tasks = [w.task for w in workers if w.task is not None]
        if tasks:
            done, pending = await asyncio.wait(tasks, timeout=self.shutdown_grace + 10)
            for t in pending:
                t.cancel()
            for t in pending:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await t
        if self.node:
            with contextlib.suppress(KubeError, asyncio.TimeoutError):
                await asyncio.wait_for(self.kube.patch(
                    Ref("v1", "nodes", None, self.node_name),
                    {"status": {"conditions": [kn.ready_condition(False, "the sandbox process kubelet stopped")]}},
                    status=True), timeout=3)
        log.info("Kubelet %s stopped", self.node_name)

    def pod_ip(self, namespace: str, name: str) -> str | None:
        w = self._worker(namespace, name)
        return w.ip if w else None

    def log_path(self, namespace: str, name: str, container: str) -> pathlib.Path | None:
        """The newest log file of a container (None before its first start)."""
        w = self._worker(namespace, name)
        if w is None or container not in w.containers:
            return None
        path = w.dir / "logs" / container / f"{w.containers[container].restart_count}.log"
        return path if path.exists() else None

    def _worker(self, namespace: str, name: str) -> PodWorker | None:
        return next((w for w in self.workers.values() if (w.namespace, w.name) == (namespace, name)), None)

    # ---- pods ---------------------------------------------------------------------------
    def forget(self, worker: PodWorker) -> None:
        if self.workers.get(worker.uid) is worker:
            del self.workers[worker.uid]
        if worker.deleting:
            self.finished.add(worker.uid)

    def _on_pod(self, etype: str, pod: dict[str, Any]) -> None:
        uid = pod["metadata"].get("uid", "")
        worker = self.workers.get(uid)
        if etype == "DELETED":
            if worker is not None:
                worker.deleted()
            self.finished.discard(uid)
            return
        if worker is not None:
            worker.update(pod)
        elif uid not in self.finished and not self._stopping:
            worker = PodWorker(self, pod)
            self.workers[uid] = worker
            worker.task = asyncio.get_running_loop().create_task(worker.run(), name=f"pod-{uid}")

    async def _watch_pods(self) -> None:
        selector = f"spec.nodeName={self.node_name}"
        backoff, version = 1.0, ""
        while True:
            try:
                if not version:
                    listing = await self.kube.request("GET", PODS.path, query={"fieldSelector": selector})
                    seen = set()
                    for pod in listing.get("items") or []:
                        seen.add(pod["metadata"]["uid"])
                        self._on_pod("ADDED", pod)
                    for uid, w in list(self.workers.items()):
                        if uid not in seen:
                            w.deleted()
                    version = (listing.get("metadata") or {}).get("resourceVersion") or ""
                async for etype, obj in self.kube.watch(PODS, field_selector=selector, resource_version=version):
                    if etype == "ERROR":
                        version = ""
                        break
                    version = (obj.get("metadata") or {}).get("resourceVersion") or version
                    if etype in ("ADDED", "MODIFIED", "DELETED"):
                        self._on_pod(etype, obj)
                backoff = 1.0
            except KubeError as err:
                log.warning("Pod watch of node %s failed (%s); retrying in %.0fs", self.node_name, err, backoff)
                version = ""
                await asyncio.sleep(backoff)
                backoff = min(MAX_BACKOFF, backoff * 2)

    # ---- the emulator's scheduler stand-in ----------------------------------------------
    async def _should_bind(self) -> bool:
        if self.bind is not None:
            return self.bind
        lease = await self.kube.get_or_none(Ref(kn.LEASES, "leases", "kube-system", "kube-scheduler"))
        return lease is None

    async def _binder(self) -> None:
        backoff, version = 1.0, ""
        selector = "spec.nodeName="
        while True:
            try:
                if not await self._should_bind():
                    version = ""
                    await asyncio.sleep(30)
                    continue
                if not version:
                    listing = await self.kube.request("GET", PODS.path, query={"fieldSelector": selector})
                    for pod in listing.get("items") or []:
                        await self._maybe_bind(pod)
                    version = (listing.get("metadata") or {}).get("resourceVersion") or ""
                async for etype, obj in self.kube.watch(PODS, field_selector=selector, resource_version=version,
                                                        timeout_seconds=60):
                    if etype == "ERROR":
                        version = ""
                        break
                    version = (obj.get("metadata") or {}).get("resourceVersion") or version
                    if etype in ("ADDED", "MODIFIED"):
                        await self._maybe_bind(obj)
                backoff = 1.0
            except KubeError as err:
                log.warning("Binder of node %s failed (%s); retrying in %.0fs", self.node_name, err, backoff)
                version = ""
                await asyncio.sleep(backoff)
                backoff = min(MAX_BACKOFF, backoff * 2)

    async def _maybe_bind(self, pod: dict[str, Any]) -> None:
        spec, md = pod.get("spec") or {}, pod["metadata"]
        if (spec.get("nodeName") or md.get("deletionTimestamp")
                or (pod.get("status") or {}).get("phase") in TERMINAL
                or spec.get("schedulerName", "default-scheduler") != "default-scheduler"):
            return
        live = [w for w in self.workers.values() if not w.terminal]
        if len(live) >= int(self.capacity["pods"]):
            return
        ok, why = fits(pod, self.node, self.gpus.free)
        if not ok:
            log.debug("Not binding %s/%s to %s: %s", md.get("namespace"), md.get("name"), self.node_name, why)
            return
        try:
            await self.kube.patch(Ref("v1", "pods", md["namespace"], md["name"]),
                                  {"metadata": {"resourceVersion": md["resourceVersion"]},
                                   "spec": {"nodeName": self.node_name}})
            log.info("Bound %s/%s to node %s (emulator scheduler stand-in)", md["namespace"], md["name"],
                     self.node_name)
        except (Conflict, NotFound):
            pass   # another kubelet bound it, or it changed or went: the watch brings the news

    # ---- node ---------------------------------------------------------------------------
    async def _heartbeats(self) -> None:
        renew = max(1.0, self.lease_duration / 4)
        last_status = asyncio.get_running_loop().time()
        while True:
            await asyncio.sleep(renew)
            try:
                await kn.renew_lease(self.kube, self.node, self.lease_duration)
                if asyncio.get_running_loop().time() - last_status >= self.status_interval:
                    await self.kube.patch(Ref("v1", "nodes", None, self.node_name),
                                          {"status": kn.node_status(self.capacity, port=0)}, status=True)
                    last_status = asyncio.get_running_loop().time()
            except NotFound:
                log.warning("Node %s was deleted; registering it again", self.node_name)
                with contextlib.suppress(KubeError):
                    body = kn.node_body(self.node_name, labels=self.labels, taints=self.taints,
                                        pod_cidr=self.network.cidr)
                    self.node = await kn.register(self.kube, body, kn.node_status(self.capacity, port=0))
            except KubeError as err:
                log.warning("Heartbeat of node %s failed (%s)", self.node_name, err)


@contextlib.asynccontextmanager
async def running_kubelet(kube: Kube, node: str, directory: str | os.PathLike[str],
                          **kwargs: Any) -> AsyncIterator[ProcessKubelet]:
    kubelet = ProcessKubelet(kube, node, directory, **kwargs)
    await kubelet.start()
    try:
        yield kubelet
    finally:
        await kubelet.stop()


async def run_kubelet(args: argparse.Namespace) -> int:
    kube = await Kube.from_kubeconfig(args.kubeconfig)
    kubelet = ProcessKubelet(kube, args.node, args.dir, gpus=args.gpus, labels=dict(args.label),
                             taints=args.taint, bind={"auto": None, "yes": True, "no": False}[args.bind])
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await kubelet.start()
        print(f"ready: node {args.node} pod network {kubelet.network.cidr}", flush=True)
        await stop.wait()
    finally:
        await kubelet.stop()
        await kube.close()
    return 0


def main(args: argparse.Namespace) -> int:
    missing = [f"--{name}" for name in ("kubeconfig", "node", "dir") if not getattr(args, name, None)]
    if missing:
        print(f"fedcare sandbox kubelet: {', '.join(missing)} required", flush=True)
        return 2
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    return asyncio.run(run_kubelet(args))
