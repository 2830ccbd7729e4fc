"""Pure functions over the NVML inventory: the GPUReady verdict, the site's capacity, the
allocatable GPU count of its nodes, and whether an inventory changed enough to be written.

Nothing here calls NVML or Kubernetes, so the agent, the hub's tests and ``gpucheck`` all
judge an inventory the same way.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Iterable
from typing import Any, Literal

from ..api.inventory import GPUDevice, GPUInventory, ProductCapacity, SiteCapacity

log = logging.getLogger(__name__)

GPU_RESOURCE = "nvidia.com/gpu"
MAX_MESSAGE_BYTES = 1024
MAX_LISTED = 8              # unhealthy GPUs named in the message; the rest are counted
# A temperature drift smaller than this is telemetry, not news: no status write for it.
TEMPERATURE_BAND_C = 10

Status = Literal["True", "False", "Unknown"]


class GPUReadyReason(str, enum.Enum):
    ALL_HEALTHY = "AllHealthy"
    SOME_UNHEALTHY = "SomeUnhealthy"        # still True: the healthy GPUs can train
    NO_HEALTHY_GPU = "NoHealthyGPU"
    NO_GPUS = "NoGPUs"
    NO_NVML = "NoNVML"
    NVML_UNRESPONSIVE = "NVMLUnresponsive"  # Unknown: NVML stopped answering (hung driver)


UNRESPONSIVE_PROBLEM = "unknown: NVML does not answer, health cannot be read"


def unresponsive(inventory: GPUInventory) -> GPUInventory:
    """The last inventory with every GPU marked not usable: after consecutive poll timeouts
    nothing vouches for any GPU (one that fell off the bus hangs NVML exactly like this)."""
    devices = [d.model_copy(update={"healthy": False, "problems": [UNRESPONSIVE_PROBLEM],
                                    "utilization_percent": None, "temperature_c": None,
                                    "power_milliwatts": None}) for d in inventory.devices]
    return inventory.model_copy(update={"devices": devices})


def _short_uuid(uuid: str) -> str:
    # "GPU-1a2b3c4d-…" → "GPU-1a2b3c4d…": enough to tell GPUs apart; the full UUID is in status.gpus.
    return uuid[:12] + "…" if uuid.startswith(("GPU-", "MIG-")) and len(uuid) > 13 else uuid


def _describe(device: GPUDevice) -> str:
    where = f"{device.node_name}#{device.index}" if device.node_name else f"#{device.index}"
    return f"{where} {_short_uuid(device.uuid)}: {', '.join(device.problems) or 'unhealthy'}"


def _fit(text: str, limit: int = MAX_MESSAGE_BYTES) -> str:
    data = text.encode()
    if len(data) <= limit:
        return text
    return data[:limit - len("…".encode())].decode(errors="ignore") + "…"


def gpu_ready(inventory: GPUInventory) -> tuple[Status, GPUReadyReason, str]:
    """The GPUReady condition as (status, reason, message); the message is at most 1 KiB.

    The message holds no telemetry (temperatures, load), so it only changes when health does.
    """
    if inventory.nvml_error:
        return "False", GPUReadyReason.NO_NVML, _fit(f"NVML unavailable: {inventory.nvml_error}")
    devices = inventory.devices
    if not devices:
        return "False", GPUReadyReason.NO_GPUS, "NVML lists no GPUs on this node"
    healthy = sum(1 for d in devices if d.healthy)
    head = f"{healthy}/{len(devices)} healthy"
    sick = sorted((d for d in devices if not d.healthy), key=lambda d: (d.node_name, d.index, d.uuid))
    if not sick:
        return "True", GPUReadyReason.ALL_HEALTHY, head
    parts = [_describe(d) for d in sick[:MAX_LISTED]]
    tail = f"; and {len(sick) - MAX_LISTED} more unhealthy" if len(sick) > MAX_LISTED else ""
    body = _fit("; ".join([head, *parts]), MAX_MESSAGE_BYTES - len(tail.encode()))
    reason = GPUReadyReason.SOME_UNHEALTHY if healthy else GPUReadyReason.NO_HEALTHY_GPU
    return ("True" if healthy else "False"), reason, body + tail


def capacity(inventory: GPUInventory, allocatable_gpus: int | None, busy_gpus: int = 0) -> SiteCapacity:
    """What the site can offer: healthy GPUs, capped by what its nodes can schedule, less busy ones.

    The agent sees through NVML only the GPUs of the node it runs on, while ``allocatable_gpus``
    counts every node: taking the smaller of the two never promises a GPU the site cannot give.
    """
    products: dict[str, list[int]] = {}
    for device in inventory.devices:
        counts = products.setdefault(device.name or "unknown", [0, 0])
        counts[0] += 1
        counts[1] += int(device.healthy)
    healthy = sum(1 for d in inventory.devices if d.healthy)
    usable = healthy if allocatable_gpus is None else min(healthy, max(allocatable_gpus, 0))
    return SiteCapacity(
        gpus_total=len(inventory.devices), gpus_healthy=healthy, gpus_free=max(0, usable - max(busy_gpus, 0)),
        allocatable=None if allocatable_gpus is None else max(allocatable_gpus, 0),
        by_product=[ProductCapacity(product=name, total=t, healthy=h) for name, (t, h) in sorted(products.items())])


def _gpu_count(value: Any) -> int | None:
    # Extended resources are whole numbers; the API server gives them as strings ("4").
    try:
        count = int(str(value).strip())
    except ValueError:
        return None
    return count if count >= 0 else None


def allocatable_gpus(nodes: Iterable[dict[str, Any]]) -> int:
    """Sum of ``status.allocatable["nvidia.com/gpu"]`` over Node objects; malformed values count 0."""
    total = 0
    for node in nodes:
        value = ((node.get("status") or {}).get("allocatable") or {}).get(GPU_RESOURCE)
        if value is None:
            continue
        count = _gpu_count(value)
        if count is None:
            log.warning("Ignored node %s: allocatable %s is %r, not a whole number",
                        (node.get("metadata") or {}).get("name", "?"), GPU_RESOURCE, value)
            continue
        total += count
    return total


def _meaningful(device: GPUDevice) -> tuple[Any, ...]:
    """What a status reader acts on. Utilisation, power and memory used move every poll: left out."""
    return (device.index, device.name, device.node_name, device.memory_total_mi_b, device.mig_mode,
            device.healthy, tuple(device.problems), device.ecc_uncorrectable_errors, device.temperature_c is None)


def inventory_changed(old: GPUInventory | None, new: GPUInventory) -> bool:
    """True when ``new`` differs from the last written ``old`` in something worth a status write:
    NVML availability, driver, the set of GPUs, or a GPU's identity, memory size, MIG mode,
    health, ECC count, or a temperature drift of TEMPERATURE_BAND_C or more."""
    if old is None:
        return True
    if (old.nvml_error, old.driver_version, old.cuda_version) != (new.nvml_error, new.driver_version,
                                                                  new.cuda_version):
        return True
    before = {d.uuid: d for d in old.devices}
    after = {d.uuid: d for d in new.devices}
    if before.keys() != after.keys():
        return True
    for uuid, was in before.items():
        now = after[uuid]
        if _meaningful(was) != _meaningful(now):
            return True
        if (was.temperature_c is not None and now.temperature_c is not None
                and abs(was.temperature_c - now.temperature_c) >= TEMPERATURE_BAND_C):
            return True
    return False
