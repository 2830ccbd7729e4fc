"""NVML (nvidia-ml-py) → ``GPUInventory``: the site agent's view of its node's GPUs.

NVML is initialised once and shut down once. Every NVML call is guarded: a field the GPU
does not support becomes ``None``; a GPU that is lost or fails a call is reported unhealthy
with a short problem text instead of failing the whole poll; only a failure that leaves
nothing to read (no library, no driver, cannot count the GPUs) raises ``NVMLUnavailable``.
NVML calls are C calls that can block on a wedged GPU, so the agent polls through
``poll_async``, which runs the poll in a daemon thread with a timeout.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import importlib
import logging
import threading
import time
from collections.abc import Callable
from types import ModuleType, TracebackType
from typing import Any, TypeVar

from ..api.inventory import GPUDevice, GPUInventory, MIGMode

log = logging.getLogger(__name__)
T = TypeVar("T")

# Health rules. Any volatile (since driver load) uncorrectable ECC error means the GPU may
# return corrupt results: training on it could silently poison the federated model.
MAX_UNCORRECTABLE_ECC = 0
# Used when the device does not report its slowdown threshold (consumer and older boards).
DEFAULT_SLOWDOWN_C = 90
MIB = 1024 * 1024
MAX_PROBLEMS = 16                 # GPUDevice.problems holds at most this many
UNKNOWN_UUID = "unknown-index-"   # + index, for a GPU whose UUID NVML would not give

DEFAULT_POLL_TIMEOUT_S = 5.0
# Init failures are retried with a doubling delay, capped: a node whose driver is installed
# later (GPU operator) is picked up within INIT_BACKOFF_MAX_S, without hammering meanwhile.
INIT_BACKOFF_S = 5.0
INIT_BACKOFF_MAX_S = 300.0

# Error codes from nvml.h (the same values as pynvml's NVML_ERROR_* constants).
ERR_UNINITIALIZED, ERR_NOT_SUPPORTED, ERR_NO_PERMISSION = 1, 3, 4
ERR_DRIVER_NOT_LOADED, ERR_LIBRARY_NOT_FOUND, ERR_FUNCTION_NOT_FOUND = 9, 12, 13
ERR_GPU_IS_LOST, ERR_LIB_RM_VERSION_MISMATCH = 15, 18
# A field NVML cannot give on this GPU or driver: not a health problem, just unknown.
_ABSENT = {ERR_NOT_SUPPORTED, ERR_FUNCTION_NOT_FOUND, ERR_NO_PERMISSION}

_INIT_MESSAGES = {
    ERR_LIBRARY_NOT_FOUND: "NVML library libnvidia-ml.so.1 not found: no NVIDIA driver on this node, "
                           "or the agent does not run with the NVIDIA container runtime",
    ERR_DRIVER_NOT_LOADED: "NVIDIA kernel driver is not loaded on this node",
    ERR_NO_PERMISSION: "no permission to open the NVIDIA devices (/dev/nvidia*)",
    ERR_LIB_RM_VERSION_MISMATCH: "NVML library and kernel driver versions differ: reload the driver or "
                                 "reboot the node",
}


class NVMLUnavailable(Exception):
    """NVML cannot be read at all on this node; ``code`` is the NVML error code, if any."""

    def __init__(self, message: str, *, code: int | None = None):
        super().__init__(message)
        self.code = code


def _code(err: BaseException) -> int | None:
    value = getattr(err, "value", None)
    return value if isinstance(value, int) else None


def _describe(err: BaseException) -> str:
    code = _code(err)
    return f"{err} (NVML error {code})" if code is not None else f"{type(err).__name__}: {err}"


def _text(value: Any) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def _bounded(value: Any, low: int, high: int | None) -> int | None:
    """An NVML number the model can hold, or None: a bogus reading must not fail the poll."""
    if not isinstance(value, int) or value < low or (high is not None and value > high):
        return None
    return value


def in_daemon_thread(fn: Callable[[], T], name: str = "nvml") -> concurrent.futures.Future[T]:
    """Run ``fn`` in a new daemon thread: a call wedged in the driver never blocks process exit
    (ThreadPoolExecutor's threads are joined at exit, so asyncio.to_thread would)."""
    future: concurrent.futures.Future[T] = concurrent.futures.Future()

    def work() -> None:
        if not future.set_running_or_notify_cancel():
            return
        try:
            future.set_result(fn())
        except BaseException as err:  # noqa: BLE001 - handed to the waiting caller
            future.set_exception(err)

    threading.Thread(target=work, name=name, daemon=True).start()
    return future


class _DeviceProbe:
    """Reads one GPU's fields, turning each NVML error into None or a problem."""

    def __init__(self, nvml: ModuleType):
        self.nvml = nvml
        self.problems: list[str] = []
        self.stopped = False        # the GPU is lost or has no handle: read nothing more


    def get(self, what: str, function: str, *args: Any) -> Any:
        fn = getattr(self.nvml, function, None)
        if self.stopped or fn is None:           # older nvidia-ml-py may lack a call: field unknown
            return None
        try:
            return fn(*args)
        except self.nvml.NVMLError as err:
            code = _code(err)
            if code in _ABSENT:
                return None
            if code == ERR_GPU_IS_LOST:
                self.stopped = True
                self.problems.append("lost: NVML reports the GPU is lost (reset the GPU or reboot the node)")
            else:
                self.problems.append(f"{what} unreadable: {_describe(err)}")
        except Exception as err:  # noqa: BLE001 - a binding bug shows as an unhealthy GPU, not a dead agent
            log.debug("NVML %s raised", function, exc_info=True)
            self.problems.append(f"{what} unreadable: {_describe(err)}")
        return None


class NVMLReader:
    """Polls NVML into a ``GPUInventory``. Pass a pynvml-like module for tests; by default the
    real ``pynvml`` is imported on first use, so a node without it still runs the agent."""

    def __init__(self, nvml: ModuleType | None = None, *, node_name: str = "",
                 clock: Callable[[], float] = time.monotonic, shutdown_wait_s: float = 2.0):
        self.node_name = node_name
        self._nvml, self._clock, self._shutdown_wait_s = nvml, clock, shutdown_wait_s
        self._lock = threading.Lock()        # one NVML conversation at a time, init/poll/shutdown
        self._initialized = False
        self._failures, self._retry_at, self._last_error = 0, 0.0, ""
        self._driver, self._cuda = "", ""
        self._thresholds: dict[str, int | None] = {}
        # Every GPU seen since start, by UUID: one NVML stops listing is reported lost, not
        # silently dropped. Kept in memory only: after an agent restart it is simply absent.
        self._known: dict[str, GPUDevice] = {}
        self._inflight: concurrent.futures.Future[GPUInventory] | None = None

    @property
    def initialized(self) -> bool:
        return self._initialized

    def __enter__(self) -> NVMLReader:
        self.init()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.shutdown()

    def init(self) -> None:
        """Initialise NVML once. Raises NVMLUnavailable (at once, while backing off after a failure)."""
        with self._lock:
            self._init_locked()

    def _module(self) -> ModuleType:
        if self._nvml is None:
            try:
                self._nvml = importlib.import_module("pynvml")
            except ImportError as err:
                raise NVMLUnavailable(f"the nvidia-ml-py package is not installed ({err})") from None
        return self._nvml

    def _init_locked(self) -> None:
        if self._initialized:
            return
        if self._failures and self._clock() < self._retry_at:
            raise NVMLUnavailable(self._last_error)
        try:
            nvml = self._module()
            try:
                nvml.nvmlInit()
            except nvml.NVMLError as err:
                code = _code(err)
                known = _INIT_MESSAGES.get(code) if code is not None else None
                raise NVMLUnavailable(known or f"NVML initialisation failed: {_describe(err)}", code=code) from None
        except NVMLUnavailable as err:
            self._failures += 1
            delay = min(INIT_BACKOFF_MAX_S, INIT_BACKOFF_S * 2 ** (self._failures - 1))
            self._retry_at, self._last_error = self._clock() + delay, str(err)
            log.warning("NVML is unavailable (%s); next try in %.0fs", err, delay)
            raise
        self._initialized, self._failures = True, 0
        probe = _DeviceProbe(nvml)
        self._driver = _text(probe.get("driver version", "nvmlSystemGetDriverVersion") or "")
        cuda = probe.get("CUDA version", "nvmlSystemGetCudaDriverVersion")
        self._cuda = f"{cuda // 1000}.{cuda % 1000 // 10}" if isinstance(cuda, int) and cuda > 0 else ""
        log.info("Initialised NVML: driver %s, CUDA %s", self._driver or "unknown", self._cuda or "unknown")

    def poll(self) -> GPUInventory:
        """Read every GPU. Raises NVMLUnavailable when NVML cannot list the GPUs at all."""
        with self._lock:
            self._init_locked()
            nvml = self._module()
            try:
                count = nvml.nvmlDeviceGetCount()
            except Exception as err:  # noqa: BLE001 - NVMLError or a binding bug: nothing to read either way
                # The driver went away or NVML is broken: start over at the next poll (with backoff
                # if the re-init fails too), releasing this init's reference if NVML still can.
                self._initialized = False
                try:
                    nvml.nvmlShutdown()
                except Exception:  # noqa: BLE001, S110 - best effort: NVML is already failing
                    pass
                raise NVMLUnavailable(f"NVML could not count the GPUs: {_describe(err)}", code=_code(err)) from None
            devices = [self._read_device(nvml, index) for index in range(count)]
            seen = {d.uuid for d in devices}
            for uuid, last in self._known.items():
                if uuid not in seen:
                    devices.append(last.model_copy(update={
                        "healthy": False, "problems": ["lost: no longer listed by NVML"],
                        "utilization_percent": None, "temperature_c": None, "power_milliwatts": None}))
            for device in devices:
                if device.uuid in seen and not device.uuid.startswith(UNKNOWN_UUID):
                    self._known[device.uuid] = device
            devices.sort(key=lambda d: (d.index, d.uuid))
            return GPUInventory(driver_version=self._driver[:64], cuda_version=self._cuda[:16], devices=devices)

    def _read_device(self, nvml: ModuleType, index: int) -> GPUDevice:
        probe = _DeviceProbe(nvml)
        handle = probe.get("handle", "nvmlDeviceGetHandleByIndex", index)
        if handle is None:
            probe.stopped = True
            if not probe.problems:
                probe.problems.append("handle unreadable: NVML returned none")
        uuid = _text(probe.get("UUID", "nvmlDeviceGetUUID", handle) or "")
        if not uuid:    # keep the identity of the GPU last seen at this index, if any
            uuid = next((u for u, d in self._known.items() if d.index == index), f"{UNKNOWN_UUID}{index}")
        name = _text(probe.get("name", "nvmlDeviceGetName", handle) or "")
        memory = probe.get("memory", "nvmlDeviceGetMemoryInfo", handle)
        util = probe.get("utilisation", "nvmlDeviceGetUtilizationRates", handle)
        temperature = _bounded(probe.get("temperature", "nvmlDeviceGetTemperature", handle,
                                         getattr(nvml, "NVML_TEMPERATURE_GPU", 0)), -50, 200)
        if uuid not in self._thresholds and not probe.stopped:   # static per GPU: read once
            self._thresholds[uuid] = _bounded(probe.get(
                "slowdown threshold", "nvmlDeviceGetTemperatureThreshold", handle,
                getattr(nvml, "NVML_TEMPERATURE_THRESHOLD_SLOWDOWN", 1)), 1, 200)
        power = _bounded(probe.get("power", "nvmlDeviceGetPowerUsage", handle), 0, None)
        ecc = _bounded(probe.get("ECC errors", "nvmlDeviceGetTotalEccErrors", handle,
                                 getattr(nvml, "NVML_MEMORY_ERROR_TYPE_UNCORRECTED", 1),
                                 getattr(nvml, "NVML_VOLATILE_ECC", 0)), 0, None)
        mig = probe.get("MIG mode", "nvmlDeviceGetMigMode", handle)
        if probe.stopped:    # values read before the loss are not trustworthy
            memory = util = temperature = power = ecc = mig = None
        known = self._known.get(uuid)
        problems = list(probe.problems)
        if ecc is not None and ecc > MAX_UNCORRECTABLE_ECC:
            problems.insert(0, f"{ecc} uncorrectable ECC errors")
        limit = self._thresholds.get(uuid) or DEFAULT_SLOWDOWN_C
        if temperature is not None and temperature >= limit:
            # No current reading in the text: the message must not change while the GPU stays hot.
            problems.insert(0, f"over temperature (slowdown threshold {limit} °C)")
        return GPUDevice(
            index=index, uuid=uuid[:128], name=(name or (known.name if known else ""))[:256],
            node_name=self.node_name,
            memory_total_mi_b=(getattr(memory, "total", 0) // MIB if memory is not None
                               else (known.memory_total_mi_b if known else 0)),
            memory_used_mi_b=getattr(memory, "used", 0) // MIB if memory is not None else 0,
            utilization_percent=_bounded(getattr(util, "gpu", None), 0, 100),
            temperature_c=temperature, power_milliwatts=power, ecc_uncorrectable_errors=ecc,
            mig_mode=(MIGMode.NOT_SUPPORTED if not mig else
                      MIGMode.ENABLED if mig[0] == getattr(nvml, "NVML_DEVICE_MIG_ENABLE", 1) else MIGMode.DISABLED),
            healthy=not problems, problems=problems[:MAX_PROBLEMS])

    async def poll_async(self, timeout: float = DEFAULT_POLL_TIMEOUT_S) -> GPUInventory:
        """``poll`` in a daemon thread; raises asyncio.TimeoutError when NVML does not answer in time.

        A poll that hangs keeps its thread; later calls wait on that same poll instead of starting
        another, so a wedged GPU costs one thread, not one per poll.
        """
        if self._inflight is None or self._inflight.done():
            self._inflight = in_daemon_thread(self.poll, name="nvml-poll")
        waiter = asyncio.wrap_future(self._inflight)
        # A result that arrives after we gave up is dropped: mark it retrieved, no asyncio warning.
        waiter.add_done_callback(lambda f: f.cancelled() or f.exception())
        return await asyncio.wait_for(asyncio.shield(waiter), timeout)

    def shutdown(self) -> None:
        """Shut NVML down; idempotent. Skipped if a wedged poll still holds NVML (the process is
        ending anyway, and nvmlShutdown would block on the same driver lock)."""
        if not self._lock.acquire(timeout=self._shutdown_wait_s):
            log.warning("Skipped NVML shutdown: a poll has not returned for %.0fs", self._shutdown_wait_s)
            return
        try:
            if not self._initialized:
                return
            self._initialized = False
            self._thresholds.clear()
            nvml = self._module()
            try:
                nvml.nvmlShutdown()
            except nvml.NVMLError as err:
                log.warning("NVML shutdown failed: %s", _describe(err))
            else:
                log.info("Shut down NVML")
        finally:
            self._lock.release()
