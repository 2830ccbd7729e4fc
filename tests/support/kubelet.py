"""Helpers for process-kubelet tests: tiny pod manifests, waiting on pod status, process checks."""

from __future__ import annotations

import asyncio
import os
import signal
from typing import Any, Callable

from fedcare.integrations.kube import Kube, NotFound, Ref

IMAGE = "fedcare:dev"
PY = ["python", "-c"]


def pod(name: str, code: str | None = None, *, namespace: str = "default", image: str = IMAGE,
        restart: str = "Never", node: str | None = None, grace: int | None = None,
        containers: list[dict[str, Any]] | None = None, labels: dict[str, str] | None = None,
        **spec: Any) -> dict[str, Any]:
    """A pod running ``python -c CODE`` (or the given containers)."""
    if containers is None:
        containers = [{"name": "main", "image": image, "command": [*PY, code or "pass"]}]
    body: dict[str, Any] = {"apiVersion": "v1", "kind": "Pod",
                            "metadata": {"name": name, "namespace": namespace, "labels": labels or {}},
                            "spec": {"restartPolicy": restart, "containers": containers, **spec}}
    if node:
        body["spec"]["nodeName"] = node
    if grace is not None:
        body["spec"]["terminationGracePeriodSeconds"] = grace
    return body


async def create(api: Kube, body: dict[str, Any]) -> dict[str, Any]:
    ns = body["metadata"].get("namespace", "default")
    plural = {"Pod": "pods", "Service": "services", "ConfigMap": "configmaps", "Secret": "secrets",
              "PersistentVolumeClaim": "persistentvolumeclaims", "Deployment": "deployments"}[body["kind"]]
    return await api.create(Ref(body["apiVersion"], plural, ns), body)


async def wait_pod(api: Kube, name: str, check: Callable[[dict[str, Any]], Any], *, namespace: str = "default",
                   timeout: float = 20.0) -> dict[str, Any]:
    """Poll the pod until ``check(pod)`` is truthy; fail with its last status."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    last: dict[str, Any] | None = None
    while loop.time() < deadline:
        try:
            last = await api.get(Ref("v1", "pods", namespace, name))
        except NotFound:
            last = None
        if last is not None and check(last):
            return last
        await asyncio.sleep(0.05)
    raise AssertionError(f"pod {namespace}/{name} never matched; last: {last and last.get('status')}")


async def wait_gone(api: Kube, name: str, *, namespace: str = "default", timeout: float = 20.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        if await api.get_or_none(Ref("v1", "pods", namespace, name)) is None:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"pod {namespace}/{name} still exists")


def phase(p: dict[str, Any]) -> str:
    return (p.get("status") or {}).get("phase", "")


def container(p: dict[str, Any], name: str = "main") -> dict[str, Any]:
    return next((c for c in (p.get("status") or {}).get("containerStatuses") or [] if c["name"] == name), {})


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False


def kill_quietly(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
