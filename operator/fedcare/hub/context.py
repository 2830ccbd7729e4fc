"""What the hub's handlers share: one API client, built at start-up and closed at clean-up."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..integrations.kube import Kube
from .heartbeats import HeartbeatTracker


@dataclass
class HubContext:
    kubeconfig: str | None = None
    kube: Kube | None = None
    #: When each site's Lease renewals were seen, on the hub's clock (rebuilt after a restart).
    heartbeats: HeartbeatTracker = field(default_factory=HeartbeatTracker)

    async def start(self) -> None:
        if self.kube is None:
            self.kube = await Kube.from_kubeconfig(self.kubeconfig)

    async def close(self) -> None:
        if self.kube is not None:
            await self.kube.close()
            self.kube = None

    @property
    def api(self) -> Kube:
        if self.kube is None:
            raise RuntimeError("the hub's API client is not started")
        return self.kube
