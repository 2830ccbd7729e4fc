"""A scripted stand-in for the ``pynvml`` module (nvidia-ml-py): tests and the sandbox use it.

Same function names and signatures as pynvml, and the *real* ``NVMLError`` class hierarchy
and ``NVML_*`` constants copied from the installed nvidia-ml-py, so code under test maps
error codes exactly as it would against a driver. Scenarios are scripted per GPU
(``FakeGPU``) or for the whole module (``init_error``, ``fail_all``, ``hang_on``).
"""

from __future__ import annotations

import threading
import types
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import pynvml as _real

MIB = 1024 * 1024
H100 = "NVIDIA H100 80GB HBM3"


@dataclass
class FakeGPU:
    """One scripted GPU. ``None`` for an optional reading means NVML answers NotSupported."""

    uuid: str
    name: str = H100
    memory_total_mib: int = 81559
    memory_used_mib: int = 512
    utilization: int | None = 0
    temperature: int | None = 35
    slowdown_c: int | None = 90
    power_mw: int | None = 70_000
    ecc_uncorrectable: int | None = 0
    mig_enabled: bool | None = False
    lost: bool = False                                   # every call on it raises GPU_IS_LOST
    errors: dict[str, int] = field(default_factory=dict)  # pynvml function name → error code


@dataclass(frozen=True)
class _Handle:
    gpu: FakeGPU


class _Memory:
    def __init__(self, total: int, used: int):
        self.total, self.used, self.free = total, used, total - used


class _Utilization:
    def __init__(self, gpu: int):
        self.gpu, self.memory = gpu, 0


