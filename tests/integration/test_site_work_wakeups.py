"""The site agent's work loop reacts to events, not to its resync interval: a training pod's
change (watched) and an assignment's deadline wake it. With an interval of an hour, only those
wake-ups can make these assertions pass."""

from __future__ import annotations

import asyncio
import datetime as dt

from fedcare.api.resources import API_VERSION, site_namespace
from fedcare.integrations.kube import Kube, Ref
from fedcare.sandbox.federation import TRAIN_IMAGE, hospital
from fedcare.site.work import SiteWork
from tests.integration.conftest import FAST
from tests.support.harness import eventually

SITE = "rouen"
WORK_NS = "fedcare-training"


def _iso(when: dt.datetime) -> str:
    return when.replace(microsecond=0).isoformat().replace("+00:00", "Z")


async def test_pod_changes_and_the_deadline_wake_the_work_loop(emulator):
    api = Kube.from_url(str(emulator.url), policy=FAST)
    ns = site_namespace(SITE)
    for name in (ns, WORK_NS):
        await api.create(Ref("v1", "namespaces"), {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
    await api.create(Ref(API_VERSION, "hospitalnodes"), hospital(SITE))
    deadline = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=8)
    ras = Ref(API_VERSION, "roundassignments", ns)
    await api.create(ras, {
        "apiVersion": API_VERSION, "kind": "RoundAssignment", "metadata": {"name": "r1-abc123-a1", "namespace": ns},
        "spec": {"roundRef": {"namespace": "default", "name": "r1", "uid": "u1"}, "nodeName": SITE, "attempt": 1,
                 "superLink": {"address": "10.0.0.5:9092", "insecure": True},
                 "training": {"image": TRAIN_IMAGE, "maxRestarts": 2}, "deadline": _iso(deadline)}})
    ra_ref = Ref(API_VERSION, "roundassignments", ns, "r1-abc123-a1")
    await api.patch(ra_ref, {"status": {"phase": "Accepted", "attempt": 1}}, status=True)

    work = SiteWork(api, api, SITE, f"{SITE}/agent-0", namespace=WORK_NS, insecure=True, interval=3600.0)
    stop = asyncio.Event()
    task = asyncio.create_task(work.run(stop))
    try:
        pods = Ref("v1", "pods", WORK_NS)
        pod = (await eventually(lambda: api.list(pods), timeout=20))[0]
        # Play the kubelet: the pod runs. Only the pod watch can bring this to the assignment.
        md = pod["metadata"]
        await api.patch(Ref("v1", "pods", WORK_NS, md["name"]), {"status": {
            "phase": "Running", "containerStatuses": [{"name": "supernode", "ready": True, "restartCount": 0,
                                                       "state": {"running": {"startedAt": _iso(deadline)}}}]}},
                        status=True)

        async def phase(want):
            obj = await api.get(ra_ref)
            return obj if (obj.get("status") or {}).get("phase") == want else None

        running = await eventually(lambda: phase("Running"), timeout=20)
        assert running["status"]["podName"] == md["name"]
        # The deadline passes: the loop wakes at it, deletes the pod and releases the assignment.
        failed = await eventually(lambda: phase("Failed"), timeout=30)
        assert "deadline" in failed["status"]["message"]
        assert await eventually(lambda: _none(api.list(pods)), timeout=20)
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)
        await api.close()


async def _none(listing):
    return (await listing) == []
