"""The site agent's list-then-watch cache (site/informer.py) on the emulated API server: it
follows the server, recovers from failed watches by listing again, never winds the agent's own
writes back, and the work loop acts on nothing before both caches hold a complete listing."""

from __future__ import annotations

import asyncio
import datetime as dt

import kmock

from fedcare.api.resources import API_VERSION, site_namespace
from fedcare.integrations.kube import Kube, Ref
from fedcare.sandbox.federation import TRAIN_IMAGE, hospital
from fedcare.site.informer import Informer
from fedcare.site.work import SiteWork
from tests.integration.conftest import FAST
from tests.support.harness import eventually

CMS = Ref("v1", "configmaps", "default")


def _cm(name: str, n: str = "0") -> dict:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": {"n": n}}


async def test_a_failed_watch_is_listed_again_and_the_cache_is_stale_meanwhile(emulator):
    api = Kube.from_url(str(emulator.url), policy=FAST)
    await api.create(CMS, _cm("one"))
    changes: list[bool] = []
    cache = Informer(api, CMS, watch_seconds=1, on_change=lambda: changes.append(cache.fresh))
    stop = asyncio.Event()
    task = asyncio.create_task(cache.run(stop))
    try:
        await asyncio.wait_for(cache.synced.wait(), 10)
        assert cache.fresh and set(cache.items) == {"one"}
        # the next watches (each server-side watch ends after 1 s) fail twice
        fault = emulator.inject(lambda req: req.action == kmock.action.WATCH and req.resource is not None
                                and req.resource.plural == "configmaps",
                                kmock.KubernetesError(500, "InternalError", "injected"), times=2)
        stale: list[bool] = []

        async def went_stale():
            stale.append(not cache.fresh)
            return any(stale) or None
        await eventually(went_stale, timeout=10, interval=0.02)
        await api.patch(Ref("v1", "configmaps", "default", "one"), {"data": {"n": "1"}})
        await api.create(CMS, _cm("two"))

        async def caught_up():
            one = cache.items.get("one") or {}
            return cache.fresh and fault.hits == 2 and "two" in cache.items and one.get("data", {}).get("n") == "1" \
                or None
        await eventually(caught_up, timeout=20)
        assert changes[0] is True          # the first listing
    finally:
        stop.set()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await api.close()


async def test_a_listing_taken_before_the_agents_own_write_does_not_wind_it_back(emulator):
    api = Kube.from_url(str(emulator.url), policy=FAST)
    try:
        listed_old = await api.create(CMS, _cm("one"))
        cache = Informer(api, CMS)
        since = cache._seq                               # a LIST starts here ...
        written = await api.patch(Ref("v1", "configmaps", "default", "one"), {"data": {"n": "1"}})
        cache.put(written)                               # ... the agent writes meanwhile ...
        created = await api.create(CMS, _cm("two"))
        cache.put(created)
        cache._merge([listed_old], since)                # ... and the LIST's older answer lands
        assert cache.items["one"]["data"] == {"n": "1"}  # not wound back
        assert "two" in cache.items                      # created after the listing was taken: kept
        cache._merge([written], cache._seq)              # a later listing without "two": it is gone
        assert set(cache.items) == {"one"}
        cache.put(listed_old)                            # an older version never replaces a newer one
        assert cache.items["one"]["data"] == {"n": "1"}
    finally:
        await api.close()


async def test_the_work_loop_waits_for_complete_listings_before_it_acts(emulator):
    """While the assignment LIST is slow the loop must not run: an empty cache would read as
    'no assignments' (and a pass deletes the pods of assignments that are gone)."""
    site, work_ns = "rouen", "fedcare-training"
    api = Kube.from_url(str(emulator.url), policy=FAST)
    ns = site_namespace(site)
    try:
        for name in (ns, work_ns):
            await api.create(Ref("v1", "namespaces"), {"apiVersion": "v1", "kind": "Namespace",
                                                       "metadata": {"name": name}})
        await api.create(Ref(API_VERSION, "hospitalnodes"), hospital(site))
        deadline = (dt.datetime.now(dt.UTC) + dt.timedelta(minutes=10)).replace(microsecond=0)
        ras = Ref(API_VERSION, "roundassignments", ns)
        await api.create(ras, {
            "apiVersion": API_VERSION, "kind": "RoundAssignment", "metadata": {"name": "r1-abc123-a1", "namespace": ns},
            "spec": {"roundRef": {"namespace": "default", "name": "r1", "uid": "u1"}, "nodeName": site, "attempt": 1,
                     "superLink": {"address": "10.0.0.5:9092", "insecure": True},
                     "training": {"image": TRAIN_IMAGE, "maxRestarts": 2},
                     "deadline": deadline.isoformat().replace("+00:00", "Z")}})
        await api.patch(Ref(API_VERSION, "roundassignments", ns, "r1-abc123-a1"),
                        {"status": {"phase": "Accepted", "attempt": 1}}, status=True)
        slow = emulator.inject(lambda req: req.action == kmock.action.LIST and req.resource is not None
                               and req.resource.plural == "roundassignments", delay=1.5)
        work = SiteWork(api, api, site, f"{site}/agent-0", namespace=work_ns, insecure=True, interval=3600.0)
        stop = asyncio.Event()
        task = asyncio.create_task(work.run(stop))
        try:
            await asyncio.sleep(1.0)
            assert slow.hits == 1 and work.passes == 0 and not work.assignments.synced.is_set()
            assert await api.list(Ref("v1", "pods", work_ns)) == []
            pods = await eventually(lambda: api.list(Ref("v1", "pods", work_ns)), timeout=20)
            assert [p["metadata"]["labels"]["fedcare.io/site"] for p in pods] == [site]
        finally:
            stop.set()
            await asyncio.wait_for(task, 10)
    finally:
        await api.close()
