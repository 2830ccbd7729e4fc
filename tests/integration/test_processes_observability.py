"""The real commands' observability: `fedcare hub`/`fedcare agent` with --metrics and
--log-format json in their own processes; Events about the site; no token anywhere."""

from __future__ import annotations

import asyncio
import copy
import json

import aiohttp

from fedcare.api.resources import API_VERSION
from fedcare.integrations.kube import Ref
from tests.integration.test_processes import (NODE, SECRET, _cond_is, free_port, kubeconfig_with_secret, spawn,
                                              stop)
from tests.support.harness import eventually


async def _get(url: str) -> str | None:
    try:
        async with aiohttp.ClientSession() as s, s.get(url, timeout=aiohttp.ClientTimeout(total=2)) as r:
            return await r.text() if r.status == 200 else None
    except aiohttp.ClientError:
        return None


async def test_hub_and_agent_serve_metrics_and_log_json(emulator, api, tmp_path):
    kubeconfig = kubeconfig_with_secret(emulator.url, tmp_path / "kubeconfig")
    hub_metrics, agent_metrics = free_port(), free_port()
    hub = await spawn("--log-format", "json", "hub", "--kubeconfig", str(kubeconfig), "--liveness", "",
                      "--metrics", f"127.0.0.1:{hub_metrics}", log=tmp_path / "hub.log")
    agent = None
    try:
        body = copy.deepcopy(NODE)
        body["spec"].update(leaseDurationSeconds=10, gpu={"count": 0})
        await api.create(Ref(API_VERSION, "hospitalnodes"), body)
        node = Ref(API_VERSION, "hospitalnodes", None, "rouen")
        await eventually(lambda: _cond_is(api, node, "Enrolled", "True"), timeout=60)   # process start, loaded CPUs
        agent = await spawn("--log-format", "json", "agent", "--site", "rouen", "--hub-kubeconfig", str(kubeconfig),
                            "--site-kubeconfig", "", "--liveness", "", "--metrics", f"127.0.0.1:{agent_metrics}",
                            log=tmp_path / "agent.log")
        await eventually(lambda: _cond_is(api, node, "Ready", "True"), timeout=30)

        async def hub_sees_it():
            text = await _get(f"http://127.0.0.1:{hub_metrics}/metrics")
            return text if text and 'fedcare_sites{condition="Ready",status="True"} 1.0' in text else None

        hub_text = await eventually(hub_sees_it, timeout=20)
        assert 'fedcare_build_info{role="hub",version=' in hub_text
        assert 'fedcare_site_heartbeat_age_seconds{site="rouen"}' in hub_text
        assert "process_resident_memory_bytes" in hub_text

        async def agent_renewed():
            text = await _get(f"http://127.0.0.1:{agent_metrics}/metrics")
            return text if (text and 'fedcare_agent_lease_renewals_total{site="rouen"} 0.0' not in text
                            # no NVML in this process: each poll is counted as an Unavailable error
                            and 'fedcare_agent_nvml_poll_errors_total{error="Unavailable",site="rouen"} 0.0'
                            not in text) else None

        agent_text = await eventually(agent_renewed, timeout=20)
        assert 'fedcare_build_info{role="agent",version=' in agent_text
        assert 'fedcare_agent_gpus{site="rouen",state="total"} 0.0' in agent_text
        assert "fedcare_site_heartbeat_age_seconds" not in agent_text        # hub metrics stay on the hub

        events = await api.list(Ref("v1", "events", "default"))
        reasons = {e["reason"] for e in events if e["involvedObject"].get("name") == "rouen"}
        # the agent may start after one lease duration (then LeaseUpdateStopped, and it "recovers");
        # a site that was never available is never reported lost
        assert "Enrolled" in reasons and reasons & {"AgentConnected", "SiteRecovered"}, reasons
        assert "SiteUnavailable" not in reasons
        for text in (hub_text, agent_text, json.dumps(events)):
            assert SECRET not in text
        assert await stop(agent) == 0
        assert await stop(hub) == 0
    finally:
        for proc in (hub, agent):
            if proc is not None and proc.returncode is None:
                proc.kill()
                await proc.wait()
    for name in ("hub.log", "agent.log"):
        lines = [line for line in (tmp_path / name).read_text().splitlines() if line.strip()]
        assert lines
        records = [json.loads(line) for line in lines]          # every line is one JSON object
        assert all({"time", "level", "logger", "message"} <= set(r) for r in records)
        assert SECRET not in (tmp_path / name).read_text()
    hub_records = [json.loads(x) for x in (tmp_path / "hub.log").read_text().splitlines() if x.strip()]
    assert any(r["message"].startswith("Serving Prometheus metrics") for r in hub_records)


async def test_a_bad_metrics_address_is_refused_with_the_expected_form(tmp_path):
    proc = await spawn("hub", "--metrics", "nowhere", log=tmp_path / "hub.log")
    assert await asyncio.wait_for(proc.wait(), 30) == 2
    assert "expected HOST:PORT (for example 0.0.0.0:9102)" in (tmp_path / "hub.log").read_text()
