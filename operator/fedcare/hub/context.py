"""What the hub's handlers share: one API client and the availability monitor, started at
start-up and closed at clean-up."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from dataclasses import dataclass, field

from ..integrations.kube import Kube
from ..integrations.vault import VaultClient
from .availability import AvailabilityMonitor
from .heartbeats import HeartbeatTracker
from .lease_watch import watch_leases
from .resync import interval_from_env, resync_loop
from .metrics_state import PhaseIndex, release_index, round_index
from .lifecycle import Lifecycle
from .release_service import ReleaseConfig
from .hub_credential import HubCredentialSettings
from .vault_footprint import FootprintSettings
from .round_scheduler import Reconciler, RoundConfig


@dataclass
class HubContext:
    kubeconfig: str | None = None
    kube: Kube | None = None
    #: When each site's Lease renewals were seen, on the hub's clock (rebuilt after a restart).
    heartbeats: HeartbeatTracker = field(default_factory=HeartbeatTracker)
    #: Chain and signing configuration of the ModelRelease pipeline (from the environment by default).
    release: ReleaseConfig = field(default_factory=ReleaseConfig.from_env)
    #: Round execution settings (hub/round_settings.py); None: read from the environment.
    round_config: RoundConfig | None = None
    availability: AvailabilityMonitor = field(init=False)
    #: Events and metrics of round and release execution, from their status transitions.
    lifecycle: Lifecycle = field(init=False)
    #: Phase of every FederatedRound / ModelRelease, for the fedcare_rounds/fedcare_releases gauges.
    rounds: PhaseIndex = field(default_factory=round_index)
    releases: PhaseIndex = field(default_factory=release_index)
    #: The process's Vault client; None with secrets.backend=kubernetes (no per-site footprint).
    vault: VaultClient | None = None
    vault_footprint: FootprintSettings = field(default_factory=FootprintSettings)
    #: Mint the agents' hub tokens (TokenRequest) into Vault; None: sites bring a kubeconfig.
    hub_credential: HubCredentialSettings | None = None
    #: Seconds between drift-repair passes over every site (0: off). See hub/resync.py.
    resync_seconds: float = field(default_factory=interval_from_env)
    _monitor: asyncio.Task | None = field(default=None, init=False)
    _resync: asyncio.Task | None = field(default=None, init=False)
    _leases: asyncio.Task | None = field(default=None, init=False)
    _preload: asyncio.Task | None = field(default=None, init=False)
    _flwr_asked: dict[str, float] = field(default_factory=dict, init=False)

    def __post_init__(self) -> None:
        if self.vault is not None and self.release.signer is None:
            # Releases are signed with the Vault transit key (created on first use if the hub may).
            from ..integrations.vault_transit import HubTransitSigner
            self.release.signer = HubTransitSigner(self.vault, key=self.release.signing_key)
        from ..integrations.keyref import VaultKeyRef
        if isinstance(self.release.key_ref, VaultKeyRef) and self.release.key_ref.vault is None:
            self.release.key_ref.vault = self.vault     # chain.keyRef vault:…: read with the hub's client
        self.availability = AvailabilityMonitor(lambda: self.api, self.heartbeats)
        if self.round_config is None:
            from .round_settings import round_config
            self.round_config = round_config()
        agg = self.round_config.aggregator
        # A round-created ModelRelease names its model pvc://<artifact claim>/…: the same folder here.
        self.release.pvc_mounts.setdefault(agg.artifact_claim, agg.artifact_dir)
        if self.round_config.s3 is not None and self.release.fetch_policy.s3 is None:
            # A round-created ModelRelease names its model s3://…: read it with the same endpoint.
            self.release.fetch_policy = dataclasses.replace(self.release.fetch_policy, s3=self.round_config.s3.store)
        self.lifecycle = Lifecycle(lambda: self.api, lambda: self.round_config.aggregator.artifact_dir
                                   if self.round_config else None)
        if self.vault is not None and self.round_config.tls is None:
            # Rounds run with TLS and SuperNode authentication from this Vault (hub/superlink_tls.py).
            from .superlink_tls import SuperLinkTLS
            self.round_config.tls = SuperLinkTLS(self.vault)

    @property
    def round_reconciler(self) -> Reconciler:
        assert self.round_config is not None
        return Reconciler(self.api, self.round_config, self._flwr_asked)

    async def start(self) -> None:
        if self.kube is None:
            self.kube = await Kube.from_kubeconfig(self.kubeconfig)
        if self._monitor is None:
            if self.round_config is not None and self.round_config.tls is not None:
                # TLS rounds register SuperNode keys over Flower's Control API client: import it
                # now, off the loop, not in a round's start (hub/flower_control.py).
                from . import flower_control
                self._preload = asyncio.create_task(asyncio.to_thread(flower_control.preload),
                                                    name="flower-control-import")
            self._monitor = asyncio.create_task(self.availability.run(), name="availability")
            self._leases = asyncio.create_task(watch_leases(lambda: self.api, self.availability.lease_seen),
                                               name="lease-watch")
            if self.resync_seconds > 0:
                self._resync = asyncio.create_task(resync_loop(lambda: self.api, self.resync_seconds,
                                                               self.availability.node_seen), name="resync")

    async def close(self) -> None:
        for task in (self._resync, self._leases, self._monitor, self._preload):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._monitor = self._leases = self._resync = self._preload = None
        await self.availability.close()
        await self.release.close()
        if self.kube is not None:
            await self.kube.close()
            self.kube = None

    @property
    def api(self) -> Kube:
        if self.kube is None:
            raise RuntimeError("the hub's API client is not started")
        return self.kube
