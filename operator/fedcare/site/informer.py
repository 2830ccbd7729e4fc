"""A list-then-watch cache of one kind of object, for the site agent's work loop.

client-go calls this an informer; the Python clients have none that fits an asyncio loop
(kopf watches, but its handlers cannot tell when the first listing is complete, and a cache
read before that would look like "nothing exists": the work loop would delete running pods).
So, by hand and small: one LIST (``synced`` is set after it), then one watch from its
resourceVersion; every event updates ``items`` and calls ``on_change``. A watch that ends is
resumed; an ERROR (410 Gone: too old) or a failed call lists again, with a pause of 1 s doubling
to 30 s between failures. The writer's own results go in with :meth:`put` so that the next pass
does not act on the version before its own write.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from ..integrations.kube import Kube, KubeError, Ref

log = logging.getLogger(__name__)

FIRST_BACKOFF, MAX_BACKOFF = 1.0, 30.0


def _rv(obj: dict[str, Any]) -> int | None:
    raw = (obj.get("metadata") or {}).get("resourceVersion") or ""
    return int(raw) if raw.isdigit() else None


class Informer:
    def __init__(self, kube: Kube, ref: Ref, *, label_selector: str = "",
                 on_change: Callable[[], None] = lambda: None, what: str = ""):
        self.kube, self.ref, self.label_selector, self.on_change = kube, ref, label_selector, on_change
        self.what = what or ref.plural
        #: name -> the newest version seen (listed, watched or written by us)
        self.items: dict[str, dict[str, Any]] = {}
        self.synced = asyncio.Event()

    def put(self, obj: dict[str, Any] | None) -> None:
        """Keep ``obj`` unless a newer version is already here. resourceVersions are opaque in
        the API's contract; both servers fedcare runs on (etcd revisions, the emulator's
        counter) give integers, compared only when both are. Otherwise the later call wins."""
        if not obj:
            return
        name = obj["metadata"]["name"]
        have = self.items.get(name)
        new, old = _rv(obj), (_rv(have) if have is not None else None)
        if new is not None and old is not None and new < old:
            return
        self.items[name] = obj

    def drop(self, name: str) -> None:
        """Forget an object this process has just deleted (a graceful deletion comes back as an event)."""
        self.items.pop(name, None)

    async def run(self, stop: asyncio.Event) -> None:
        version, backoff = "", FIRST_BACKOFF
        query = {"labelSelector": self.label_selector} if self.label_selector else None
        while not stop.is_set():
            try:
                if not version:
                    listing = await self.kube.request("GET", self.ref.path, query=query)
                    self.items = {o["metadata"]["name"]: o for o in listing.get("items") or []}
                    version = (listing.get("metadata") or {}).get("resourceVersion") or ""
                    self.synced.set()
                    self.on_change()
                async for etype, obj in self.kube.watch(self.ref, label_selector=self.label_selector,
                                                        resource_version=version):
                    if etype == "ERROR":            # e.g. 410 Gone: list again
                        version = ""
                        break
                    version = (obj.get("metadata") or {}).get("resourceVersion") or version
                    if etype == "BOOKMARK":
                        continue
                    if etype == "DELETED":
                        have = self.items.get(obj["metadata"]["name"])
                        if have is None or (_rv(have) or 0) <= (_rv(obj) or 0):
                            self.items.pop(obj["metadata"]["name"], None)
                    else:
                        self.put(obj)
                    self.on_change()
                backoff = FIRST_BACKOFF
            except KubeError as err:
                log.warning("Watch of %s failed (%s); listing again in %.0fs", self.what, err, backoff)
                version = ""
                await asyncio.sleep(backoff)
                backoff = min(MAX_BACKOFF, backoff * 2)
