"""The real kopf operator against the emulated API, with our finalizer and annotation prefix.

Tiny test registries on FederatedRound (namespaced, status subresource): what the hub's
handlers rely on from kopf + emulator — exactly-once creation (also across watch reconnects,
busy objects and restarts), finalizers, per-object daemons, retries after API errors.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Callable
from typing import Any

import kmock
import kopf

from fedcare.api.resources import ANNOTATION_PREFIX, FEDERATED_ROUNDS, FINALIZER
from fedcare.kopf_setup import configure
from fedcare.sandbox.emulator import RealisticEmulator
from tests.support.harness import eventually, fast_settings, run_operator
from tests.support.kube import KubeClient

FR = FEDERATED_ROUNDS
ON = (FR.group, FR.version, FR.plural)


def ours(server_timeout: float | None = None) -> Callable[[kopf.OperatorSettings], None]:
    """Production names and storage (fedcare.kopf_setup), test-speed retries."""
    def hook(settings: kopf.OperatorSettings) -> None:
        configure(settings)
        fast_settings(settings)
        if server_timeout is not None:  # the emulator ends each watch after it; kopf resumes
            settings.watching.server_timeout = server_timeout
    return hook


def obj(name: str, ns: str = "default") -> dict[str, Any]:
    return {"apiVersion": FR.api_version, "kind": FR.kind, "metadata": {"name": name, "namespace": ns},
            "spec": {"size": 1}}


def watch_requests(k: RealisticEmulator) -> int:
    return sum(1 for r in k._requests if r.action == kmock.action.WATCH and r.resource == kmock.resource(
        f"{FR.group}/{FR.version}/{FR.plural}"))


async def test_create_runs_once_per_object_across_reconnects_busy_objects_and_restarts(
        emulator: RealisticEmulator, kube: KubeClient):
    created: collections.Counter[str] = collections.Counter()
    resumed: collections.Counter[str] = collections.Counter()
    registry = kopf.OperatorRegistry()

    @kopf.on.create(*ON, registry=registry)
    async def on_create(name: str, patch: kopf.Patch, **_: Any) -> None:
        created[name] += 1
        await asyncio.sleep(0.3)  # a change arriving meanwhile must not re-run the handler
        patch.status["seen"] = True

    @kopf.on.resume(*ON, registry=registry)
    def on_resume(name: str, **_: Any) -> None:
        resumed[name] += 1

    await kube.create(FR, obj("pre"))  # exists before the operator starts
    async with run_operator(emulator, registry, settings_hook=ours(server_timeout=1), watching=[FR]) as logs:
        await kube.create(FR, obj("busy"))
        await eventually(lambda: created["busy"], timeout=5)
        await kube.patch(FR, "busy", {"metadata": {"labels": {"touched": "yes"}}}, "default")
        await eventually(lambda: all((emulator.peek(FR, n, "default") or {}).get("status") == {"seen": True}
                                     for n in ("pre", "busy")), timeout=10)
        reconnects = watch_requests(emulator)
        await eventually(lambda: watch_requests(emulator) >= reconnects + 2, timeout=5)  # two more resumes
        assert created == {"pre": 1, "busy": 1}
        assert not logs.problems(), logs.problems()
    stored = emulator.peek(FR, "busy", "default")
    assert stored and f"{ANNOTATION_PREFIX}/last-handled-configuration" in stored["metadata"]["annotations"]

    async with run_operator(emulator, registry, settings_hook=ours(), watching=[FR]):  # a restart
        await eventually(lambda: resumed["pre"] and resumed["busy"], timeout=10)
        await kube.create(FR, obj("post"))
        await eventually(lambda: created["post"], timeout=5)
    assert created == {"pre": 1, "busy": 1, "post": 1}


async def test_our_finalizer_is_added_and_removed_around_deletion(emulator: RealisticEmulator, kube: KubeClient):
    deleted: collections.Counter[str] = collections.Counter()
    registry = kopf.OperatorRegistry()

    @kopf.on.create(*ON, registry=registry)
    def on_create(body: kopf.Body, **_: Any) -> None:
        kopf.warn(body, reason="Seen", message="hello")  # an Event (configure() posts WARNING+)

    @kopf.on.delete(*ON, registry=registry)
    def on_delete(name: str, **_: Any) -> None:
        deleted[name] += 1

    async with run_operator(emulator, registry, settings_hook=ours(), watching=[FR]) as logs:
        await kube.create(FR, obj("x"))
        await eventually(lambda: (emulator.peek(FR, "x", "default") or {}).get("metadata", {}).get("finalizers")
                         == [FINALIZER], timeout=5)

        async def posted() -> list[dict[str, Any]]:
            reply = await kube.list("v1/events", "default", fields="involvedObject.name=x")
            return reply.ok()["items"]  # type: ignore[no-any-return]

        events = await eventually(posted, timeout=5)
        assert [e["reason"] for e in events] == ["Seen"]
        assert events[0]["metadata"]["name"].startswith("fedcare-")  # generateName, our prefix
        assert (await kube.delete(FR, "x", "default")).status == 200
        await eventually(lambda: emulator.peek(FR, "x", "default") is None, timeout=5)
        assert deleted == {"x": 1} and not logs.problems()


async def test_daemons_run_one_per_object(emulator: RealisticEmulator, kube: KubeClient):
    started: dict[str, str] = {}
    ended: list[str] = []
    registry = kopf.OperatorRegistry()

    @kopf.daemon(*ON, registry=registry, cancellation_timeout=1)
    async def watcher(name: str, uid: str, stopped: kopf.DaemonStopped, **_: Any) -> None:
        started[name] = uid
        await stopped.wait()
        ended.append(name)

    async with run_operator(emulator, registry, settings_hook=ours(), watching=[FR]):
        for name in ("a", "b"):
            await kube.create(FR, obj(name))
        await eventually(lambda: len(started) == 2, timeout=5)
        assert started["a"] != started["b"]  # kopf keys its per-object memory by uid
        await kube.delete(FR, "a", "default")
        await eventually(lambda: emulator.peek(FR, "a", "default") is None, timeout=5)
        assert ended == ["a"]  # only a's daemon stopped; then kopf released its finalizer
    assert sorted(ended) == ["a", "b"]  # b's stopped with the operator


async def test_kopf_retries_api_errors_and_its_patch_lands_once(emulator: RealisticEmulator, kube: KubeClient):
    calls: collections.Counter[str] = collections.Counter()
    registry = kopf.OperatorRegistry()

    @kopf.on.create(*ON, registry=registry)
    def on_create(name: str, patch: kopf.Patch, **_: Any) -> None:
        calls[name] += 1
        patch.metadata.labels["handled"] = "yes"

    fault = emulator.inject(
        lambda req: req.method == "PATCH" and req.name == "w1" and req.subresource is None
        and "merge-patch" in req.headers.get("Content-Type", ""),
        kmock.KubernetesError(500, "InternalError", "injected"), times=2)
    async with run_operator(emulator, registry, settings_hook=ours(), watching=[FR]) as logs:
        await kube.create(FR, obj("w1"))
        await eventually(lambda: (emulator.peek(FR, "w1", "default") or {}).get("metadata", {})
                         .get("labels", {}).get("handled") == "yes", timeout=10)
    assert fault.hits == 2 and calls == {"w1": 1}
    assert logs.grep("InternalError") or logs.grep("500"), "kopf should have logged the failed patches"


async def test_namespaced_operator_sees_only_its_namespaces(emulator: RealisticEmulator, kube: KubeClient):
    seen: list[str] = []
    registry = kopf.OperatorRegistry()

    @kopf.on.create(*ON, registry=registry)
    def on_create(namespace: str | None, name: str, **_: Any) -> None:
        seen.append(f"{namespace}/{name}")

    await kube.create("v1/namespaces", {"metadata": {"name": "team-a"}})
    async with run_operator(emulator, registry, settings_hook=ours(), namespaces=["team-a"], watching=[FR]):
        await kube.create(FR, obj("outside", "default"))
        await kube.create(FR, obj("inside", "team-a"))
        await eventually(lambda: seen, timeout=5)
    assert seen == ["team-a/inside"]
    outside = emulator.peek(FR, "outside", "default")
    assert outside and "finalizers" not in outside["metadata"]  # never touched


async def test_stopping_an_operator_leaves_the_loops_other_tasks_alone(emulator: RealisticEmulator,
                                                                       kube: KubeClient):
    registry = kopf.OperatorRegistry()

    @kopf.on.create(*ON, registry=registry)
    def on_create(**_: Any) -> None:
        pass

    loop = asyncio.get_running_loop()
    async with run_operator(emulator, registry, settings_hook=ours(), watching=[FR]):
        bystander = asyncio.create_task(asyncio.sleep(30))  # e.g. a site agent's loop
        await kube.create(FR, obj("x"))  # and the emulator's request handlers
        stopping = loop.time()
    assert loop.time() - stopping < 2 and not bystander.done()
    bystander.cancel()


async def test_plain_kopf_operator_cancels_the_loops_other_tasks_on_exit(emulator: RealisticEmulator):
    """Pins kopf 1.45's exit (5 s wait, then cancel all): why kopf_runner.run_kopf exists."""
    registry = kopf.OperatorRegistry()

    @kopf.on.login(registry=registry)
    def login(**_: Any) -> kopf.ConnectionInfo:
        return kopf.ConnectionInfo(server=emulator.url, insecure=True)

    settings = kopf.OperatorSettings()
    settings.process.ultimate_exiting_timeout = None
    stop, ready = asyncio.Event(), asyncio.Event()
    operator = asyncio.create_task(kopf.operator(registry=registry, settings=settings, standalone=True,
                                                 clusterwide=True, stop_flag=stop, ready_flag=ready))
    async with asyncio.timeout(10):
        await ready.wait()
    bystander = asyncio.create_task(asyncio.sleep(30))
    stop.set()
    async with asyncio.timeout(15):
        await operator
    assert bystander.cancelled()
