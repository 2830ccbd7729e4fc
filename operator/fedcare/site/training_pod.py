"""The SuperNode training pod and its NetworkPolicy, as the site agent creates them in the
hospital's own cluster. Pure functions over the RoundAssignment and the HospitalNode, so the
manifests are the same for a real cluster and for the sandbox (whose kubelet translates).
"""

from __future__ import annotations

import hashlib
import ipaddress
from typing import Any

from ..api import resources as r
from . import supernode_credentials as creds
from .privacy import LEDGER_MOUNT, SITE_KEYS, SitePrivacy

ROUND_LABEL = "fedcare.io/round"
ATTEMPT_LABEL = "fedcare.io/attempt"
ASSIGNMENT_LABEL = "fedcare.io/assignment"
DATA_MOUNT = "/data"
RUNTIME_PORT = 9094


def _label_value(value: str) -> str:
    """A label value (≤ 63 characters; long names keep a hash so they stay unique)."""
    if len(value) <= 63:
        return value
    return value[:56] + "-" + hashlib.sha256(value.encode()).hexdigest()[:6]


def _base(assignment: dict[str, Any]) -> str:
    """Unique per site and assignment (every site's assignment of a round has the same name, and
    sites may share one training namespace)."""
    site = assignment["spec"]["nodeName"]
    return _label_value(f"{site}-{assignment['metadata']['name']}")[:55]


def pod_name(assignment: dict[str, Any], retry: int) -> str:
    return f"{_base(assignment)}-r{retry}"


def policy_name(assignment: dict[str, Any]) -> str:
    return f"{_base(assignment)}-egress"


def labels(assignment: dict[str, Any], site: str) -> dict[str, str]:
    spec = assignment["spec"]
    return {ROUND_LABEL: _label_value(spec["roundRef"]["name"]), r.SITE_LABEL: site,
            ATTEMPT_LABEL: str(spec.get("attempt", 1)), ASSIGNMENT_LABEL: _label_value(assignment["metadata"]["name"]),
            "app.kubernetes.io/name": "flower-supernode", r.MANAGED_BY_LABEL: r.MANAGED_BY}


def node_config(assignment: dict[str, Any], site: str, privacy: SitePrivacy | None = None) -> str:
    """--node-config for the ClientApp (workloads/README.md: data-path, data-root, site, and the
    site's own privacy settings, which the assignment's nodeConfig cannot override)."""
    extra = {k: v for k, v in ((assignment["spec"].get("nodeConfig") or {}).items())
             if k not in ("site", "data-path", "data-root", *SITE_KEYS)}
    items = {"site": site, "data-path": DATA_MOUNT, "data-root": DATA_MOUNT, **extra,
             **(privacy.node_config() if privacy else {})}
    return " ".join(f'{k}={v!r}' if isinstance(v, float) else f'{k}="{v}"' for k, v in items.items())


