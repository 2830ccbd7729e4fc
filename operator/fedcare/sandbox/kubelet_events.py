"""Events a kubelet posts about pods (what ``kubectl describe pod`` shows): Scheduled (the
emulator's stand-in scheduler), Started, Killing, BackOff, Failed, Unhealthy.

Best effort, as a kubelet's event recorder: posted in the background, never blocking or failing
the pod's work; a failure is logged once at debug level. Messages carry names, reasons and exit
codes, never an environment value.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from typing import Any

from ..integrations.kube import Kube, KubeError, Ref

log = logging.getLogger(__name__)

__all__ = ["EventRecorder"]


class EventRecorder:
    def __init__(self, kube: Kube, node: str, component: str = "kubelet"):
        self.kube, self.node, self.component = kube, node, component
        self._tasks: set[asyncio.Task[None]] = set()

    def pod(self, pod: dict[str, Any], reason: str, message: str, *, warning: bool = False,
            component: str | None = None) -> None:
        md = pod["metadata"]
        now = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        body = {"apiVersion": "v1", "kind": "Event",
                "metadata": {"generateName": f"{md['name']}.", "namespace": md["namespace"]},
                "involvedObject": {"apiVersion": "v1", "kind": "Pod", "name": md["name"],
                                   "namespace": md["namespace"], "uid": md.get("uid", "")},
                "reason": reason, "message": message[:1000], "type": "Warning" if warning else "Normal",
                "source": {"component": component or self.component, "host": self.node},
                "reportingComponent": component or self.component, "reportingInstance": self.node,
                "firstTimestamp": now, "lastTimestamp": now, "count": 1}
        task = asyncio.get_running_loop().create_task(self._post(body))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _post(self, body: dict[str, Any]) -> None:
        try:
            await self.kube.create(Ref("v1", "events", body["metadata"]["namespace"]), body)
        except (KubeError, asyncio.TimeoutError) as err:
            log.debug("Event %s for %s not posted: %s", body["reason"], body["involvedObject"]["name"], err)

    async def drain(self, timeout: float = 3.0) -> None:
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=timeout)
