"""The two API-server tiers behind one interface, for tests that must hold on both.

- ``EmulatorTier``: kmock plus our realism layer (fast, fault injection).
- ``RealTier``: the real control plane (``fedcare-kube``: etcd, kube-apiserver,
  controller-manager, scheduler), one per test session, CRDs applied server-side.

A test marked ``@pytest.mark.tiers`` that uses the ``apiserver`` fixture (directly or through
``api``/``hub``/``make_agent``) runs once per tier. Real-tier tests share one control plane,
so ``RealTier.reset()`` removes what fedcare tests create between tests.
"""

from __future__ import annotations

import asyncio
import json
import pathlib
import subprocess
import time
from typing import Any

import kopf

from fedcare.api.resources import API_VERSION, RESOURCES
from fedcare.integrations.kube import Kube, Ref, RetryPolicy
from fedcare.sandbox.cluster import ROOT, RealCluster

KUBECTL = ROOT / ".tools" / "bin" / "kubectl"
HELM = ROOT / ".tools" / "bin" / "helm"


class Cluster:
    """A running real control plane plus kubectl/helm bound to its admin kubeconfig."""

    def __init__(self, real: RealCluster):
        self.real = real
        self.kubeconfig = str(real.kubeconfig)
        self.server = real.server

    def kubectl(self, *args: str, check: bool = True, timeout: float = 120, input: str | None = None,
                kubeconfig: str | None = None) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run([str(KUBECTL), "--kubeconfig", kubeconfig or self.kubeconfig, *args],
                              capture_output=True, text=True, timeout=timeout, input=input)
        if check and proc.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}{proc.stdout}")
        return proc

    def kubectl_json(self, *args: str, **kw: Any) -> Any:
        return json.loads(self.kubectl(*args, "-o", "json", **kw).stdout)

    def helm(self, *args: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run([str(HELM), "--kubeconfig", self.kubeconfig, *args],
                              capture_output=True, text=True, timeout=timeout)
        if check and proc.returncode != 0:
            raise AssertionError(f"helm {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}{proc.stdout}")
        return proc

    def apply_crds(self) -> float:
        """Server-side apply of crds/ and wait until each is Established. Returns the seconds taken."""
        began = time.monotonic()
        self.kubectl("apply", "--server-side", "--field-manager=fedcare-tests", "-f", str(ROOT / "crds"))
        self.kubectl("wait", "--for=condition=Established", "--timeout=60s",
                     *[f"crd/{r.crd_name}" for r in RESOURCES])
        # What the chart installs beside the CRDs and every site's RoleBinding refers to.
        from fedcare.hub.enrollment import build_site_agent_cluster_role
        self.kubectl("apply", "--server-side", "--field-manager=fedcare-tests", "-f", "-",
                     input=json.dumps(build_site_agent_cluster_role()))
        return time.monotonic() - began

    def token(self, namespace: str, service_account: str, seconds: int = 3600) -> str:
        """A ServiceAccount token from the TokenRequest API (what `kubectl create token` calls)."""
        return self.kubectl("create", "token", service_account, "-n", namespace,
                            f"--duration={seconds}s").stdout.strip()

    def kubeconfig_for_token(self, path: pathlib.Path, token: str, namespace: str = "default") -> str:
        ca = self.real.dir / "pki" / "ca.crt"
        path.write_text(json.dumps({
            "apiVersion": "v1", "kind": "Config", "current-context": "sa",
            "clusters": [{"name": "c", "cluster": {"server": self.server, "certificate-authority": str(ca)}}],
            "users": [{"name": "sa", "user": {"token": token}}],
            "contexts": [{"name": "sa", "context": {"cluster": "c", "user": "sa", "namespace": namespace}}]}))
        return str(path)


class EmulatorTier:
    name = "emulator"

    def __init__(self, emulator: Any):
        self.emulator = emulator
        self.url = str(emulator.url)

    async def kube(self, policy: RetryPolicy | None = None) -> Kube:
        return Kube.from_url(self.url, policy=policy)

    def connection_info(self) -> kopf.ConnectionInfo:
        return kopf.ConnectionInfo(server=self.url, insecure=True, default_namespace="default")

    def watching(self, resource: Any) -> bool:
        return self.emulator.watching(resource)


class RealTier:
    name = "real"

    def __init__(self, cluster: Cluster):
        self.cluster = cluster
        self.url = cluster.server
        pki = cluster.real.dir / "pki"
        self._pki = pki

    async def kube(self, policy: RetryPolicy | None = None) -> Kube:
        return await Kube.from_kubeconfig(self.cluster.kubeconfig, policy=policy)

    def connection_info(self) -> kopf.ConnectionInfo:
        return kopf.ConnectionInfo(server=self.url, ca_path=str(self._pki / "ca.crt"),
                                   certificate_path=str(self._pki / "admin.crt"),
                                   private_key_path=str(self._pki / "admin.key"), default_namespace="default")

    def watching(self, resource: Any) -> bool:
        return True    # kopf lists before it watches: nothing created earlier is missed

    async def reset(self, timeout: float = 90) -> None:
        """Delete every fedcare object and site namespace a test left, finalizers included."""
        kube = await self.kube()
        try:
            for res in RESOURCES:
                for obj in await kube.list(Ref(API_VERSION, res.plural)):
                    md = obj["metadata"]
                    ref = Ref(API_VERSION, res.plural, md.get("namespace"), md["name"])
                    if md.get("finalizers"):
                        await kube.patch(ref, {"metadata": {"finalizers": None}})
                    await kube.delete(ref)
            deadline = time.monotonic() + timeout
            while True:
                left = [ns["metadata"]["name"] for ns in await kube.list(Ref("v1", "namespaces"))
                        if ns["metadata"]["name"].startswith("fedcare-site-")]
                for name in left:
                    await kube.delete(Ref("v1", "namespaces", None, name))
                for plural in ("clusterrolebindings", "clusterroles"):
                    for obj in await kube.list(Ref("rbac.authorization.k8s.io/v1", plural)):
                        if obj["metadata"]["name"].startswith("fedcare-site-"):
                            await kube.delete(Ref("rbac.authorization.k8s.io/v1", plural, None,
                                                  obj["metadata"]["name"]))
                if not left:
                    return
                if time.monotonic() > deadline:
                    raise AssertionError(f"site namespaces still terminating after {timeout}s: {left}")
                await asyncio.sleep(0.5)
        finally:
            await kube.close()
