"""Watch semantics of the emulated API: what kopf needs to never replay or miss a change."""

from __future__ import annotations

import asyncio
from typing import Any

import kmock
from kubernetes_asyncio import client as k8s
from kubernetes_asyncio import watch as k8s_watch

from fedcare.api.resources import FEDERATED_ROUNDS
from fedcare.sandbox.emulator import RealisticEmulator, fedcare_emulator
from tests.support.harness import eventually
from tests.support.kube import KubeClient

FR = FEDERATED_ROUNDS


def obj(name: str, labels: dict[str, str] | None = None) -> dict[str, Any]:
    return {"apiVersion": FR.api_version, "kind": FR.kind, "metadata": {"name": name, "labels": labels or {}},
            "spec": {"size": 1}}


async def collect(kube: KubeClient, out: list[tuple[str, str | None]], *, until_quiet: bool = False,
                  **params: str) -> None:
    """Append (type, name) for each event until the server ends the stream, or (until_quiet)
    until the first BOOKMARK: bookmarks come only after bookmark_interval without events."""
    if until_quiet:
        params["allowWatchBookmarks"] = "true"
    async for event in kube.watch(FR, "default", **params):
        if until_quiet and event["type"] == "BOOKMARK":
            out.append(("QUIET", None))
            return
        out.append((event["type"], event["object"]["metadata"].get("name")))
    out.append(("EOF", None))


def changes(events: list[tuple[str, str | None]]) -> list[tuple[str, str | None]]:
    return [e for e in events if e[0] != "BOOKMARK"]


async def test_resuming_from_a_version_replays_exactly_the_changes_since(kube: KubeClient):
    for name in ("a", "b"):
        await kube.create(FR, obj(name), "default")
    since = (await kube.list(FR, "default")).ok()["metadata"]["resourceVersion"]
    await kube.patch(FR, "a", {"spec": {"size": 2}}, "default")
    await kube.delete(FR, "b", "default")
    await kube.create(FR, obj("c"), "default")
    out: list[tuple[str, str | None]] = []
    async with asyncio.timeout(5):
        await collect(kube, out, resourceVersion=since, until_quiet=True)
    # kmock replays every object as ADDED (kopf then re-runs on.create for pre-existing objects).
    assert out == [("MODIFIED", "a"), ("DELETED", "b"), ("ADDED", "c"), ("QUIET", None)]
    out.clear()
    async with asyncio.timeout(5):
        await collect(kube, out, until_quiet=True)  # no version: the current objects, as ADDED
    assert out == [("ADDED", "a"), ("ADDED", "c"), ("QUIET", None)]


async def test_live_events_selectors_bookmarks_and_timeout(kube: KubeClient):
    await kube.create(FR, obj("a", {"app": "x"}), "default")
    since = (await kube.list(FR, "default")).ok()["metadata"]["resourceVersion"]
    out: list[tuple[str, str | None]] = []
    task = asyncio.create_task(collect(kube, out, resourceVersion=since, labelSelector="app=x",
                                       allowWatchBookmarks="true", timeoutSeconds="1"))
    await asyncio.sleep(0.1)
    await kube.create(FR, obj("b", {"app": "x"}), "default")
    await kube.create(FR, obj("other", {"app": "y"}), "default")
    await kube.patch(FR, "a", {"metadata": {"labels": {"app": "y"}}}, "default")  # leaves the selector
    await kube.patch(FR, "a", {"metadata": {"labels": {"app": "x"}}}, "default")  # comes back
    async with asyncio.timeout(5):
        await task  # timeoutSeconds ends the stream
    assert changes(out) == [("ADDED", "b"), ("DELETED", "a"), ("ADDED", "a"), ("EOF", None)]
    assert ("BOOKMARK", None) in out  # bookmark_interval=0.2 s in the fixture


async def test_bookmarks_carry_versions_already_delivered(emulator: RealisticEmulator, kube: KubeClient):
    await kube.create(FR, obj("a"), "default")
    seen: list[dict[str, Any]] = []

    async def reader() -> None:
        async for event in kube.watch(FR, "default", allowWatchBookmarks="true", sendInitialEvents="true",
                                      resourceVersionMatch="NotOlderThan", timeoutSeconds="1"):
            seen.append(event)

    async with asyncio.timeout(5):
        await reader()
    first_bookmark = next(e for e in seen if e["type"] == "BOOKMARK")["object"]
    assert seen[0]["type"] == "ADDED"  # initial events, then the initial-events-end bookmark
    assert first_bookmark["metadata"]["annotations"] == {"k8s.io/initial-events-end": "true"}
    assert int(first_bookmark["metadata"]["resourceVersion"]) == emulator.resource_version


