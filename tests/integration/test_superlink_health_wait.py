"""A pass that finds the SuperLink pod running waits for /health (up to HEALTH_WAIT, or until
kopf's stop flag) instead of leaving it to the next pass: against a real HTTP server that
starts answering late."""

from __future__ import annotations

import asyncio
import socket
import time

import pytest
from aiohttp import web

from fedcare.hub import aggregator as agg


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def _serve_after(port: int, delay: float, status: int = 200) -> web.AppRunner:
    await asyncio.sleep(delay)
    app = web.Application()
    app.router.add_get("/health", lambda _: web.Response(status=status))
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner


async def test_the_pass_sees_a_superlink_that_answers_while_it_waits():
    port = _free_port()
    starting = asyncio.create_task(_serve_after(port, 0.4))
    t = time.monotonic()
    try:
        assert await agg.wait_healthy(f"127.0.0.1:{port}", insecure=True, within=5.0)
        waited = time.monotonic() - t
        assert 0.35 <= waited < 4.0     # seen once it answered, not at the end of the wait
    finally:
        await (await starting).cleanup()


async def test_no_wait_is_no_probe_and_a_silent_superlink_bounds_the_wait():
    port = _free_port()
    runner = await _serve_after(port, 0.0)   # healthy, but within=0 (the caller has just probed): no probe
    try:
        assert not await agg.wait_healthy(f"127.0.0.1:{port}", insecure=True, within=0.0)
    finally:
        await runner.cleanup()
    t = time.monotonic()     # nothing listens now: each probe is a refused connection
    assert not await agg.wait_healthy(f"127.0.0.1:{port}", insecure=True, within=0.5)
    assert 0.35 <= time.monotonic() - t < 3.0


async def test_an_error_answer_is_not_healthy():
    port = _free_port()
    runner = await _serve_after(port, 0.0, status=503)
    try:
        assert not await agg.wait_healthy(f"127.0.0.1:{port}", insecure=True, within=0.3)
    finally:
        await runner.cleanup()


async def test_kopf_stop_flag_ends_the_wait():
    port = _free_port()
    t = time.monotonic()
    assert not await agg.wait_healthy(f"127.0.0.1:{port}", insecure=True, within=10.0, stop=lambda: True)
    assert time.monotonic() - t < 2.0


async def _running_superlink(api, emulator_pod_port: int, name: str):
    """A round and its SuperLink pod, bound to a node, Running at 127.0.0.1 (the port given)."""
    from fedcare.api.validation import parse
    from fedcare.integrations.kube import Ref
    from fedcare.sandbox.federation import round_manifest

    body = await api.create(Ref("fedcare.io/v1alpha1", "federatedrounds", "default"),
                            round_manifest(name, sites=2, rounds=1))
    spec, cfg = parse("FederatedRound", body), agg.AggregatorConfig(insecure=True, port=emulator_pod_port)
    pod = dict(agg.manifests(body, spec, cfg))["pods"]
    pod["spec"]["nodeName"] = "node-a"      # bound: a deletion waits for a kubelet (deletionTimestamp)
    pod = await api.create(Ref("v1", "pods", "default"), pod)
    ref = Ref("v1", "pods", "default", pod["metadata"]["name"])
    await api.request("PATCH", ref.path + "/status", body={"status": {"phase": "Running", "podIP": "127.0.0.1"}},
                      content_type="application/merge-patch+json")
    return body, spec, cfg, ref


async def test_a_pod_that_starts_terminating_during_the_wait_is_not_adopted(emulator):
    from fedcare.integrations.kube import Kube
    from tests.integration.conftest import FAST

    api = Kube.from_url(str(emulator.url), policy=FAST)
    try:
        # control: the same wait, nothing changes meanwhile -> ready
        port = _free_port()
        body, spec, cfg, _ = await _running_superlink(api, port, "steady")
        starting = asyncio.create_task(_serve_after(port, 0.5))
        state = await agg.ensure_aggregator(api, body, spec, cfg, health_wait=5.0)
        assert state.ready, state.message
        await (await starting).cleanup()

        port = _free_port()
        body, spec, cfg, ref = await _running_superlink(api, port, "replaced")
        starting = asyncio.create_task(_serve_after(port, 0.5))

        async def delete_meanwhile() -> None:
            await asyncio.sleep(0.2)
            await api.delete(ref)

        deleting = asyncio.create_task(delete_meanwhile())
        state = await agg.ensure_aggregator(api, body, spec, cfg, health_wait=5.0)
        await deleting
        assert not state.ready and not state.failed
        assert "changed while the hub waited for /health" in state.message
        assert (await api.get(ref))["metadata"].get("deletionTimestamp")
        await (await starting).cleanup()
    finally:
        await api.close()


async def test_the_scheduler_waits_at_most_until_the_rounds_deadline_and_passes_kopfs_flag(tmp_path, monkeypatch):
    """The round pass hands ensure_aggregator its wait (HEALTH_WAIT, cut at the deadline) and
    kopf's stop flag; a wait past the deadline would hold a pass the deadline should end."""
    import datetime as dt

    from fedcare.api.validation import parse
    from fedcare.hub import round_scheduler as rs
    from fedcare.hub.flower_runs import FlowerCLI
    from fedcare.sandbox.federation import round_manifest

    cfg = rs.RoundConfig(flower=FlowerCLI(tmp_path / "flwr"), app="", aggregator=agg.AggregatorConfig(insecure=True))
    rec = rs.Reconciler(None, cfg)      # type: ignore[arg-type]   # no API call is reached

    def round_body(seconds_left: float) -> dict:
        body = round_manifest("r", sites=2, rounds=1)
        body["metadata"].update(uid="u", namespace="default")
        body["status"] = {"deadline": rs._iso(rs._now() + dt.timedelta(seconds=seconds_left)), "attempt": 1}
        return body

    assert rec._health_wait(round_body(3600)) == rs.HEALTH_WAIT
    assert 2.0 <= rec._health_wait(round_body(4)) <= 4.0
    assert rec._health_wait(round_body(-5)) == 0.0

    seen: dict = {}

    class Seen(Exception):
        pass

    async def ensure_aggregator(*_args, **kwargs):
        seen.update(kwargs)
        raise Seen

    monkeypatch.setattr(rs.agg, "ensure_aggregator", ensure_aggregator)
    body = round_body(4)
    flag = lambda: False        # noqa: E731
    with pytest.raises(Seen):
        await rec.run_aggregator(body, parse("FederatedRound", body), flag)
    assert 2.0 <= seen["health_wait"] <= 4.0 and seen["stop"] is flag
