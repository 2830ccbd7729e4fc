"""Process kubelet: graceful deletion, no orphans (stop, deletion, kubelet killed), restarts
of the kubelet, API faults, two kubelets side by side, Services between pods."""

from __future__ import annotations

import asyncio
import os
import pathlib
import signal
import sys
import time

import kmock
import pytest

from fedcare.integrations.kube import Ref
from fedcare.sandbox.kubelet import running_kubelet
from fedcare.sandbox.kubeconfig import write_kubeconfig
from tests.support.kubelet import (clean_up, IMAGE, alive, container, create, fast_kubelet_kwargs, kill_quietly, log_text,
                                   phase, pod, wait_gone, wait_pod)

NODE = "node-a"
ROOT = pathlib.Path(__file__).resolve().parents[2]
#: A container that starts a grandchild, prints both pids, and ignores SIGTERM if asked.
FAMILY = ("import os, signal, subprocess, sys, time\n"
          "if sys.argv[1:] == ['stubborn']: signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
          "kid = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'])\n"
          "print(os.getpid(), kid.pid, flush=True)\n"
          "time.sleep(600)\n")


def family(name: str, *, stubborn: bool = False, grace: int = 30, **kw) -> dict:
    args = ["stubborn"] if stubborn else []
    return pod(name, containers=[{"name": "main", "image": IMAGE, "command": ["python", "-c", FAMILY], "args": args}],
               grace=grace, **kw)


async def pids_of(kubelet_or_path, name: str) -> list[int]:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        text = (log_text(kubelet_or_path, name) if not isinstance(kubelet_or_path, pathlib.Path)
                else next(iter(sorted(kubelet_or_path.glob(f"pods/default_{name}_*/logs/main/0.log"))), None)
                and next(iter(sorted(kubelet_or_path.glob(f"pods/default_{name}_*/logs/main/0.log")))).read_text())
        if text and text.strip():
            return [int(x) for x in text.split()[:2]]
        await asyncio.sleep(0.05)
    raise AssertionError(f"pod {name} never printed its pids")


async def wait_dead(pids: list[int], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not any(alive(p) for p in pids):
            return
        await asyncio.sleep(0.05)
    left = [p for p in pids if alive(p)]
    for p in left:
        kill_quietly(p)
    raise AssertionError(f"processes left behind: {left}")


@pytest.fixture()
async def kubelet(api, tmp_path):
    try:
        async with running_kubelet(api, NODE, tmp_path / "kubelet", **fast_kubelet_kwargs()) as k:
            yield k
    finally:
        await clean_up(api, NODE)


@pytest.mark.tiers
async def test_deletion_sigterms_then_sigkills_after_the_grace_period(apiserver, api, kubelet):
    await create(api, family("polite", node=NODE, grace=30))
    await create(api, family("stubborn", stubborn=True, node=NODE, grace=1))
    polite, stubborn = await pids_of(kubelet, "polite"), await pids_of(kubelet, "stubborn")
    started = time.monotonic()
    await api.delete(Ref("v1", "pods", "default", "stubborn"))
    terminating = await api.get(Ref("v1", "pods", "default", "stubborn"))
    assert terminating["metadata"]["deletionGracePeriodSeconds"] == 1   # graceful, as an API server does
    await wait_gone(api, "stubborn")
    assert time.monotonic() - started >= 0.9      # it waited out the grace period before SIGKILL
    await wait_dead(stubborn, timeout=2)
    await api.request("DELETE", Ref("v1", "pods", "default", "polite").path, body={"gracePeriodSeconds": 20})
    await wait_gone(api, "polite")                 # SIGTERM was enough: no 20 s wait
    await wait_dead(polite, timeout=2)
    assert not kubelet.processes


async def test_no_process_survives_the_kubelet_stopping(api, tmp_path):
    async with running_kubelet(api, NODE, tmp_path / "k", **fast_kubelet_kwargs()) as kubelet:
        await create(api, family("a", node=NODE))
        await create(api, family("b", stubborn=True, node=NODE, grace=60))
        pids = await pids_of(kubelet, "a") + await pids_of(kubelet, "b")
        shims = set(kubelet.processes)
        assert all(alive(p) for p in pids + list(shims))
    await wait_dead(pids + list(shims), timeout=2)   # shutdown_grace=2 caps the 60 s grace
    node = await api.get(Ref("v1", "nodes", None, NODE))
    assert next(c for c in node["status"]["conditions"] if c["type"] == "Ready")["status"] == "False"


def _start_cli(kubeconfig: pathlib.Path, node: str, directory: pathlib.Path) -> asyncio.Future:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "operator"), str(ROOT / "workloads")])}
    return asyncio.create_subprocess_exec(
        sys.executable, "-m", "fedcare.cli", "sandbox", "kubelet", "--kubeconfig", str(kubeconfig),
        "--node", node, "--dir", str(directory), "--bind", "yes", env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)


