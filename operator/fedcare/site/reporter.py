"""The agent's inventory report: GPUs from NVML, allocatable GPUs from the site's nodes,
the GPUReady condition, and versions — written to the site's HospitalNode status only when
something meaningful changed (fast-moving telemetry alone never causes a write).

A hub outage loses nothing: the last inventory is kept and reported when the hub returns.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from pydantic import ValidationError

from .. import metrics
from ..api import conditions as c
from ..api import resources as r
from ..api.hospital_node import AgentVersions
from ..api.inventory import GPUInventory
from ..integrations.kube import Forbidden, Kube, KubeError, NotFound, Ref
from ..integrations.nvml import NVMLReader, NVMLUnavailable
from ..status_writer import write_status
from . import gpu_health
from .heartbeat import check_site_exists, node_ref

log = logging.getLogger(__name__)

AGENT_TYPES = c.owned(r.HOSPITAL_NODES.kind, c.Writer.AGENT)
NVML_TIMEOUT = 5.0
# Consecutive NVML poll timeouts after which GPUReady becomes Unknown (NVMLUnresponsive) and
# the site stops accepting work. One slow poll keeps the last inventory; a hung driver does not.
MAX_NVML_TIMEOUTS = 3


class InventoryReporter:
    def __init__(self, hub: Kube, site: str, *, reader: NVMLReader | None, site_kube: Kube | None = None,
                 versions: AgentVersions | None = None, poll_interval: float = 15.0):
        self.hub, self.site, self.reader, self.site_kube = hub, site, reader, site_kube
        self.versions = versions or AgentVersions()
        self.poll_interval = poll_interval
        self.inventory: GPUInventory | None = None
        self.allocatable: int | None = None
        self.capacity: Any = None
        self.busy_gpus = 0
        self._reported: tuple[GPUInventory, tuple[str, str, str], Any, dict] | None = None
        self.invalid = ""     # why the last NVML reading was rejected by the model ("" when it was fine)
        self.timeouts = 0     # consecutive NVML poll timeouts
        self.unresponsive = ""  # GPUReady=Unknown message while NVML does not answer ("" otherwise)
        self.writes = 0

    @property
    def gpu_ready_status(self) -> str:
        """"Unknown" while NVML is unresponsive, else the status the inventory gives."""
        if self.unresponsive:
            return "Unknown"
        return "Unknown" if self.inventory is None else gpu_health.gpu_ready(self.inventory)[0]

    @property
    def free_gpus(self) -> int | None:
        if self.unresponsive:
            return 0
        if self.capacity is None or self.inventory is None or not self.inventory.devices:
            return None
        return int(self.capacity.gpus_free)

    async def poll(self) -> GPUInventory:
        """One NVML poll, timed and counted (``fedcare_agent_nvml_*``, ``fedcare_agent_gpus``)."""
        site = metrics.label_value(self.site)
        with metrics.Timer() as timer:
            inventory, error = await self._poll()
        if self.reader is not None:
            metrics.NVML_POLL_DURATION.labels(site).observe(timer.seconds)
        if error:
            metrics.NVML_ERRORS.labels(site, error).inc()
        # after a failed poll this is the last usable inventory (kept), or none: 0 GPUs
        metrics.GPUS.labels(site, "healthy").set(sum(1 for d in inventory.devices if d.healthy))
        metrics.GPUS.labels(site, "total").set(len(inventory.devices))
        return inventory

    async def _poll(self) -> tuple[GPUInventory, str]:
        """(inventory, error kind or '')."""
        if self.reader is None:
            return GPUInventory(nvml_error="NVML is disabled for this agent"), ""
        self.invalid = ""
        try:
            inventory = await self.reader.poll_async(timeout=NVML_TIMEOUT)
        except asyncio.TimeoutError:
            return self._timed_out(), "Timeout"
        except ValidationError as err:
            self.timeouts, self.unresponsive = 0, ""   # NVML answered (nonsense): not hung
            # The driver answered nonsense: report that, keep the last good inventory.
            first = err.errors(include_input=False)[0]
            where = ".".join(str(x) for x in first["loc"])
            self.invalid = (f"NVML returned an inventory the model rejects ({err.error_count()} problem(s)); "
                            f"first: {first['msg']} at {where or 'the inventory'}")[:1024]
            log.warning("Rejected a malformed NVML inventory: %s", self.invalid)
            return self.inventory or GPUInventory(nvml_error=self.invalid), "InvalidInventory"
        except NVMLUnavailable as err:
            self.timeouts, self.unresponsive = 0, ""
            return GPUInventory(nvml_error=str(err)), "Unavailable"
        self.timeouts, self.unresponsive = 0, ""
        return inventory, ""

    def _timed_out(self) -> GPUInventory:
        """A slow poll keeps the last inventory; MAX_NVML_TIMEOUTS in a row make GPUReady Unknown
        and mark every GPU not usable (the message stays the same while it lasts: one write)."""
        self.timeouts += 1
        if self.timeouts < MAX_NVML_TIMEOUTS:
            log.warning("NVML did not answer within %.0fs (%d/%d); keeping the last inventory",
                        NVML_TIMEOUT, self.timeouts, MAX_NVML_TIMEOUTS)
            return self.inventory or GPUInventory(nvml_error=f"NVML did not answer within {NVML_TIMEOUT:.0f}s")
        if not self.unresponsive:
            log.error("NVML did not answer %d polls in a row; GPUReady is Unknown and the site accepts "
                      "no work until it answers", self.timeouts)
        self.unresponsive = (f"NVML did not answer {MAX_NVML_TIMEOUTS} or more consecutive polls "
                             f"({NVML_TIMEOUT:.0f}s each): the driver may be hung or a GPU fell off the bus; "
                             "GPU health is unknown and the site accepts no work until NVML answers")
        return gpu_health.unresponsive(self.inventory or GPUInventory())

    async def read_allocatable(self) -> int | None:
        if self.site_kube is None:
            return self.allocatable
        try:
            return gpu_health.allocatable_gpus(await self.site_kube.list(Ref("v1", "nodes")))
        except KubeError as err:
            log.warning("Could not list the site cluster's nodes (%s); keeping the last GPU count", err)
            return self.allocatable

    async def collect(self) -> None:
        self.inventory = await self.poll()
        self.allocatable = await self.read_allocatable()
        self.capacity = gpu_health.capacity(self.inventory, self.allocatable, self.busy_gpus)

    def _changed(self, verdict: tuple[str, str, str], versions: dict) -> bool:
        if self._reported is None:
            return True
        inv, old_verdict, old_cap, old_versions = self._reported
        return (gpu_health.inventory_changed(inv, self.inventory) or old_verdict != verdict
                or old_cap != self.capacity or old_versions != versions)

    async def report(self) -> bool:
        """Write the status if it changed. True if written. Raises KubeError, SiteGone."""
        assert self.inventory is not None
        status, reason, message = gpu_health.gpu_ready(self.inventory)
        verdict = (str(status), str(getattr(reason, "value", reason)), message)
        if self.invalid:
            verdict = ("False", "InvalidInventory", self.invalid)
        if self.unresponsive:
            verdict = ("Unknown", gpu_health.GPUReadyReason.NVML_UNRESPONSIVE.value, self.unresponsive)
        versions = self.versions.model_dump(by_alias=True, mode="json")
        if not self._changed(verdict, versions):
            return False
        cap = self.capacity.model_dump(by_alias=True, mode="json", exclude_none=True)
        healthy = sum(1 for d in self.inventory.devices if d.healthy)
        fields = {"gpus": self.inventory.model_dump(by_alias=True, mode="json", exclude_none=True),
                  "capacity": cap, "versions": versions,
                  "gpuSummary": f"{healthy}/{len(self.inventory.devices)}"}
        cond = c.make(c.ConditionType.GPU_READY, verdict[0], verdict[1], verdict[2])
        try:
            obj = await write_status(self.hub, node_ref(self.site), owned_types=AGENT_TYPES, updates=[cond],
                                     fields=fields)
        except (NotFound, Forbidden):
            await check_site_exists(self.hub, self.site)
            raise
        if obj is None:
            await check_site_exists(self.hub, self.site)
        self._reported = (self.inventory, verdict, self.capacity, versions)
        self.writes += 1
        metrics.INVENTORY_REPORTS.labels(metrics.label_value(self.site)).inc()
        log.info("Reported inventory of site %s: GPUReady=%s (%s)", self.site, verdict[0], verdict[2])
        return True

    async def run(self, stop: asyncio.Event) -> None:
        failures = 0
        while not stop.is_set():
            await self.collect()
            try:
                await self.report()
                failures = 0
                delay = self.poll_interval
            except KubeError as err:
                metrics.INVENTORY_REPORT_FAILURES.labels(metrics.label_value(self.site)).inc()
                failures += 1
                if failures == 1 or failures % 10 == 0:
                    log.warning("Could not report the inventory of site %s (%d failures; kept for the next "
                                "try): %s", self.site, failures, err)
                delay = min(self.poll_interval, 0.5 * 2 ** min(failures, 8))
            try:
                await asyncio.wait_for(stop.wait(), timeout=delay)
            except asyncio.TimeoutError:
                pass