def pod_manifest(assignment: dict[str, Any], node: dict[str, Any], *, site: str, namespace: str,
                 retry: int, insecure: bool, privacy: SitePrivacy | None = None) -> dict[str, Any]:
    spec = assignment["spec"]
    training = spec.get("training") or {}
    node_spec = node.get("spec") or {}
    scheduling = node_spec.get("scheduling") or {}
    dataset = node_spec.get("dataset") or {}
    args = ["--superlink", spec["superLink"]["address"], "--node-config", node_config(assignment, site, privacy),
            "--host", "$(POD_IP)", "--port", str(RUNTIME_PORT)]   # runtime API: own address, no ingress
    if insecure:
        args.append("--insecure")
    else:
        # TLS and SuperNode authentication: CA bundle and private key from the pod's short-lived
        # Secret, which the agent writes from Vault (site/supernode_credentials.py).
        args += creds.supernode_args()
    resources: dict[str, Any] = {"requests": {"cpu": "1", "memory": "2Gi"}, "limits": {"memory": "8Gi"}}
    gpus = int(training.get("gpusPerSite", 0) or 0)
    if gpus > 0:
        resources["limits"]["nvidia.com/gpu"] = str(gpus)
        resources["requests"]["nvidia.com/gpu"] = str(gpus)
    volumes, mounts = [], []
    if dataset.get("claimName"):
        volumes.append({"name": "dataset", "persistentVolumeClaim": {"claimName": dataset["claimName"],
                                                                     "readOnly": True}})
        mounts.append({"name": "dataset", "mountPath": DATA_MOUNT, "readOnly": True})
    if privacy is not None and privacy.ledger_claim:    # the site's own storage: durable, read-write
        volumes.append({"name": "privacy-ledger", "persistentVolumeClaim": {"claimName": privacy.ledger_claim}})
        mounts.append({"name": "privacy-ledger", "mountPath": LEDGER_MOUNT})
    volumes.append({"name": "tmp", "emptyDir": {}})
    mounts.append({"name": "tmp", "mountPath": "/tmp"})
    if not insecure:
        cred_volume, cred_mount = creds.volume(pod_name(assignment, retry))
        volumes.append(cred_volume)
        mounts.append(cred_mount)
    pod: dict[str, Any] = {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": pod_name(assignment, retry), "namespace": namespace,
                     "labels": labels(assignment, site),
                     "annotations": {"fedcare.io/round-namespace": spec["roundRef"]["namespace"],
                                     "fedcare.io/retry": str(retry)}},
        "spec": {
            # Always: a SuperNode exits 0 when its SuperLink restarts (shared/FLOWER.md §4).
            "restartPolicy": "Always",
            "automountServiceAccountToken": False,
            "enableServiceLinks": False,
            "securityContext": {"runAsNonRoot": True, "runAsUser": 65532, "runAsGroup": 65532, "fsGroup": 65532,
                                "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [{
                "name": "supernode", "image": training["image"], "command": ["flower-supernode"], "args": args,
                "env": [{"name": "FLWR_HOME", "value": "/tmp/flwr"},
                    {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}],
                "resources": resources,
                "securityContext": {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                                    "privileged": False, "capabilities": {"drop": ["ALL"]}},
                "volumeMounts": mounts,
            }],
            "volumes": volumes,
        },
    }
    if scheduling.get("nodeSelector"):
        pod["spec"]["nodeSelector"] = dict(scheduling["nodeSelector"])
    if scheduling.get("tolerations"):
        pod["spec"]["tolerations"] = [{k: v for k, v in t.items() if v not in ("", None)}
                                      for t in scheduling["tolerations"]]
    return pod


def network_policy(assignment: dict[str, Any], *, site: str, namespace: str) -> dict[str, Any]:
    """No ingress; egress only to the SuperLink's port (its IP when the address is one) and DNS."""
    host, _, port = assignment["spec"]["superLink"]["address"].rpartition(":")
    to: dict[str, Any] = {"ports": [{"protocol": "TCP", "port": int(port)}]}
    try:
        ip = ipaddress.ip_address(host)
        to["to"] = [{"ipBlock": {"cidr": f"{ip}/{32 if ip.version == 4 else 128}"}}]
    except ValueError:
        pass        # a DNS name: NetworkPolicy cannot match names, so the port is the limit
    dns = {"ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}]}
    return {
        "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"name": policy_name(assignment), "namespace": namespace, "labels": labels(assignment, site)},
        "spec": {"podSelector": {"matchLabels": {ASSIGNMENT_LABEL: _label_value(assignment["metadata"]["name"])}},
                 "policyTypes": ["Ingress", "Egress"], "ingress": [], "egress": [to, dns]},
    }


def container_state(pod: dict[str, Any]) -> tuple[int, str]:
    """(restart count, why the container last ended or is waiting) of a training pod."""
    restarts, why = 0, ""
    for cs in (pod.get("status") or {}).get("containerStatuses") or []:
        restarts += int(cs.get("restartCount") or 0)
        for state in (cs.get("state") or {}, cs.get("lastState") or {}):
            term = state.get("terminated") or {}
            wait = state.get("waiting") or {}
            if term and not why:
                why = f"exit code {term.get('exitCode')}" + (f" ({term['reason']})" if term.get("reason") else "")
            elif wait.get("reason") and wait["reason"] != "ContainerCreating" and not why:
                why = wait["reason"] + (f": {wait['message']}" if wait.get("message") else "")
    status = pod.get("status") or {}
    if not why and status.get("phase") == "Failed":
        why = status.get("reason") or status.get("message") or "pod failed"
    return restarts, why[:1000]
