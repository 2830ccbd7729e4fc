"""The real commands, as a pod runs them: `fedcare hub` and `fedcare agent` in their own
processes, logging in from a kubeconfig, serving the liveness probe, stopping on SIGTERM."""

from __future__ import annotations

import asyncio
import copy
import os
import pathlib
import signal
import socket
import sys

import aiohttp
import yaml

from fedcare.api.resources import API_VERSION
from fedcare.integrations.kube import Ref
from fedcare.sandbox.kubeconfig import write_kubeconfig
from tests.support.harness import eventually

ROOT = pathlib.Path(__file__).resolve().parents[2]
NODE = yaml.safe_load((ROOT / "examples" / "hospitalnode-rouen.yaml").read_text())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def spawn(*args: str, log: pathlib.Path) -> asyncio.subprocess.Process:
    env = {k: v for k, v in os.environ.items() if k != "KUBECONFIG"}
    env["HOME"] = str(log.parent)      # never a developer's ~/.kube/config
    return await asyncio.create_subprocess_exec(sys.executable, "-m", "fedcare.cli", *args, env=env,
                                                stdout=log.open("w"), stderr=asyncio.subprocess.STDOUT)


async def healthy(url: str) -> bool:
    try:
        async with aiohttp.ClientSession() as s, s.get(url, timeout=aiohttp.ClientTimeout(total=2)) as r:
            return r.status == 200
    except aiohttp.ClientError:
        return False


async def stop(proc: asyncio.subprocess.Process, timeout: float = 20) -> int:
    if proc.returncode is None:
        proc.send_signal(signal.SIGTERM)
    return await asyncio.wait_for(proc.wait(), timeout)


def condition(obj, ctype):
    return next((c for c in (obj or {}).get("status", {}).get("conditions", []) if c["type"] == ctype), {})


SECRET = "eyJhbGciOiJSUzI1NiJ9.fedcare-test-secret-token"


def kubeconfig_with_secret(url: str, path: pathlib.Path) -> pathlib.Path:
    write_kubeconfig(url, path)
    cfg = yaml.safe_load(path.read_text())
    cfg["users"][0]["user"]["token"] = SECRET
    path.write_text(yaml.safe_dump(cfg))
    return path


async def test_hub_and_agent_commands(emulator, api, tmp_path):
    kubeconfig = kubeconfig_with_secret(emulator.url, tmp_path / "kubeconfig")
    hub_port, agent_port = free_port(), free_port()
    hub = await spawn("hub", "--kubeconfig", str(kubeconfig), "--liveness",
                      f"http://127.0.0.1:{hub_port}/healthz", log=tmp_path / "hub.log")
    agent = None
    try:
        body = copy.deepcopy(NODE)
        body["spec"].update(leaseDurationSeconds=10, gpu={"count": 0})   # a CPU-only site: no NVML here
        await api.create(Ref(API_VERSION, "hospitalnodes"), body)
        node = Ref(API_VERSION, "hospitalnodes", None, "rouen")
        # generous: importing kopf and both Kubernetes clients takes seconds on a loaded 2-core machine
        await eventually(lambda: healthy(f"http://127.0.0.1:{hub_port}/healthz"), timeout=90)
        await eventually(lambda: _cond_is(api, node, "Enrolled", "True"), timeout=20)

        agent = await spawn("agent", "--site", "rouen", "--hub-kubeconfig", str(kubeconfig), "--site-kubeconfig",
                            "", "--liveness", f"http://127.0.0.1:{agent_port}/healthz", log=tmp_path / "agent.log")
        await eventually(lambda: _cond_is(api, node, "Ready", "True"), timeout=30)
        obj = await eventually(lambda: _cond_is(api, node, "GPUReady", "False"), timeout=30)
        assert condition(obj, "GPUReady")["reason"] == "NoNVML"
        assert await healthy(f"http://127.0.0.1:{agent_port}/healthz")

        # deleting the site stops its agent cleanly, with a clear message and exit code 3
        await api.delete(node)
        assert await asyncio.wait_for(agent.wait(), 30) == 3
        assert "HospitalNode rouen no longer exists on the hub" in (tmp_path / "agent.log").read_text()
        await eventually(lambda: _gone(api, node), timeout=20)
        assert await stop(hub) == 0                                       # graceful shutdown on SIGTERM
    finally:
        for proc in (hub, agent):
            if proc is not None and proc.returncode is None:
                proc.kill()
                await proc.wait()
    log = (tmp_path / "hub.log").read_text()
    assert "Traceback" not in log, log[-3000:]
    for name in ("hub.log", "agent.log"):     # the bearer token never reaches the logs
        assert SECRET not in (tmp_path / name).read_text()


async def test_agent_for_an_unenrolled_site_exits_with_a_clear_error(emulator, tmp_path):
    kubeconfig = write_kubeconfig(emulator.url, tmp_path / "kubeconfig")
    agent = await spawn("agent", "--site", "nowhere", "--hub-kubeconfig", str(kubeconfig), "--site-kubeconfig", "",
                        "--liveness", "", log=tmp_path / "agent.log")
    assert await asyncio.wait_for(agent.wait(), 30) == 2
    assert "enroll it on the hub first" in (tmp_path / "agent.log").read_text()


async def _cond_is(api, ref, ctype, status):
    obj = await api.get_or_none(ref)
    return obj if condition(obj, ctype).get("status") == status else None


async def _gone(api, ref):
    return await api.get_or_none(ref) is None
