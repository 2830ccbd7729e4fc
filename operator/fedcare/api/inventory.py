"""GPU inventory as the site agent reports it in HospitalNode ``status``.

Filled from NVML by ``fedcare.integrations.nvml``; written only by the site agent.
"""

from __future__ import annotations

import enum

from pydantic import Field

from .base import StatusModel


class MIGMode(str, enum.Enum):
    ENABLED = "Enabled"
    DISABLED = "Disabled"
    NOT_SUPPORTED = "NotSupported"


class GPUDevice(StatusModel):
    """One GPU as NVML sees it, with the agent's health verdict."""

    index: int = Field(ge=0, description="NVML device index on its host.")
    uuid: str = Field(min_length=1, max_length=128, description="NVML UUID, for example GPU-1a2b….")
    name: str = Field(default="", max_length=256, description="Product name, for example NVIDIA H100 80GB HBM3.")
    node_name: str = Field(default="", max_length=253, description="The site-cluster node that holds the GPU.")
    memory_total_mi_b: int = Field(default=0, ge=0, alias="memoryTotalMiB", description="Total memory, MiB.")
    memory_used_mi_b: int = Field(default=0, ge=0, alias="memoryUsedMiB", description="Used memory, MiB.")
    utilization_percent: int | None = Field(default=None, ge=0, le=100, description="GPU utilisation, percent.")
    temperature_c: int | None = Field(default=None, ge=-50, le=200, alias="temperatureC",
                                      description="Core temperature, degrees Celsius.")
    power_milliwatts: int | None = Field(default=None, ge=0, description="Power draw, milliwatts.")
    ecc_uncorrectable_errors: int | None = Field(
        default=None, ge=0, description="Volatile uncorrectable ECC errors; unset where ECC is not supported.")
    mig_mode: MIGMode = Field(default=MIGMode.NOT_SUPPORTED, description="Multi-Instance GPU mode.")
    healthy: bool = Field(default=True, description="False on uncorrectable ECC errors, over-temperature, or loss.")
    problems: list[str] = Field(default_factory=list, max_length=16,
                                description="Why the GPU is unhealthy, one short sentence each.")


class GPUInventory(StatusModel):
    """What a site can offer, as last reported by its agent."""

    driver_version: str = Field(default="", max_length=64, description="NVIDIA driver version.")
    cuda_version: str = Field(default="", max_length=16, description="CUDA driver API version, for example 12.4.")
    devices: list[GPUDevice] = Field(default_factory=list, max_length=256, description="GPUs NVML reports.")
    nvml_error: str = Field(default="", max_length=1024,
                            description="Why NVML could not be read; empty when it could.")


class ProductCapacity(StatusModel):
    """GPUs of one product name at the site."""

    product: str = Field(max_length=256, description="Product name as NVML reports it.")
    total: int = Field(ge=0, description="GPUs of this product NVML lists, healthy or not.")
    healthy: int = Field(ge=0, description="Of those, the healthy ones.")


class SiteCapacity(StatusModel):
    """What the site can offer to a round, as the agent computes it from NVML and the site's nodes."""

    gpus_total: int = Field(default=0, ge=0, description="GPUs NVML lists, healthy or not.")
    gpus_healthy: int = Field(default=0, ge=0, description="GPUs without uncorrectable ECC errors, "
                                                           "over-temperature or loss.")
    gpus_free: int = Field(default=0, ge=0, description="Healthy GPUs, capped by the nodes' allocatable "
                                                        "nvidia.com/gpu, less those busy with assignments.")
    allocatable: int | None = Field(default=None, ge=0, description="Sum of nvidia.com/gpu allocatable over "
                                                                    "the site's nodes; unset when unknown.")
    by_product: list[ProductCapacity] = Field(default_factory=list, max_length=64,
                                              description="GPU counts per product name.")