async def test_too_old_a_version_gets_410_gone():
    async with fedcare_emulator(watch_cache_size=2) as k, KubeClient(k.url) as kube:
        first = (await kube.create(FR, obj("a"), "default")).ok()["metadata"]["resourceVersion"]
        for size in range(3):
            await kube.patch(FR, "a", {"spec": {"size": size + 2}}, "default")
        async with asyncio.timeout(5):
            events = [e async for e in kube.watch(FR, "default", resourceVersion=first)]
        assert [(e["type"], e["object"]["code"], e["object"]["reason"]) for e in events] == [
            ("ERROR", 410, "Expired")]  # kopf re-lists on this
        assert (await kube.request("GET", "/apis/fedcare.io/v1alpha1/federatedrounds",
                                   params={"watch": "true", "resourceVersion": "x"})).status == 400


async def test_no_event_is_lost_between_list_and_watch_under_load(kube: KubeClient):
    """Writes racing a list-then-watch client: every change arrives exactly once."""
    async def writer() -> None:
        for i in range(40):
            await kube.create(FR, obj(f"w{i}"), "default")

    task = asyncio.create_task(writer())
    await asyncio.sleep(0.02)
    listed = (await kube.list(FR, "default")).ok()
    names = [i["metadata"]["name"] for i in listed["items"]]
    assert len(names) < 40, "the writer finished before the list: no race was tested"
    async with asyncio.timeout(10):
        async for event in kube.watch(FR, "default", resourceVersion=listed["metadata"]["resourceVersion"]):
            names.append(event["object"]["metadata"]["name"])
            if len(names) >= 40:
                break
    await task
    assert sorted(names) == sorted(f"w{i}" for i in range(40))


async def test_kubernetes_asyncio_reads_namespaces_and_watches(emulator: RealisticEmulator):
    """Our clients' path fixes: /api/v1/namespaces/NAME and ``?watch=True`` (a Python bool)."""
    cfg = k8s.Configuration(host=emulator.url)
    async with k8s.ApiClient(cfg) as api:
        core, custom = k8s.CoreV1Api(api), k8s.CustomObjectsApi(api)
        assert (await core.read_namespace("default")).metadata.name == "default"
        created = await custom.create_namespaced_custom_object(FR.group, FR.version, "default", FR.plural, obj("a"))
        assert created["metadata"]["uid"]  # a 201: kubernetes_asyncio returns the body
        listed = await custom.list_namespaced_custom_object(FR.group, FR.version, "default", FR.plural)
        stream = k8s_watch.Watch().stream(custom.list_namespaced_custom_object, FR.group, FR.version, "default",
                                          FR.plural, resource_version=listed["metadata"]["resourceVersion"],
                                          timeout_seconds=1)
        types: list[str] = []

        async def read() -> None:
            async for event in stream:
                types.append(event["type"])

        task = asyncio.create_task(read())
        await eventually(lambda: emulator.watching(FR), timeout=5)
        await custom.patch_namespaced_custom_object(FR.group, FR.version, "default", FR.plural, "a",
                                                    {"spec": {"size": 2}},
                                                    _content_type="application/merge-patch+json")  # type: ignore[call-arg]
        async with asyncio.timeout(5):
            await task
        assert types == ["MODIFIED"]  # not a LIST served as a watch, no replay of "a"


async def test_plain_kmock_replays_on_resume_which_is_why_this_layer_exists():
    """Pins kmock 0.8's behaviour: if an upgrade fixes it, parts of our layer can go."""
    async with kmock.KubernetesEmulator() as k, kmock.Server(k):
        k.resources["fedcare.io/v1alpha1/federatedrounds"] = kmock.ResourceInfo(kind="FederatedRound", namespaced=True)
        async with KubeClient(str(k.url)) as kube:
            await kube.create(FR, obj("a"), "default")
            events: list[str] = []
            async with asyncio.timeout(5):
                async for event in kube.watch(FR, "default", resourceVersion="999999"):
                    events.append(event["type"])
                    break  # kmock ignores timeoutSeconds: the stream would never end
        assert events == ["ADDED"]  # "a" replayed although it is older than the version asked


