"""A pass that finds the SuperLink pod running waits for /health (up to one poll interval)
instead of leaving it to the next pass: against a real HTTP server that starts answering late."""

from __future__ import annotations

import asyncio
import socket
import time

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


async def test_no_wait_is_one_probe_and_a_silent_superlink_bounds_the_wait():
    port = _free_port()      # nothing listens: each probe is a refused connection
    t = time.monotonic()
    assert not await agg.wait_healthy(f"127.0.0.1:{port}", insecure=True, within=0.0)
    assert time.monotonic() - t < 1.0
    t = time.monotonic()
    assert not await agg.wait_healthy(f"127.0.0.1:{port}", insecure=True, within=0.5)
    assert 0.35 <= time.monotonic() - t < 3.0


async def test_an_error_answer_is_not_healthy():
    port = _free_port()
    runner = await _serve_after(port, 0.0, status=503)
    try:
        assert not await agg.wait_healthy(f"127.0.0.1:{port}", insecure=True, within=0.3)
    finally:
        await runner.cleanup()
