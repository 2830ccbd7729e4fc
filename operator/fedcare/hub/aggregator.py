"""A round's aggregator: one Flower SuperLink Pod, its Service and its state volume.

All three are owned by the FederatedRound (ownerReferences, so a real cluster's garbage
collector removes them if the hub is gone) and deleted explicitly by the hub when the
round ends or is deleted (the sandbox has no garbage collector). The manifests are the
same for a real cluster and for the sandbox: any sandbox translation lives in its kubelet.

Why a bare Pod and not a Deployment: the round is the controller. It re-creates a deleted
SuperLink pod itself, a restarted container keeps its state on the volume (``--database``),
and a Deployment would add a ReplicaSet whose only effect is a second, racing controller.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import aiohttp

from ..api import resources as r
from ..api.federated_round import FederatedRoundSpec
from ..integrations.kube import Conflict, Kube, Ref, ensure
from .superlink_tls import SuperLinkTLS, cluster_ip
from .superlink_tls import superlink_args as tls_args
from .superlink_tls import volume as tls_files

log = logging.getLogger(__name__)

ROUND_LABEL = "fedcare.io/round"
COMPONENT_LABEL = "app.kubernetes.io/component"
STATE_MOUNT = "/var/lib/flower"
HEALTH_TIMEOUT = 3.0
HEALTH_RETRY = 0.1      # seconds between /health probes while a pass waits for a starting SuperLink


@dataclass(frozen=True)
class AggregatorConfig:
    port: int = 9092
    artifact_claim: str = "fedcare-artifacts"
    artifact_dir: str = "/var/lib/fedcare/artifacts"   # mounted at the same path in the hub and the SuperLink
    state_size: str = "1Gi"
    insecure: bool = False            # development only: plaintext Fleet/Control API
    external_address: str = ""       # host:port sites dial when they are separate clusters ('' = Service DNS)


def short_name(name: str, suffix: str, limit: int = 63) -> str:
    """``name-suffix`` within ``limit`` characters (a hash keeps truncated names unique)."""
    full = f"{name}-{suffix}"
    if len(full) <= limit:
        return full
    digest = hashlib.sha256(name.encode()).hexdigest()[:6]
    return f"{name[:limit - len(suffix) - 8]}-{digest}-{suffix}"


def owner(body: dict[str, Any]) -> dict[str, Any]:
    md = body["metadata"]
    return {"apiVersion": r.API_VERSION, "kind": r.FEDERATED_ROUNDS.kind, "name": md["name"], "uid": md["uid"],
            "controller": True, "blockOwnerDeletion": True}


def names(body: dict[str, Any]) -> dict[str, str]:
    name = body["metadata"]["name"]
    return {"pod": short_name(name, "superlink"), "service": short_name(name, "superlink", 63),
            "state": short_name(name, "superlink-state", 253), "tls": short_name(name, "superlink-tls", 253)}


def labels(body: dict[str, Any]) -> dict[str, str]:
    return {ROUND_LABEL: body["metadata"]["name"], COMPONENT_LABEL: "superlink",
            "app.kubernetes.io/name": "flower-superlink", r.MANAGED_BY_LABEL: r.MANAGED_BY}


def manifests(body: dict[str, Any], spec: FederatedRoundSpec, cfg: AggregatorConfig) -> list[tuple[str, dict]]:
    """(plural, manifest) in creation order: state PVC, Service, Pod."""
    md, n, lab = body["metadata"], names(body), labels(body)
    meta = lambda name: {"name": name, "namespace": md["namespace"], "labels": lab,  # noqa: E731
                         "ownerReferences": [owner(body)]}
    pvc = {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": meta(n["state"]),
           "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": cfg.state_size}}}}
    service = {"apiVersion": "v1", "kind": "Service", "metadata": meta(n["service"]),
               "spec": {"selector": {ROUND_LABEL: md["name"], COMPONENT_LABEL: "superlink"},
                        "ports": [{"name": "flower", "port": cfg.port, "targetPort": cfg.port, "protocol": "TCP"}]}}
    # $(POD_IP) (downward API): the pod's own address, so two SuperLinks on one machine (the
    # sandbox's process kubelet) never share a port, and a real pod serves its Service.
    args = ["--host", "$(POD_IP)", "--port", str(cfg.port), "--database", f"{STATE_MOUNT}/state.db",
            "--disable-runtime-dependency-installation"]
    if cfg.insecure:
        args.append("--insecure")
    else:
        # TLS from Vault (hub/superlink_tls.py): certificate, key and CA from the round's Secret.
        # Bind the wildcard: the SuperLink's own SuperExec then dials 127.0.0.1, which the
        # certificate names (a pod IP is unknown before the Secret is mounted on a real cluster);
        # the sandbox kubelet translates the wildcard to the pod's IP, which it knows earlier.
        args[1] = "0.0.0.0"
        args += tls_args()
    volumes = [{"name": "state", "persistentVolumeClaim": {"claimName": n["state"]}},
               {"name": "artifacts", "persistentVolumeClaim": {"claimName": cfg.artifact_claim}}]
    mounts = [{"name": "state", "mountPath": STATE_MOUNT}, {"name": "artifacts", "mountPath": cfg.artifact_dir}]
    if not cfg.insecure:
        tls_volume, tls_mount = tls_files(n["tls"])
        volumes.append(tls_volume)
        mounts.append(tls_mount)
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": meta(n["pod"]), "spec": {
        "restartPolicy": "Always",
        "automountServiceAccountToken": False,
        "securityContext": {"runAsNonRoot": True, "runAsUser": 65532, "fsGroup": 65532,
                            "seccompProfile": {"type": "RuntimeDefault"}},
        "containers": [{
            "name": "superlink", "image": spec.training.image, "command": ["flower-superlink"], "args": args,
            "env": [{"name": "FLWR_HOME", "value": f"{STATE_MOUNT}/home"},
                    {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}],
            "ports": [{"name": "flower", "containerPort": cfg.port}],
            "readinessProbe": {"httpGet": {"path": "/health", "port": cfg.port,
                                           "scheme": "HTTP" if cfg.insecure else "HTTPS"}},
            "securityContext": {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                                "capabilities": {"drop": ["ALL"]}},
            "resources": {"requests": {"cpu": "250m", "memory": "512Mi"}},
            "volumeMounts": mounts,
        }],
        "volumes": volumes,
    }}
    return [("persistentvolumeclaims", pvc), ("services", service), ("pods", pod)]


@dataclass(frozen=True)
class AggregatorState:
    ready: bool
    failed: bool
    message: str
    pod: str
    service: str
    address: str = ""          # Fleet address given to the sites
    control_address: str = ""  # where the hub reaches the Control API (pod IP)
    pod_uid: str = ""          # the SuperLink pod serving (its registrations die with it)


def fleet_address(body: dict[str, Any], cfg: AggregatorConfig) -> str:
    if cfg.external_address:
        return cfg.external_address
    md = body["metadata"]
    return f"{names(body)['service']}.{md['namespace']}.svc.cluster.local:{cfg.port}"


def _pod_problem(pod: dict[str, Any]) -> str:
    """A reason the SuperLink cannot start by itself (bad image, crash loop), or ''."""
    status = pod.get("status") or {}
    if status.get("phase") == "Failed":
        return f"the SuperLink pod failed: {status.get('reason') or ''} {status.get('message') or ''}".strip()
    for cs in status.get("containerStatuses") or []:
        waiting = (cs.get("state") or {}).get("waiting") or {}
        if waiting.get("reason") in ("ErrImagePull", "ImagePullBackOff", "InvalidImageName",
                                     "CreateContainerConfigError", "CreateContainerError"):
            return f"the SuperLink container cannot start: {waiting['reason']}: {waiting.get('message', '')}"
    return ""


async def healthy(address: str, *, insecure: bool, ssl_context: Any = None) -> bool:
    """GET /health; under TLS the certificate is verified against the round's CA when given."""
    scheme = "http" if insecure else "https"
    try:
        timeout = aiohttp.ClientTimeout(total=HEALTH_TIMEOUT)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            async with session.get(f"{scheme}://{address}/health",
                                   ssl=ssl_context if ssl_context is not None else False) as resp:
                return resp.status == 200
    except (aiohttp.ClientError, asyncio.TimeoutError, OSError):
        return False


