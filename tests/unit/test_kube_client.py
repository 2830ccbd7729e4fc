"""The API client: timeouts, bounded retries with backoff, typed errors (against a local server)."""

from __future__ import annotations

import asyncio

import pytest
from aiohttp import web

from fedcare.integrations.kube import Forbidden, Kube, KubeError, NotFound, Ref, RetryPolicy, ensure

FAST = RetryPolicy(attempts=3, base_delay=0.01, max_delay=0.02, timeout=0.5)


@pytest.fixture()
async def server():
    state = {"script": [], "calls": 0, "objects": {}}

    async def handle(request: web.Request) -> web.Response:
        state["calls"] += 1
        state.setdefault("seen", []).append((request.host, request.headers.get("Proxy-Authorization")))
        if state["script"]:
            action = state["script"].pop(0)
            if action == "hang":
                await asyncio.sleep(5)
            elif isinstance(action, int):
                return web.json_response({"kind": "Status", "reason": "Injected", "message": "no"}, status=action)
        key = request.path
        if request.method == "GET":
            if key not in state["objects"]:
                return web.json_response({"kind": "Status", "reason": "NotFound", "message": "absent"}, status=404)
            return web.json_response(state["objects"][key])
        body = await request.json()
        if request.method == "POST":
            key = f"{request.path}/{body['metadata']['name']}"
            state["objects"][key] = body
            return web.json_response(body, status=201)
        if request.method == "PATCH":
            state["objects"][key].update(body)
            return web.json_response(state["objects"][key])
        return web.json_response({})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    state["port"] = port
    kube = Kube.from_url(f"http://127.0.0.1:{port}", policy=FAST)
    yield kube, state
    await kube.close()
    await runner.cleanup()


NS = Ref("v1", "namespaces", None, "x")


async def test_transient_errors_are_retried(server):
    kube, state = server
    state["objects"]["/api/v1/namespaces/x"] = {"metadata": {"name": "x"}}
    state["script"] = [503, 500]
    assert (await kube.get(NS))["metadata"]["name"] == "x"
    assert state["calls"] == 3


async def test_retries_are_bounded(server):
    kube, state = server
    state["script"] = [503] * 10
    with pytest.raises(KubeError) as info:
        await kube.get(NS)
    assert info.value.status == 503 and state["calls"] == 3


async def test_timeouts_are_retried_then_reported(server):
    kube, state = server
    state["script"] = ["hang"] * 3
    with pytest.raises(KubeError) as info:
        await kube.get(NS)
    assert info.value.status == 0 and "could not be reached" in str(info.value)


async def test_permanent_errors_are_not_retried(server):
    kube, state = server
    state["script"] = [403]
    with pytest.raises(Forbidden):
        await kube.get(NS)
    assert state["calls"] == 1
    with pytest.raises(NotFound):
        await kube.get(NS)
    assert await kube.get_or_none(NS) is None


async def test_unreachable_server():
    kube = Kube.from_url("http://127.0.0.1:9", policy=FAST)
    try:
        with pytest.raises(KubeError) as info:
            await kube.get(NS)
        assert info.value.status == 0
    finally:
        await kube.close()


async def test_ensure_creates_then_converges(server):
    kube, state = server
    desired = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "x", "labels": {"a": "1"}}}
    obj, created = await ensure(kube, "namespaces", desired)
    assert created
    state["objects"]["/api/v1/namespaces/x"]["metadata"]["labels"] = {"a": "0"}
    obj, created = await ensure(kube, "namespaces", desired)
    assert not created and obj["metadata"]["labels"] == {"a": "1"}


async def test_a_token_given_to_from_url_is_sent_as_a_bearer_token():
    from fedcare.integrations.kube import Kube

    kube = Kube.from_url("https://127.0.0.1:1", token="t0ken")
    try:
        auth = await kube.api.configuration.auth_settings()
        assert auth["BearerToken"]["value"] == "Bearer t0ken"
    finally:
        await kube.close()


@pytest.fixture()
def no_proxy_env(monkeypatch):
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)
    return monkeypatch


async def test_proxy_variables_are_read_once_and_honoured(server, no_proxy_env):
    """The client reads the proxy variables once (not in a thread per request) and still goes
    through the proxy they name, with its credentials: the test server plays the proxy."""
    _, state = server
    no_proxy_env.setenv("HTTP_PROXY", f"http://proxyuser:pr0xy@127.0.0.1:{state['port']}")
    kube = Kube.from_url("http://api.fedcare.invalid:6443", policy=FAST)
    no_proxy_env.delenv("HTTP_PROXY")       # read at construction: later changes do not matter
    try:
        state["objects"]["/api/v1/namespaces/x"] = {"metadata": {"name": "x"}}
        assert (await kube.get(NS))["metadata"]["name"] == "x"
        host, proxy_auth = state["seen"][-1]
        assert host.startswith("api.fedcare.invalid")     # the API server's URL, sent to the proxy
        assert proxy_auth and proxy_auth.startswith("Basic ")
        assert not kube.api.rest_client.pool_manager.trust_env
    finally:
        await kube.close()


async def test_no_proxy_naming_the_api_server_bypasses_the_proxy(server, no_proxy_env):
    _, state = server
    no_proxy_env.setenv("HTTP_PROXY", f"http://127.0.0.1:{state['port']}")
    no_proxy_env.setenv("NO_PROXY", "127.0.0.2")
    kube = Kube.from_url("http://127.0.0.2:1", policy=FAST)
    try:
        assert kube.api.rest_client.proxy is None
        with pytest.raises(KubeError):          # straight to the address itself: nothing listens there
            await kube.get(NS)
        assert state["calls"] == 0
    finally:
        await kube.close()


async def test_an_unreachable_proxy_with_credentials_leaves_them_out_of_the_error(no_proxy_env):
    """The proxy's URL carries its password (aiohttp sends it as Proxy-Authorization); an error
    reaching it keeps only the exception's type name, never its text, which prints that URL."""
    no_proxy_env.setenv("HTTP_PROXY", "http://proxyuser:pr0xy@127.0.0.2:1")
    kube = Kube.from_url("http://api.fedcare.invalid:6443", policy=FAST)
    try:
        with pytest.raises(KubeError) as err:
            await kube.get(NS)
        assert "pr0xy" not in str(err.value) and "pr0xy" not in repr(err.value.args)
    finally:
        await kube.close()