async def _ready(proc) -> str:
    while True:
        line = (await asyncio.wait_for(proc.stdout.readline(), timeout=30)).decode()
        assert line, "the kubelet exited before it was ready"
        if line.startswith("ready:"):
            return line


@pytest.mark.parametrize("how", ["SIGTERM", "SIGKILL"])
async def test_the_command_leaves_no_process_when_stopped_or_killed(emulator, api, tmp_path, how):
    kubeconfig = write_kubeconfig(emulator.url, tmp_path / "kubeconfig")
    proc = await _start_cli(kubeconfig, "cli-node", tmp_path / "k")
    try:
        line = await _ready(proc)
        assert "pod network 127." in line
        await create(api, family("victim", stubborn=True, node="cli-node", grace=1))
        pids = await pids_of(tmp_path / "k", "victim")
        drain = asyncio.ensure_future(proc.stdout.read())
        proc.send_signal(getattr(signal, how))
        code = await asyncio.wait_for(proc.wait(), timeout=30)
        output = (await drain).decode()
        assert code == (0 if how == "SIGTERM" else -9), output
        await wait_dead(pids, timeout=10)    # killed: the shim's parent-death signal cleans up
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_a_restarted_kubelet_restarts_its_pods(api, tmp_path):
    kw = fast_kubelet_kwargs()
    async with running_kubelet(api, NODE, tmp_path / "k", **kw) as kubelet:
        await create(api, pod("always", "import time; time.sleep(600)", node=NODE, restart="Always"))
        await create(api, pod("never", "import time; time.sleep(600)", node=NODE, restart="Never"))
        first = await wait_pod(api, "always", lambda p: phase(p) == "Running")
        await wait_pod(api, "never", lambda p: phase(p) == "Running")
        network = kubelet.network.cidr
    async with running_kubelet(api, NODE, tmp_path / "k", **kw) as kubelet:
        assert kubelet.network.cidr == network
        again = await wait_pod(api, "always", lambda p: container(p).get("restartCount") == 1
                               and "running" in container(p)["state"])
        assert again["status"]["podIP"] == first["status"]["podIP"]
        never = await wait_pod(api, "never", lambda p: phase(p) == "Failed")
        assert container(never)["state"]["terminated"]["exitCode"] in (137, 143)


async def test_status_writes_survive_api_errors(emulator, api, kubelet):
    fault = emulator.inject(kmock.K8sCriteria(method=kmock.method.PATCH, name="steady"),
                            kmock.KubernetesError(503, "ServiceUnavailable", "injected"), times=5)
    await create(api, pod("steady", "print('ok')", node=NODE))
    await wait_pod(api, "steady", lambda p: phase(p) == "Succeeded")
    assert fault.hits == 5


SERVER = ("import http.server, sys\nhost, port = sys.argv[1].rsplit(':', 1)\n"
          "class H(http.server.BaseHTTPRequestHandler):\n"
          "    def do_GET(self):\n        self.send_response(200); self.end_headers()\n"
          "        self.wfile.write(sys.argv[2].encode())\n"
          "http.server.HTTPServer((host, int(port)), H).serve_forever()\n")
CLIENT = "import sys, urllib.request; print(urllib.request.urlopen('http://' + sys.argv[1], timeout=5).read().decode())"


def server(name: str, reply: str, labels: dict, **kw) -> dict:
    return pod(name, containers=[{"name": "main", "image": IMAGE, "command": ["python", "-c", SERVER],
                                  "args": ["0.0.0.0:8080", reply], "ports": [{"name": "http", "containerPort": 8080}],
                                  "readinessProbe": {"tcpSocket": {"port": "http"}, "periodSeconds": 1}}],
               labels=labels, restart="Always", **kw)


def client(name: str, address: str, **kw) -> dict:
    return pod(name, containers=[{"name": "main", "image": IMAGE, "command": ["python", "-c", CLIENT],
                                  "args": [address]}], **kw)


async def test_a_pod_reaches_another_through_its_service_name(api, kubelet):
    await create(api, {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "namespace": "default"},
                       "spec": {"selector": {"app": "web"}, "ports": [{"name": "http", "port": 80, "targetPort": 8080},
                                                                      {"name": "alt", "port": 81, "targetPort": "http"}]}})
    await create(api, client("fetch", "web.default.svc.cluster.local:80", node=NODE))
    waiting = await wait_pod(api, "fetch", lambda p: "waiting" in container(p).get("state", {})
                             and "Service default/web" in container(p)["state"]["waiting"].get("message", ""))
    assert phase(waiting) == "Pending"
    await create(api, server("web-1", "hello through the service", {"app": "web"}, node=NODE))
    await wait_pod(api, "fetch", lambda p: phase(p) == "Succeeded", timeout=30)
    assert log_text(kubelet, "fetch").strip() == "hello through the service"
    await create(api, client("fetch-short", "web.default.svc:81", node=NODE))   # named targetPort, short name
    await wait_pod(api, "fetch-short", lambda p: phase(p) == "Succeeded", timeout=30)
    assert log_text(kubelet, "fetch-short").strip() == "hello through the service"