class FakeNVML(types.ModuleType):
    """``FakeNVML([FakeGPU("GPU-…"), …])``; mutate ``gpus`` or the switches between polls."""

    def __init__(self, gpus: list[FakeGPU] | None = None, *, driver: str = "580.159.04", cuda: int = 13000,
                 init_error: int | None = None):
        super().__init__("pynvml")
        for name in dir(_real):       # the real error classes and constants
            if name.startswith(("NVML_", "NVMLError")) or name == "nvmlExceptionClass":
                setattr(self, name, getattr(_real, name))
        self.gpus = list(gpus or [])
        self.driver, self.cuda = driver, cuda
        self.init_error = init_error          # nvmlInit raises this code
        self.fail_all: int | None = None      # every call (nvmlInit included) raises this code
        self.hang_on: str | None = None       # this function blocks until ``release`` is set
        self.release = threading.Event()
        self.refcount = 0                     # NVML counts inits; each needs a shutdown
        self.calls: Counter[str] = Counter()

    # --- plumbing -------------------------------------------------------------------------------
    def _enter(self, function: str, handle: _Handle | None = None, *, needs_init: bool = True) -> None:
        self.calls[function] += 1
        if self.hang_on == function:
            self.release.wait(timeout=30)     # bounded: a forgotten release cannot hang the suite
        if self.fail_all is not None:
            raise _real.NVMLError(self.fail_all)
        if needs_init and self.refcount == 0:
            raise _real.NVMLError(_real.NVML_ERROR_UNINITIALIZED)
        if handle is not None:
            if not isinstance(handle, _Handle):
                raise _real.NVMLError(_real.NVML_ERROR_INVALID_ARGUMENT)
            if handle.gpu.lost or handle.gpu not in self.gpus:
                raise _real.NVMLError(_real.NVML_ERROR_GPU_IS_LOST)
            if function in handle.gpu.errors:
                raise _real.NVMLError(handle.gpu.errors[function])

    @staticmethod
    def _supported(value: Any) -> Any:
        if value is None:
            raise _real.NVMLError(_real.NVML_ERROR_NOT_SUPPORTED)
        return value

    # --- pynvml API -----------------------------------------------------------------------------
    def nvmlInit(self) -> None:
        self.nvmlInitWithFlags(0)

    def nvmlInitWithFlags(self, flags: int) -> None:
        self._enter("nvmlInit", needs_init=False)
        if self.init_error is not None:
            raise _real.NVMLError(self.init_error)
        self.refcount += 1

    def nvmlShutdown(self) -> None:
        self._enter("nvmlShutdown")
        self.refcount -= 1

    def nvmlErrorString(self, result: int) -> str:
        return str(_real.NVMLError(result))

    def nvmlSystemGetDriverVersion(self) -> str:
        self._enter("nvmlSystemGetDriverVersion")
        return self.driver

    def nvmlSystemGetCudaDriverVersion(self) -> int:
        self._enter("nvmlSystemGetCudaDriverVersion")
        return self.cuda

    def nvmlDeviceGetCount(self) -> int:
        self._enter("nvmlDeviceGetCount")
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> _Handle:
        self._enter("nvmlDeviceGetHandleByIndex")
        if not 0 <= index < len(self.gpus):
            raise _real.NVMLError(_real.NVML_ERROR_INVALID_ARGUMENT)
        gpu = self.gpus[index]
        if "nvmlDeviceGetHandleByIndex" in gpu.errors:
            raise _real.NVMLError(gpu.errors["nvmlDeviceGetHandleByIndex"])
        if gpu.lost:
            raise _real.NVMLError(_real.NVML_ERROR_GPU_IS_LOST)
        return _Handle(gpu)

    def nvmlDeviceGetUUID(self, handle: _Handle) -> str:
        self._enter("nvmlDeviceGetUUID", handle)
        return handle.gpu.uuid

    def nvmlDeviceGetName(self, handle: _Handle) -> str:
        self._enter("nvmlDeviceGetName", handle)
        return handle.gpu.name

    def nvmlDeviceGetMemoryInfo(self, handle: _Handle, version: int | None = None) -> _Memory:
        self._enter("nvmlDeviceGetMemoryInfo", handle)
        return _Memory(handle.gpu.memory_total_mib * MIB, handle.gpu.memory_used_mib * MIB)

    def nvmlDeviceGetUtilizationRates(self, handle: _Handle) -> _Utilization:
        self._enter("nvmlDeviceGetUtilizationRates", handle)
        return _Utilization(self._supported(handle.gpu.utilization))

    def nvmlDeviceGetTemperature(self, handle: _Handle, sensor: int) -> int:
        self._enter("nvmlDeviceGetTemperature", handle)
        if sensor != _real.NVML_TEMPERATURE_GPU:
            raise _real.NVMLError(_real.NVML_ERROR_INVALID_ARGUMENT)
        return self._supported(handle.gpu.temperature)

    def nvmlDeviceGetTemperatureThreshold(self, handle: _Handle, threshold: int) -> int:
        self._enter("nvmlDeviceGetTemperatureThreshold", handle)
        slowdown = self._supported(handle.gpu.slowdown_c)
        if threshold == _real.NVML_TEMPERATURE_THRESHOLD_SLOWDOWN:
            return slowdown
        if threshold == _real.NVML_TEMPERATURE_THRESHOLD_SHUTDOWN:
            return slowdown + 5
        raise _real.NVMLError(_real.NVML_ERROR_NOT_SUPPORTED)

    def nvmlDeviceGetPowerUsage(self, handle: _Handle) -> int:
        self._enter("nvmlDeviceGetPowerUsage", handle)
        return self._supported(handle.gpu.power_mw)

    def nvmlDeviceGetTotalEccErrors(self, handle: _Handle, errorType: int, counterType: int) -> int:  # noqa: N803
        self._enter("nvmlDeviceGetTotalEccErrors", handle)
        count = self._supported(handle.gpu.ecc_uncorrectable)
        if errorType != _real.NVML_MEMORY_ERROR_TYPE_UNCORRECTED:
            return 0                          # corrected errors are not scripted
        # The aggregate counter survives reboots; scripted GPUs have no history beyond this boot.
        return count if counterType in (_real.NVML_VOLATILE_ECC, _real.NVML_AGGREGATE_ECC) else 0

    def nvmlDeviceGetMigMode(self, device: _Handle) -> list[int]:
        self._enter("nvmlDeviceGetMigMode", device)
        mode = int(self._supported(device.gpu.mig_enabled))
        return [mode, mode]


#: The functions the fake implements; tests check they match pynvml's signatures.
FUNCTIONS = [name for name in vars(FakeNVML) if name.startswith("nvml")]


def uuid(n: int) -> str:
    """A well-formed, distinct GPU UUID."""
    return f"GPU-{n:08x}-1a2b-3c4d-5e6f-{n:012x}"


def gpus(count: int, **overrides: Any) -> list[FakeGPU]:
    return [FakeGPU(uuid=uuid(i + 1), **overrides) for i in range(count)]
