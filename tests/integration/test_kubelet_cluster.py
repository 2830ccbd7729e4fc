"""The process kubelet against the real control plane (``fedcare-kube``): the real scheduler
binds a Deployment's pod to the kubelet's Node, the pod runs, and its deletion is graceful.

Marked ``cluster`` (by the ``real_cluster`` fixture); skipped with the build command when
``fedcare-kube`` is not built (``make kube``).
"""

from __future__ import annotations

import asyncio
import time

from fedcare.integrations.kube import Kube, Ref
from fedcare.sandbox.kubelet import running_kubelet
from tests.support.kubelet import IMAGE, alive, container, fast_kubelet_kwargs, phase

NODE = "kubelet-real"
SERVER = ("import http.server, os, sys\nhost, port = sys.argv[1].rsplit(':', 1)\n"
          "print(os.getpid(), flush=True)\n"
          "class H(http.server.BaseHTTPRequestHandler):\n"
          "    def do_GET(self):\n        self.send_response(200); self.end_headers(); self.wfile.write(b'real')\n"
          "http.server.HTTPServer((host, int(port)), H).serve_forever()\n")


async def _eventually(check, timeout: float = 60.0, what: str = ""):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = await check()
        if last:
            return last
        await asyncio.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


async def test_the_real_scheduler_binds_a_deployment_pod_that_the_kubelet_runs(real_cluster, tmp_path):
    kube = await Kube.from_kubeconfig(real_cluster.kubeconfig)
    deployment = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web", "namespace": "default"},
                  "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "web"}},
                           "template": {"metadata": {"labels": {"app": "web"}},
                                        "spec": {"terminationGracePeriodSeconds": 5, "containers": [{
                                            "name": "main", "image": IMAGE, "command": ["python", "-c", SERVER],
                                            "args": ["0.0.0.0:8080"],
                                            "readinessProbe": {"tcpSocket": {"port": 8080}, "periodSeconds": 1}}]}}}}
    deps = Ref("apps/v1", "deployments", "default")
    try:
        async with running_kubelet(kube, NODE, tmp_path / "k", **fast_kubelet_kwargs(bind=None)) as kubelet:
            assert kubelet.bind is None or kubelet.bind is False
            await kube.create(deps, deployment)

            async def running():
                pods = await kube.list(Ref("v1", "pods", "default"), label_selector="app=web")
                return next((p for p in pods if phase(p) == "Running" and container(p).get("ready")), None)

            pod = await _eventually(running, what="the Deployment's pod to run and be ready")
            assert kubelet.bind is False              # the real scheduler bound it, not the kubelet
            assert pod["spec"]["nodeName"] == NODE and kubelet.network.owns(pod["status"]["podIP"])
            conds = {c["type"]: c["status"] for c in pod["status"]["conditions"]}
            assert conds["PodScheduled"] == conds["Ready"] == "True"
            reader, writer = await asyncio.open_connection(pod["status"]["podIP"], 8080)
            writer.write(b"GET / HTTP/1.0\r\n\r\n")
            assert (await reader.read()).endswith(b"real")
            writer.close()
            await _eventually(lambda: _available(kube), what="the Deployment to be available")
            pid = int(kubelet.log_path("default", pod["metadata"]["name"], "main").read_text().split()[0])
            # kubectl logs: the real API server calls the kubelet's HTTPS log endpoint
            # (in a thread: the log endpoint is served by this test's event loop)
            logs = await asyncio.to_thread(real_cluster.kubectl, "logs", pod["metadata"]["name"])
            assert logs.stdout.split()[0] == str(pid)
            await kube.delete(Ref("apps/v1", "deployments", "default", "web"))
            name = pod["metadata"]["name"]
            await kube.delete(Ref("v1", "pods", "default", name))   # no GC wait: delete the pod too

            async def gone():
                return await kube.get_or_none(Ref("v1", "pods", "default", name)) is None

            await _eventually(gone, what="the pod to be finalized by the kubelet")
            assert not alive(pid)
            node = await kube.get(Ref("v1", "nodes", None, NODE))
            assert next(c for c in node["status"]["conditions"] if c["type"] == "Ready")["status"] == "True"
            # the node-lifecycle controller sees the heartbeats: no not-ready/unreachable taint
            assert not [t for t in (node.get("spec") or {}).get("taints") or []
                        if t["key"].startswith("node.kubernetes.io/")], node["spec"]
            lease = await kube.get(Ref("coordination.k8s.io/v1", "leases", "kube-node-lease", NODE))
            assert lease["spec"]["holderIdentity"] == NODE
            assert container(pod)["restartCount"] == 0
    finally:
        await kube.delete(Ref("apps/v1", "deployments", "default", "web"))
        await kube.delete(Ref("v1", "nodes", None, NODE))
        await kube.close()


async def _available(kube: Kube) -> bool:
    dep = await kube.get(Ref("apps/v1", "deployments", "default", "web"))
    return (dep.get("status") or {}).get("availableReplicas") == 1
