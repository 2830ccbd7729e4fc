"""Process kubelet: readiness/liveness probes, and a real flower-superlink run as a pod."""

from __future__ import annotations

import asyncio

import pytest

from fedcare.integrations.kube import Ref
from fedcare.sandbox.kubelet import running_kubelet
from tests.support.kubelet import (IMAGE, alive, container, create, fast_kubelet_kwargs, phase, pod, wait_gone,
                                   wait_pod)

NODE = "node-a"
LATE_SERVER = ("import socket, sys, time\ntime.sleep(float(sys.argv[2]))\n"
               "host, port = sys.argv[1].rsplit(':', 1)\ns = socket.socket()\n"
               "s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind((host, int(port)))\n"
               "s.listen()\nwhile True:\n    c, _ = s.accept()\n"
               "    c.sendall(b'HTTP/1.0 200 OK\\r\\n\\r\\nok'); c.close()\n")


@pytest.fixture()
async def kubelet(api, tmp_path):
    async with running_kubelet(api, NODE, tmp_path / "kubelet", **fast_kubelet_kwargs()) as k:
        yield k


def ready(p) -> str:
    return next((c["status"] for c in (p.get("status") or {}).get("conditions") or [] if c["type"] == "Ready"), "")


@pytest.mark.parametrize("probe", [
    {"tcpSocket": {"port": 8080}},
    {"httpGet": {"path": "/health", "port": "http"}},
    {"exec": {"command": ["python", "-c", "import socket, os; socket.create_connection((os.environ['IP'], 8080))"]}},
])
async def test_readiness_waits_for_the_probe(api, kubelet, probe):
    spec = {"name": "main", "image": IMAGE, "command": ["python", "-c", LATE_SERVER], "args": ["0.0.0.0:8080", "1.5"],
            "ports": [{"name": "http", "containerPort": 8080}],
            "env": [{"name": "IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}],
            "readinessProbe": {**probe, "periodSeconds": 1}}
    await create(api, pod("late", containers=[spec], node=NODE, restart="Always"))
    early = await wait_pod(api, "late", lambda p: phase(p) == "Running")
    assert ready(early) == "False" and container(early)["ready"] is False
    done = await wait_pod(api, "late", lambda p: ready(p) == "True", timeout=15)
    assert container(done)["ready"] is True and container(done)["restartCount"] == 0


async def test_a_failing_liveness_probe_restarts_the_container(api, kubelet):
    spec = {"name": "main", "image": IMAGE, "command": ["python", "-c", "import time; print('up', flush=True); "
                                                                         "time.sleep(600)"],
            "livenessProbe": {"exec": {"command": ["python", "-c", "raise SystemExit(1)"]},
                              "periodSeconds": 1, "failureThreshold": 2}}
    await create(api, pod("unhealthy", containers=[spec], node=NODE, restart="Always", grace=1))
    p = await wait_pod(api, "unhealthy", lambda p: container(p).get("restartCount", 0) >= 1, timeout=20)
    assert container(p)["lastState"]["terminated"]["exitCode"] == 143   # SIGTERMed by the kubelet


async def test_flower_superlink_runs_as_a_pod_and_answers_on_its_pod_ip(api, kubelet):
    spec = {"name": "superlink", "image": "fedcare:dev", "command": ["flower-superlink"],
            "args": ["--insecure", "--host", "0.0.0.0", "--port", "9092", "--database", "/state/link.db",
                     "--disable-runtime-dependency-installation"],
            "volumeMounts": [{"name": "state", "mountPath": "/state"}],
            "ports": [{"name": "api", "containerPort": 9092}],
            "readinessProbe": {"httpGet": {"path": "/health", "port": "api"}, "periodSeconds": 1}}
    await create(api, pod("superlink", containers=[spec], node=NODE, restart="Always", grace=10,
                          volumes=[{"name": "state", "emptyDir": {}}]))
    p = await wait_pod(api, "superlink", lambda p: ready(p) == "True", timeout=90)
    ip = p["status"]["podIP"]
    reader, writer = await asyncio.open_connection(ip, 9092)
    writer.write(f"GET /health HTTP/1.0\r\nHost: {ip}\r\n\r\n".encode())
    assert (await reader.readline()).split()[1] == b"200"
    writer.close()
    assert list((kubelet.dir / "pods").glob("*/volumes/empty-dir/state/link.db"))   # --database /state/…
    shims = set(kubelet.processes)
    await api.delete(Ref("v1", "pods", "default", "superlink"))
    await wait_gone(api, "superlink", timeout=30)
    assert not any(alive(pid) for pid in shims)
