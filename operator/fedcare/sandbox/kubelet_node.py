"""The process kubelet's Node: registration, status heartbeats, its Lease, its pod network.

A real kubelet keeps its Node Ready two ways, and so does this one: the Node's status
(``Ready`` and the pressure conditions, re-posted every ``status_interval``) and a Lease in
``kube-node-lease`` renewed every ``lease_duration / 4`` (what the node-lifecycle controller
reads; without it the node is tainted ``not-ready``/``unreachable`` and its pods evicted).
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import platform
from typing import Any

from .. import __version__
from ..integrations.kube import Conflict, Kube, NotFound, Ref

log = logging.getLogger(__name__)

NODES = Ref("v1", "nodes")
LEASES = "coordination.k8s.io/v1"
NODE_LEASE_NS = "kube-node-lease"
GPU = "nvidia.com/gpu"
POD_NETWORK_ANNOTATION = "sandbox.fedcare.io/pod-network"
KUBELET_VERSION = "v1.34.0"  # the Kubernetes version whose kubelet API we speak (kubectl shows it)


def now() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def micro_now() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def total_memory() -> str:
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemTotal:"):
                    return f"{int(line.split()[1])}Ki"
    except OSError:
        pass
    return "8Gi"


def capacity(*, cpu: str | None, memory: str | None, pods: int, gpus: int) -> dict[str, str]:
    cap = {"cpu": cpu or str(os.cpu_count() or 1), "memory": memory or total_memory(),
           "pods": str(pods), "ephemeral-storage": "100Gi"}
    if gpus:
        cap[GPU] = str(gpus)
    return cap


def node_body(name: str, *, labels: dict[str, str], taints: list[dict[str, str]], pod_cidr: str) -> dict[str, Any]:
    base = {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux",
            "kubernetes.io/arch": {"x86_64": "amd64", "aarch64": "arm64"}.get(platform.machine(), platform.machine()),
            "sandbox.fedcare.io/process-kubelet": "true"}
    return {"apiVersion": "v1", "kind": "Node",
            "metadata": {"name": name, "labels": {**base, **labels},
                         "annotations": {POD_NETWORK_ANNOTATION: pod_cidr}},
            "spec": {"taints": taints} if taints else {}}


def ready_condition(ready: bool, message: str) -> dict[str, str]:
    t = now()
    return {"type": "Ready", "status": "True" if ready else "False",
            "reason": "KubeletReady" if ready else "KubeletNotReady", "message": message,
            "lastHeartbeatTime": t, "lastTransitionTime": t}


def node_status(cap: dict[str, str], *, port: int, ready: bool = True,
                message: str = "sandbox process kubelet is posting ready status") -> dict[str, Any]:
    t = now()
    pressure = [{"type": kind, "status": "False", "reason": reason, "message": "sandbox: not monitored",
                 "lastHeartbeatTime": t, "lastTransitionTime": t}
                for kind, reason in (("MemoryPressure", "KubeletHasSufficientMemory"),
                                     ("DiskPressure", "KubeletHasNoDiskPressure"),
                                     ("PIDPressure", "KubeletHasSufficientPID"))]
    return {"capacity": cap, "allocatable": cap,
            "conditions": [*pressure, ready_condition(ready, message)],
            "addresses": [{"type": "InternalIP", "address": "127.0.0.1"},
                          {"type": "Hostname", "address": platform.node() or "localhost"}],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": port}},
            "nodeInfo": {"kubeletVersion": KUBELET_VERSION, "kubeProxyVersion": "",
                         "operatingSystem": "linux", "architecture": platform.machine(),
                         "containerRuntimeVersion": f"fedcare-process://{__version__}",
                         "kernelVersion": platform.release(), "osImage": "fedcare sandbox (processes)",
                         "machineID": "", "systemUUID": "", "bootID": ""}}


async def register(kube: Kube, body: dict[str, Any], status: dict[str, Any]) -> dict[str, Any]:
    """Create the Node or bring labels, annotations and taints in line; then post its status."""
    name = body["metadata"]["name"]
    ref = Ref("v1", "nodes", None, name)
    try:
        await kube.create(NODES, body)
        log.info("Registered node %s", name)
    except Conflict:
        await kube.patch(ref, {"metadata": {"labels": body["metadata"]["labels"],
                                            "annotations": body["metadata"]["annotations"]},
                               "spec": {"taints": body["spec"].get("taints")}})
        log.info("Node %s already registered; updated it", name)
    return await kube.patch(ref, {"status": status}, status=True)


async def renew_lease(kube: Kube, node: dict[str, Any], duration: int) -> None:
    """Create or renew ``kube-node-lease/<node>`` (holder: the node), owned by the Node."""
    name = node["metadata"]["name"]
    ref = Ref(LEASES, "leases", NODE_LEASE_NS, name)
    try:
        await kube.patch(ref, {"spec": {"renewTime": micro_now(), "holderIdentity": name,
                                        "leaseDurationSeconds": duration}})
    except NotFound:
        await kube.create(Ref(LEASES, "leases", NODE_LEASE_NS), {
            "apiVersion": LEASES, "kind": "Lease",
            "metadata": {"name": name, "namespace": NODE_LEASE_NS, "ownerReferences": [{
                "apiVersion": "v1", "kind": "Node", "name": name, "uid": node["metadata"]["uid"]}]},
            "spec": {"holderIdentity": name, "leaseDurationSeconds": duration,
                     "acquireTime": micro_now(), "renewTime": micro_now()}})


def _older_than(lease: dict[str, Any], seconds: float) -> bool:
    text = (lease.get("spec") or {}).get("acquireTime") or ""
    try:
        when = dt.datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=dt.timezone.utc)
    except ValueError:
        return True
    return (dt.datetime.now(dt.timezone.utc) - when).total_seconds() > seconds


async def claim_pod_network(kube: Kube, node: str) -> int:
    """Claim a free ``127.N.0.0/16`` for this node: N such that the Lease
    ``kube-node-lease/fedcare-podnet-127-N`` is held by this node (created atomically: two
    kubelets starting together cannot both get a 201). A network held by a node that no
    longer exists (and claimed it over a minute ago: it is not just starting) is taken over."""
    for octet in range(2, 255):
        ref = Ref(LEASES, "leases", NODE_LEASE_NS, f"fedcare-podnet-127-{octet}")
        body = {"apiVersion": LEASES, "kind": "Lease",
                "metadata": {"name": ref.name, "namespace": NODE_LEASE_NS,
                             "labels": {"sandbox.fedcare.io/pod-network": "true"}},
                "spec": {"holderIdentity": node, "acquireTime": micro_now()}}
        try:
            await kube.create(Ref(LEASES, "leases", NODE_LEASE_NS), body)
            return octet
        except Conflict:
            current = await kube.get(ref)
            holder = (current.get("spec") or {}).get("holderIdentity")
            if holder == node:
                return octet
            if holder and _older_than(current, 60) and await kube.get_or_none(Ref("v1", "nodes", None, holder)) is None:
                try:   # the previous holder is gone: take it over (resourceVersion: one winner)
                    await kube.patch(ref, {"metadata": {"resourceVersion": current["metadata"]["resourceVersion"]},
                                           "spec": {"holderIdentity": node, "acquireTime": micro_now()}})
                    return octet
                except Conflict:
                    continue
    raise RuntimeError("every sandbox pod network 127.2-254.0.0/16 is taken; delete stale Leases "
                       "kube-node-lease/fedcare-podnet-127-* of nodes that are gone")