async def wait_healthy(address: str, *, insecure: bool, ssl_context: Any = None, within: float = 0.0,
                       stop: Callable[[], bool] | None = None) -> bool:
    """After a failed ``healthy``: probe again every HEALTH_RETRY seconds for up to ``within``
    seconds, or until ``stop()`` (kopf's flag: the round is being deleted, or the hub stops). A
    pass that finds the SuperLink pod running but not answering yet waits here, so the round
    goes on within ~0.1 s of /health answering instead of at the next pass (every 2 s by
    default: it was most of the hub's share of a round's start, ``benchmarks/round_pods.py``).
    Until Flower listens, a probe is a refused connection: cheap."""
    loop = asyncio.get_running_loop()
    until = loop.time() + within
    while loop.time() + HEALTH_RETRY <= until and not (stop is not None and stop()):
        await asyncio.sleep(HEALTH_RETRY)
        if await healthy(address, insecure=insecure, ssl_context=ssl_context):
            return True
    return False


async def ensure_aggregator(kube: Kube, body: dict[str, Any], spec: FederatedRoundSpec,
                            cfg: AggregatorConfig, tls: SuperLinkTLS | None = None, *,
                            health_wait: float = 0.0, stop: Callable[[], bool] | None = None) -> AggregatorState:
    """Create what is missing (idempotent: a restarted hub adopts what exists) and say if it is up.
    ``tls``: the SuperLink's certificate is issued from Vault into the round's TLS Secret.
    ``health_wait``, ``stop``: how long to wait for /health once the pod runs (``wait_healthy``)."""
    n = names(body)
    pod: dict[str, Any] = {}
    service: dict[str, Any] = {}
    waiting = ""
    for plural, manifest in manifests(body, spec, cfg):
        ref = Ref("v1", plural, manifest["metadata"]["namespace"], manifest["metadata"]["name"])
        current = await kube.get_or_none(ref)
        if plural == "pods" and tls is not None and current is None:
            if not cluster_ip(service):
                # A new pod gets a new IP, which an existing certificate does not name: issue again.
                await kube.delete(Ref("v1", "secrets", ref.namespace, n["tls"]))
            await _tls_secret(kube, tls, body, cfg, service, None)   # with a ClusterIP: before the pod
        if current is None:     # create straight away (ensure would read it again first)
            try:
                current = await kube.create(Ref("v1", plural, ref.namespace), manifest)
            except Conflict:
                current, _ = await ensure(kube, plural, manifest)
            log.info("Created %s %s for round %s", manifest["kind"], ref.name, body["metadata"]["name"])
        if plural == "services":
            service = current
        if plural == "pods":
            pod = current
    if pod.get("metadata", {}).get("deletionTimestamp"):
        # A quick suspend/resume finds the last attempt's pod still stopping: never adopt it (keys
        # registered with it would be lost with its state); the next pass creates the new one.
        return AggregatorState(False, False, f"the previous SuperLink pod {n['pod']} is still terminating",
                               n["pod"], n["service"])
    if tls is not None:
        waiting = await _tls_secret(kube, tls, body, cfg, service, pod)
    problem = _pod_problem(pod)
    if problem:
        return AggregatorState(False, True, problem, n["pod"], n["service"])
    if waiting:
        return AggregatorState(False, False, waiting, n["pod"], n["service"])
    ip = (pod.get("status") or {}).get("podIP") or ""
    phase = (pod.get("status") or {}).get("phase") or "Pending"
    if phase != "Running" or not ip:
        return AggregatorState(False, False, f"the SuperLink pod {n['pod']} is {phase}", n["pod"], n["service"])
    # Under TLS the hub calls the address its certificate names: the ClusterIP where there is one.
    control = f"{(tls is not None and cluster_ip(service)) or ip}:{cfg.port}"
    context = await tls.ssl_context() if tls is not None else None
    not_yet = AggregatorState(False, False, f"the SuperLink at {control} does not answer /health yet",
                              n["pod"], n["service"], fleet_address(body, cfg), control)
    if not await healthy(control, insecure=cfg.insecure, ssl_context=context):
        if not await wait_healthy(control, insecure=cfg.insecure, ssl_context=context, within=health_wait, stop=stop):
            return not_yet
        # Waited: what this pass read may be stale. A pod replaced or terminating meanwhile is never
        # adopted (its registrations would be lost), nor a round deleted, suspended or changed.
        again = await kube.get_or_none(Ref("v1", "pods", body["metadata"]["namespace"], n["pod"]))
        current = await kube.get_or_none(Ref(r.API_VERSION, r.FEDERATED_ROUNDS.plural, body["metadata"]["namespace"],
                                             body["metadata"]["name"]))
        if (again is None or again["metadata"].get("uid") != pod["metadata"].get("uid")
                or again["metadata"].get("deletionTimestamp")
                or current is None or current["metadata"].get("deletionTimestamp")
                or current["metadata"].get("generation") != body["metadata"].get("generation")):
            return dataclasses.replace(not_yet, message=f"the SuperLink pod {n['pod']} or its round changed "
                                                        "while the hub waited for /health; next pass")
    return AggregatorState(True, False, f"SuperLink {n['pod']} is serving at {control}", n["pod"], n["service"],
                           fleet_address(body, cfg), control, pod_uid=str(pod["metadata"].get("uid") or ""))


async def _tls_secret(kube: Kube, tls: SuperLinkTLS, body: dict[str, Any], cfg: AggregatorConfig,
                      service: dict[str, Any], pod: dict[str, Any] | None) -> str:
    return await tls.ensure_secret(kube, body, secret=names(body)["tls"], service=service, pod=pod,
                                   external=cfg.external_address, owner=owner(body), labels=labels(body))


async def delete_aggregator(kube: Kube, body: dict[str, Any]) -> list[str]:
    """Delete pod, Service, state volume and TLS Secret; returns what was deleted."""
    md, n, gone = body["metadata"], names(body), []
    for plural, name in (("pods", n["pod"]), ("services", n["service"]), ("persistentvolumeclaims", n["state"]),
                         ("secrets", n["tls"])):
        if await kube.delete(Ref("v1", plural, md["namespace"], name)):
            gone.append(f"{plural}/{name}")
    return gone