async def test_two_kubelets_side_by_side(api, tmp_path):
    kw = fast_kubelet_kwargs()
    async with running_kubelet(api, "site-a", tmp_path / "a", labels={"site": "a"}, **kw) as a, \
            running_kubelet(api, "site-b", tmp_path / "b", labels={"site": "b"},
                            taints=[{"key": "dedicated", "value": "b", "effect": "NoSchedule"}], **kw) as b:
        assert a.network.cidr != b.network.cidr
        toleration = [{"key": "dedicated", "operator": "Equal", "value": "b", "effect": "NoSchedule"}]
        await create(api, server("srv-a", "from a", {"app": "a"}, nodeSelector={"site": "a"}))
        await create(api, server("srv-b", "from b", {"app": "b"}, nodeSelector={"site": "b"}, tolerations=toleration))
        await create(api, server("srv-b-untolerated", "x", {"app": "x"}, nodeSelector={"site": "b"}))
        pa = await wait_pod(api, "srv-a", lambda p: container(p).get("ready"))
        pb = await wait_pod(api, "srv-b", lambda p: container(p).get("ready"))
        assert (pa["spec"]["nodeName"], pb["spec"]["nodeName"]) == ("site-a", "site-b")
        assert a.network.owns(pa["status"]["podIP"]) and b.network.owns(pb["status"]["podIP"])
        # Both listen on port 8080, each on its own pod IP; a pod on a reaches b's pod by IP.
        await create(api, client("cross", f"{pb['status']['podIP']}:8080", nodeSelector={"site": "a"}))
        await wait_pod(api, "cross", lambda p: phase(p) == "Succeeded", timeout=30)
        assert log_text(a, "cross").strip() == "from b"
        assert not (await api.get(Ref("v1", "pods", "default", "srv-b-untolerated")))["spec"].get("nodeName")


async def test_api_outages_of_watch_and_heartbeat_are_survived(emulator, api, tmp_path):
    listing = emulator.inject(lambda req: req.method == "GET" and str(req.url.path) == "/api/v1/pods",
                              kmock.KubernetesError(500, "InternalError", "injected"), times=4)
    async with running_kubelet(api, NODE, tmp_path / "k", **fast_kubelet_kwargs(lease_duration=4)) as kubelet:
        lease = Ref("coordination.k8s.io/v1", "leases", "kube-node-lease", NODE)
        before = (await api.get(lease))["spec"]["renewTime"]
        down = emulator.inject(lambda req: req.method == "PATCH" and "/leases/" in str(req.url),
                               kmock.KubernetesError(503, "ServiceUnavailable", "injected"), times=6)
        for _ in range(300):
            if (await api.get(lease))["spec"]["renewTime"] != before and down.hits >= 1:
                break
            await asyncio.sleep(0.05)
        assert down.hits >= 1 and (await api.get(lease))["spec"]["renewTime"] != before
        await create(api, pod("after-outage", "print('fine')", node=NODE))
        await wait_pod(api, "after-outage", lambda p: phase(p) == "Succeeded")
        assert listing.hits == 4 and kubelet.node   # the pod list failed past the client's retries


async def test_a_deleted_node_registers_again(api, tmp_path):
    async with running_kubelet(api, NODE, tmp_path / "k", **fast_kubelet_kwargs(lease_duration=4)):
        await api.delete(Ref("v1", "nodes", None, NODE))
        for _ in range(200):
            if await api.get_or_none(Ref("v1", "nodes", None, NODE)) is not None:
                break
            await asyncio.sleep(0.05)
        node = await api.get(Ref("v1", "nodes", None, NODE))
        assert next(c for c in node["status"]["conditions"] if c["type"] == "Ready")["status"] == "True"


async def test_kubelets_of_different_api_servers_never_share_a_pod_network(api, tmp_path):
    from fedcare.integrations.kube import Kube
    from fedcare.sandbox.emulator import fedcare_emulator

    async with fedcare_emulator() as other:
        other_api = Kube.from_url(other.url)
        try:
            async with running_kubelet(api, NODE, tmp_path / "a", **fast_kubelet_kwargs()) as a, \
                    running_kubelet(other_api, NODE, tmp_path / "b", **fast_kubelet_kwargs()) as b:
                assert a.network.cidr != b.network.cidr     # same node name, separate APIs, one machine
        finally:
            await other_api.close()
