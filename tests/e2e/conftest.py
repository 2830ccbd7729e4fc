"""The ``cluster`` fixture: kind-fedcare or a skip that says how to create it (see kindcluster.py)."""

from __future__ import annotations

import subprocess
import urllib.parse

import pytest

from kindcluster import CONTEXT, CREATE_HINT, LOCAL_HOSTS, Cluster, tool


@pytest.fixture(scope="session")
def cluster() -> Cluster:
    kubectl = tool("kubectl")
    if not kubectl:
        pytest.skip(f"kubectl not found in .tools/bin or on PATH (run `make tools`); a kind cluster is needed: "
                    f"{CREATE_HINT}")
    contexts = subprocess.run([kubectl, "config", "get-contexts", "-o", "name"],
                              capture_output=True, text=True, timeout=30).stdout.split()
    if CONTEXT not in contexts:
        pytest.skip(f"no kube context named {CONTEXT}: {CREATE_HINT}")
    found = Cluster(kubectl, tool("helm"))
    server, _ = found.server()
    host = urllib.parse.urlsplit(server).hostname or ""
    if host not in LOCAL_HOSTS:
        pytest.fail(f"refusing context {CONTEXT}: its API server {server} is not a local kind cluster "
                    f"(expected one of {sorted(LOCAL_HOSTS)})", pytrace=False)
    ready = found.kubectl("get", "--raw", "/readyz", check=False, timeout=20)
    if ready.returncode != 0:
        pytest.fail(f"context {CONTEXT} exists but its API server {server} does not answer ({ready.stderr.strip()[:300]}): "
                    "is the kind cluster running? `kind get clusters`, or recreate it: "
                    "`kind delete cluster --name fedcare && kind create cluster --config kind-config.yaml`",
                    pytrace=False)
    return found
