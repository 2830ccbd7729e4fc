"""kubectl and helm for the cluster tests, bound to one kube context only: ``kind-fedcare``.

Every kubectl and helm call passes ``--context kind-fedcare`` (``--kube-context`` for helm)
explicitly: the current context is never used, so a developer whose kubeconfig points at a
real cluster cannot have it touched. A context of that name whose API server is not local
(kind serves on 127.0.0.1) is refused outright: it is not a kind cluster.
"""

from __future__ import annotations

import base64
import json
import pathlib
import shutil
import subprocess
import time
from collections.abc import Callable
from typing import Any, TypeVar

import pytest

CONTEXT = "kind-fedcare"
ROOT = pathlib.Path(__file__).resolve().parents[2]
CREATE_HINT = (
    "create it with: `kind create cluster --config kind-config.yaml` (context kind-fedcare), then "
    "`docker build -t fedcare:dev . && kind load docker-image fedcare:dev --name fedcare` (docs/kind.md)")
LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1", "fedcare-control-plane"}
T = TypeVar("T")


def tool(name: str) -> str | None:
    local = ROOT / ".tools" / "bin" / name
    return str(local) if local.is_file() else shutil.which(name)


class Cluster:
    """kubectl and helm, bound to the kind-fedcare context and nothing else."""

    def __init__(self, kubectl: str, helm: str | None):
        self.kubectl_bin, self.helm_bin = kubectl, helm

    def kubectl(self, *args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
        done = subprocess.run([self.kubectl_bin, "--context", CONTEXT, *args],
                              capture_output=True, text=True, timeout=timeout)
        if check and done.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed ({done.returncode}): {done.stderr.strip()}")
        return done

    def json(self, *args: str) -> dict[str, Any]:
        return json.loads(self.kubectl(*args, "-o", "json").stdout)

    def exists(self, *args: str) -> bool:
        return self.kubectl("get", *args, "--ignore-not-found", "-o", "name", check=False).stdout.strip() != ""

    def helm(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
        if not self.helm_bin:
            pytest.fail("helm not found in .tools/bin or on PATH: run `make tools`", pytrace=False)
        done = subprocess.run([self.helm_bin, "--kube-context", CONTEXT, *args],
                              capture_output=True, text=True, timeout=timeout)
        if done.returncode != 0:
            raise AssertionError(f"helm {' '.join(args)} failed ({done.returncode}): {done.stderr.strip()}")
        return done

    def server(self) -> tuple[str, bytes | None]:
        """The API server URL and its CA bundle (PEM, None if the context has none)."""
        config = json.loads(self.kubectl("config", "view", "--raw", "--minify", "-o", "json").stdout)
        cluster = config["clusters"][0]["cluster"]
        if "certificate-authority-data" in cluster:
            return cluster["server"], base64.b64decode(cluster["certificate-authority-data"])
        if "certificate-authority" in cluster:
            return cluster["server"], pathlib.Path(cluster["certificate-authority"]).read_bytes()
        return cluster["server"], None


def eventually(probe: Callable[[], T | None], *, timeout: float, what: str, interval: float = 2) -> T:
    """Poll until probe returns something truthy; fail naming what never happened."""
    deadline = time.monotonic() + timeout
    while True:
        result = probe()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout:.0f}s")
        time.sleep(interval)
