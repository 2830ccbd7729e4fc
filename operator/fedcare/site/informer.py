"""A list-then-watch cache of one kind of object, for the site agent's work loop.

client-go calls this an informer; the Python clients have none that fits an asyncio loop
(kopf watches, but its handlers cannot tell when the first listing is complete, and a cache
read before that would look like "nothing exists": the work loop would delete running pods).
So, by hand and small: one LIST, then one watch from its resourceVersion; every event updates
``items`` and calls ``on_change``. A watch that ends is resumed; an ERROR (410 Gone: too old),
a failed call or a broken stream lists again, with a pause of 1 s doubling to 30 s between
failures (also when a watch keeps ending at once). The writer's own results go in with
:meth:`put`, so that the next pass does not act on the version before its own write; a LIST
that was under way meanwhile never winds them back (see :meth:`_merge`).

``fresh`` is set while the cache follows the server (a complete listing, then the watch) and
cleared from a failure until the next listing: the work loop acts only on a fresh cache.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from ..integrations.kube import Kube, KubeError, Ref

log = logging.getLogger(__name__)

FIRST_BACKOFF, MAX_BACKOFF = 1.0, 30.0
#: A watch that ends sooner than this without an event counts as a failure (a proxy that cuts
#: long requests would otherwise make a LIST/watch loop without pause).
SHORT_WATCH = 1.0


def _rv(obj: dict[str, Any]) -> int | None:
    raw = (obj.get("metadata") or {}).get("resourceVersion") or ""
    return int(raw) if raw.isdigit() else None


def _older(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """``a`` is an older version than ``b``. resourceVersions are opaque in the API's contract;
    both servers fedcare runs on (etcd revisions, the emulator's counter) give integers, and
    they are compared only when both are (otherwise: not older, the later call wins)."""
    ra, rb = _rv(a), _rv(b)
    return ra is not None and rb is not None and ra < rb


class Informer:
    def __init__(self, kube: Kube, ref: Ref, *, label_selector: str = "",
                 on_change: Callable[[], None] = lambda: None, what: str = "", watch_seconds: int = 300):
        self.kube, self.ref, self.label_selector, self.on_change = kube, ref, label_selector, on_change
        self.watch_seconds = watch_seconds      # the server ends each watch after this; it is resumed
        self.what = what or ref.plural
        #: name -> the newest version seen (listed, watched or written by us)
        self.items: dict[str, dict[str, Any]] = {}
        #: Set once the first listing is in; ``fresh`` says whether the cache follows the server now.
        self.synced = asyncio.Event()
        self.fresh = False
        self._seq = 0                       # counts put()s
        self._put_at: dict[str, int] = {}   # name -> the put() that last wrote it

    def put(self, obj: dict[str, Any] | None) -> None:
        """Keep ``obj`` unless a newer version is already here."""
        if not obj:
            return
        name = obj["metadata"]["name"]
        have = self.items.get(name)
        if have is not None and _older(obj, have):
            return
        self.items[name] = obj
        self._seq += 1
        self._put_at[name] = self._seq

    def drop(self, name: str) -> None:
        """Forget an object this process has just deleted (a graceful deletion comes back as an event)."""
        self.items.pop(name, None)
        self._put_at.pop(name, None)

    def _merge(self, listed: list[dict[str, Any]], since: int) -> None:
        """Replace the cache by a listing, except where a put() made while it was under way
        (after put number ``since``) is newer: a listed copy older than it, or an object the
        listing predates, keeps the written version."""
        items: dict[str, dict[str, Any]] = {}
        for obj in listed:
            name = obj["metadata"]["name"]
            have = self.items.get(name)
            items[name] = have if have is not None and self._put_at.get(name, 0) > since and _older(obj, have) \
                else obj
        for name, have in self.items.items():
            if name not in items and self._put_at.get(name, 0) > since:
                items[name] = have      # written (created) after the listing was taken
        self.items = items
        self._put_at = {name: seq for name, seq in self._put_at.items() if name in items}

    async def run(self, stop: asyncio.Event) -> None:
        version, backoff = "", FIRST_BACKOFF
        query = {"labelSelector": self.label_selector} if self.label_selector else None
        loop = asyncio.get_running_loop()
        while not stop.is_set():
            try:
                if not version:
                    since = self._seq
                    listing = await self.kube.request("GET", self.ref.path, query=query)
                    self._merge(listing.get("items") or [], since)
                    version = (listing.get("metadata") or {}).get("resourceVersion") or ""
                    self.fresh = True
                    self.synced.set()
                    self.on_change()
                opened, seen = loop.time(), False
                async for etype, obj in self.kube.watch(self.ref, label_selector=self.label_selector,
                                                        resource_version=version,
                                                        timeout_seconds=self.watch_seconds):
                    if etype == "ERROR":            # e.g. 410 Gone: list again
                        version, self.fresh = "", False
                        break
                    seen = True
                    version = (obj.get("metadata") or {}).get("resourceVersion") or version
                    if etype == "BOOKMARK":
                        continue
                    if etype == "DELETED":
                        have = self.items.get(obj["metadata"]["name"])
                        if have is None or not _older(obj, have):
                            self.drop(obj["metadata"]["name"])
                    else:
                        self.put(obj)
                    self.on_change()
                if seen or loop.time() - opened >= SHORT_WATCH:
                    backoff = FIRST_BACKOFF
                    continue
                log.debug("The watch of %s ended at once; watching again in %.0fs", self.what, backoff)
            except KubeError as err:
                log.warning("Watch of %s failed (%s); listing again in %.0fs", self.what, err, backoff)
                version, self.fresh = "", False
            except Exception as err:    # a broken stream (bad JSON, say): never end the cache silently
                log.warning("Watch of %s broke (%s: %s); listing again in %.0fs", self.what, type(err).__name__,
                            err, backoff)
                version, self.fresh = "", False
            await asyncio.sleep(backoff)
            backoff = min(MAX_BACKOFF, backoff * 2)