# -- the writer-side fan-out (emulator_watch.Subscription) ------------------------------------

def _subscriptions(emu: RealisticEmulator) -> int:
    return sum(len(s) for s in emu.subscriptions.values())


async def test_a_malformed_selector_is_a_400_and_breaks_no_write(emulator: RealisticEmulator, kube: KubeClient):
    await kube.create(FR, obj("a"), "default")
    path = "/apis/fedcare.io/v1alpha1/namespaces/default/federatedrounds"
    for params in ({"watch": "true", "fieldSelector": "metadata.name"}, {"fieldSelector": "metadata.name"}):
        bad = await kube.request("GET", path, params={**params, "timeoutSeconds": "1"})
        assert bad.status == 400, bad
    assert _subscriptions(emulator) == 0
    seen: list[tuple[str, str | None]] = []
    reader = asyncio.create_task(collect(kube, seen, timeoutSeconds="1"))
    await eventually(lambda: emulator.watching(FR) == 1)
    assert (await kube.create(FR, obj("b"), "default")).status == 201
    await reader
    assert ("ADDED", "b") in seen and _subscriptions(emulator) == 0


async def test_timeout_seconds_ends_a_stream_that_always_has_a_backlog(emulator: RealisticEmulator,
                                                                      kube: KubeClient):
    import time
    await kube.create(FR, obj("a"), "default")
    stop = asyncio.Event()

    async def writer(i: int) -> None:
        n = 0
        while not stop.is_set():
            n += 1
            await kube.patch(FR, "a", {"spec": {"size": n * 10 + i}}, "default")

    writers = [asyncio.create_task(writer(i)) for i in range(6)]
    started = time.monotonic()
    try:
        async for _ in kube.watch(FR, "default", timeoutSeconds="1"):
            await asyncio.sleep(0.005)      # slower than the writers: the queue never empties
            assert time.monotonic() - started < 10, "timeoutSeconds=1 did not end the stream"
    finally:
        stop.set()
        await asyncio.gather(*writers)


async def test_bookmarks_pass_excluded_events_but_never_an_undelivered_one(emulator: RealisticEmulator,
                                                                          kube: KubeClient):
    """Events a selector excludes move the stream's bookmark on (the client resumes after them)
    without waking it; a bookmark is never ahead of an event not yet delivered."""
    await kube.create(FR, obj("a", {"app": "x"}), "default")
    await kube.create(FR, obj("b", {"app": "y"}), "default")
    stop = asyncio.Event()

    async def writer() -> None:
        n = 0
        while not stop.is_set():
            n += 1
            await kube.patch(FR, "a" if n % 3 == 0 else "b", {"spec": {"size": n}}, "default")
            await asyncio.sleep(0.01 if n % 20 else 0.4)

    w = asyncio.create_task(writer())
    last_bookmark, delivered, bookmarks = 0, 0, []
    try:
        async for e in kube.watch(FR, "default", labelSelector="app=x", allowWatchBookmarks="true",
                                  timeoutSeconds="3"):
            rv = int(e["object"]["metadata"]["resourceVersion"])
            if e["type"] == "BOOKMARK":
                assert rv >= delivered
                last_bookmark = max(last_bookmark, rv)
                bookmarks.append(rv - delivered)
            else:
                assert e["object"]["metadata"]["name"] == "a"      # b's changes never reach it
                assert rv > last_bookmark, (rv, last_bookmark)
                delivered = rv
            await asyncio.sleep(0.05)
    finally:
        stop.set()
        await w
    assert delivered and bookmarks and max(bookmarks) > 0   # some bookmark moved past b's changes


async def test_a_closed_stream_leaves_no_subscription(emulator: RealisticEmulator, kube: KubeClient):
    import aiohttp
    await kube.create(FR, obj("a"), "default")
    path = emulator.url + "/apis/fedcare.io/v1alpha1/namespaces/default/federatedrounds"
    for params in ({"watch": "true", "allowWatchBookmarks": "true"}, {"watch": "true"}):
        async with aiohttp.ClientSession() as session:
            resp = await session.get(path, params=params)
            await resp.content.readline()
            await eventually(lambda: _subscriptions(emulator) == 1)
            resp.close()
        await kube.patch(FR, "a", {"spec": {"size": 7}}, "default")
        await eventually(lambda: _subscriptions(emulator) == 0 and emulator.watching(FR) == 0)
