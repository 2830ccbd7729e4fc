"""Site liveness from the agents' Leases, judged on the hub's own clock.

The agent renews ``fedcare-site-<site>/fedcare-agent`` every quarter of its duration. The hub
never compares the Lease's renewTime with its own clock (the two clocks may disagree): it
records *when it saw* each renewal. A site whose Lease has not been renewed for one full
``leaseDurationSeconds`` on the hub's clock becomes ``Available=Unknown``
(LeaseUpdateStopped); the next renewal makes it ``True`` (LeaseRenewed) again.

After a hub restart nothing has been seen yet: every site gets a full duration from the
hub's start before it can be marked Unknown, so a restart never flaps healthy sites.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

from ..api.resources import LEASE_NAME, SITE_NAMESPACE_PREFIX


def _renewal_key(lease: dict[str, Any]) -> tuple[str, str]:
    spec = lease.get("spec") or {}
    return str(spec.get("renewTime") or ""), str(spec.get("holderIdentity") or "")


def site_of_lease(lease: dict[str, Any]) -> str | None:
    """The site whose agent Lease this is, from its namespace and name; None for any other Lease."""
    md = lease.get("metadata") or {}
    namespace = md.get("namespace") or ""
    if md.get("name") != LEASE_NAME or not namespace.startswith(SITE_NAMESPACE_PREFIX):
        return None
    return namespace.removeprefix(SITE_NAMESPACE_PREFIX) or None


@dataclass
class HeartbeatTracker:
    clock: Any = time.monotonic
    started: float = field(default=0.0)
    _seen: dict[str, float] = field(default_factory=dict)
    _keys: dict[str, tuple[str, str]] = field(default_factory=dict)
    _signals: dict[str, asyncio.Event] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.started = self.clock()

    def observe(self, lease: dict[str, Any]) -> str | None:
        """Record a Lease as seen in a watch event; return the site if it was a renewal.

        The site comes from where the Lease is (``fedcare-site-<site>/fedcare-agent``, which
        only the hub creates and only that site's agent may update), never from a label: any
        principal allowed to create Leases somewhere (a common leader-election grant) could
        otherwise label one and keep any site "Available".
        """
        site = site_of_lease(lease)
        if not site:
            return None
        key = _renewal_key(lease)
        previous = self._keys.get(site)
        self._keys[site] = key
        if previous is None or key == previous or not key[0]:
            return None      # first sight after (re)start, or a change that is not a renewal
        self._seen[site] = self.clock()
        self.signal(site).set()
        return site

    def signal(self, site: str) -> asyncio.Event:
        return self._signals.setdefault(site, asyncio.Event())

    def last_seen(self, site: str) -> float | None:
        return self._seen.get(site)

    def deadline(self, site: str, duration: float) -> float:
        """Hub-clock time after which the site is overdue."""
        return self._seen.get(site, self.started) + duration

    async def wait(self, site: str, timeout: float) -> bool:
        """Wait up to ``timeout`` for a renewal of ``site``; True if one came."""
        sig = self.signal(site)
        if not sig.is_set():
            try:
                async with asyncio.timeout(max(0.0, timeout)):   # (not wait_for: it can swallow a stop)
                    await sig.wait()
            except asyncio.TimeoutError:
                return False
        sig.clear()
        return True

    def forget(self, site: str) -> None:
        for store in (self._seen, self._keys, self._signals):
            store.pop(site, None)
