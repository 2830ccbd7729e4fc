"""What the hub's handlers share: one API client and the availability monitor, started at
start-up and closed at clean-up."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field

from ..integrations.kube import Kube
from .availability import AvailabilityMonitor
from .heartbeats import HeartbeatTracker
from .lease_watch import watch_leases
from .round_scheduler import Reconciler, RoundConfig


@dataclass
class HubContext:
    kubeconfig: str | None = None
    kube: Kube | None = None
    #: When each site's Lease renewals were seen, on the hub's clock (rebuilt after a restart).
    heartbeats: HeartbeatTracker = field(default_factory=HeartbeatTracker)
    #: Round execution settings (hub/round_settings.py); None: read from the environment.
    rounds: RoundConfig | None = None
    availability: AvailabilityMonitor = field(init=False)
    _monitor: asyncio.Task | None = field(default=None, init=False)
    _leases: asyncio.Task | None = field(default=None, init=False)
    _flwr_asked: dict[str, float] = field(default_factory=dict, init=False)

    def __post_init__(self) -> None:
        self.availability = AvailabilityMonitor(lambda: self.api, self.heartbeats)
        if self.rounds is None:
            from .round_settings import round_config
            self.rounds = round_config()

    @property
    def round_reconciler(self) -> Reconciler:
        assert self.rounds is not None
        return Reconciler(self.api, self.rounds, self._flwr_asked)

    async def start(self) -> None:
        if self.kube is None:
            self.kube = await Kube.from_kubeconfig(self.kubeconfig)
        if self._monitor is None:
            self._monitor = asyncio.create_task(self.availability.run(), name="availability")
            self._leases = asyncio.create_task(watch_leases(lambda: self.api, self.availability.lease_seen),
                                               name="lease-watch")

    async def close(self) -> None:
        for task in (self._leases, self._monitor):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._monitor = self._leases = None
        await self.availability.close()
        if self.kube is not None:
            await self.kube.close()
            self.kube = None

    @property
    def api(self) -> Kube:
        if self.kube is None:
            raise RuntimeError("the hub's API client is not started")
        return self.kube
