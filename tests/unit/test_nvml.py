"""NVMLReader against scripted GPUs (tests/support/fake_nvml.py) and against the real pynvml."""

from __future__ import annotations

import asyncio
import inspect
import json
import re
import sys
import threading
import time
from unittest.mock import ANY

import pynvml
import pytest

from fedcare.api.inventory import GPUInventory, MIGMode
from fedcare.integrations import nvml as nv
from fedcare.integrations.nvml import NVMLReader, NVMLUnavailable
from fedcare.site.gpu_health import GPUReadyReason, gpu_ready
from fedcare.site.gpucheck import check
from fedcare.site.gpucheck import main as gpucheck_main
from tests.support.fake_nvml import FUNCTIONS, FakeGPU, FakeNVML, gpus, uuid


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def reader(fake: FakeNVML, **kwargs) -> NVMLReader:
    return NVMLReader(fake, node_name="gpu-node-1", **kwargs)


def by_uuid(inventory: GPUInventory) -> dict:
    return {d.uuid: d for d in inventory.devices}


def test_fake_matches_pynvml_signatures():
    for name in FUNCTIONS:
        real = inspect.signature(getattr(pynvml, name))
        fake = inspect.signature(getattr(FakeNVML(), name))
        assert list(fake.parameters) == list(real.parameters), name


def test_healthy_gpus_are_reported_with_every_field():
    fake = FakeNVML(gpus(2, temperature=41, utilization=73, power_mw=312_500, memory_used_mib=2048))
    with reader(fake) as r:
        first = r.poll()
        second = r.poll()
    assert first == second
    assert (first.driver_version, first.cuda_version, first.nvml_error) == ("580.159.04", "13.0", "")
    d = first.devices[1]
    assert (d.index, d.uuid, d.name, d.node_name) == (1, uuid(2), "NVIDIA H100 80GB HBM3", "gpu-node-1")
    assert (d.memory_total_mi_b, d.memory_used_mi_b, d.utilization_percent) == (81559, 2048, 73)
    assert (d.temperature_c, d.power_milliwatts, d.ecc_uncorrectable_errors) == (41, 312_500, 0)
    assert d.mig_mode is MIGMode.DISABLED and d.healthy and d.problems == []
    # Initialised once, shut down once; the static slowdown threshold is read once per GPU.
    assert fake.calls["nvmlInit"] == 1 and fake.calls["nvmlShutdown"] == 1 and fake.refcount == 0
    assert fake.calls["nvmlDeviceGetTemperatureThreshold"] == 2


def test_mig_enabled_is_reported():
    fake = FakeNVML([FakeGPU(uuid(1), mig_enabled=True)])
    assert reader(fake).poll().devices[0].mig_mode is MIGMode.ENABLED


def test_uncorrectable_ecc_errors_make_the_gpu_unhealthy():
    fake = FakeNVML(gpus(2))
    fake.gpus[1].ecc_uncorrectable = 3
    devices = by_uuid(reader(fake).poll())
    assert devices[uuid(1)].healthy
    assert not devices[uuid(2)].healthy
    assert devices[uuid(2)].problems == ["3 uncorrectable ECC errors"]


@pytest.mark.parametrize(("temperature", "slowdown", "healthy"), [
    (84, 85, True), (85, 85, False),      # the device's own threshold
    (89, None, True), (90, None, False),  # threshold not reported: the default
])
def test_overheating_against_the_slowdown_threshold(temperature, slowdown, healthy):
    fake = FakeNVML([FakeGPU(uuid(1), temperature=temperature, slowdown_c=slowdown)])
    device = reader(fake).poll().devices[0]
    assert device.healthy is healthy
    if not healthy:
        limit = slowdown or nv.DEFAULT_SLOWDOWN_C
        assert device.problems == [f"over temperature (slowdown threshold {limit} °C)"]


def test_unsupported_fields_are_none_and_not_a_health_problem():
    fake = FakeNVML([FakeGPU(uuid(1), utilization=None, temperature=None, slowdown_c=None, power_mw=None,
                             ecc_uncorrectable=None, mig_enabled=None)])
    device = reader(fake).poll().devices[0]
    assert device.healthy and device.problems == []
    assert device.utilization_percent is device.temperature_c is device.power_milliwatts is None
    assert device.ecc_uncorrectable_errors is None and device.mig_mode is MIGMode.NOT_SUPPORTED


def test_a_lost_gpu_is_unhealthy_and_the_others_still_read():
    fake = FakeNVML(gpus(3))
    r = reader(fake)
    r.poll()
    fake.gpus[1].lost = True
    devices = by_uuid(r.poll())
    assert len(devices) == 3
    lost = devices[uuid(2)]       # its identity is kept from the earlier poll
    assert not lost.healthy and lost.problems[0].startswith("lost: NVML reports the GPU is lost")
    assert lost.memory_total_mi_b == 81559 and lost.temperature_c is None
    assert devices[uuid(1)].healthy and devices[uuid(3)].healthy


def test_a_gpu_lost_before_its_uuid_was_read_gets_a_placeholder():
    fake = FakeNVML(gpus(2))
    fake.gpus[0].lost = True
    first, second = reader(fake).poll().devices
    assert first.uuid == "unknown-index-0" and not first.healthy
    assert second.healthy


def test_a_gpu_that_disappears_mid_session_is_reported_lost():
    fake = FakeNVML(gpus(3))
    r = reader(fake)
    assert len(r.poll().devices) == 3
    del fake.gpus[1]              # fell off the bus: NVML lists two
    devices = by_uuid(r.poll())
    assert len(devices) == 3
    assert not devices[uuid(2)].healthy
    assert devices[uuid(2)].problems == ["lost: no longer listed by NVML"]
    assert sum(d.healthy for d in devices.values()) == 2


def test_an_unknown_error_on_one_field_marks_only_that_gpu_unhealthy():
    fake = FakeNVML(gpus(2))
    fake.gpus[0].errors["nvmlDeviceGetPowerUsage"] = pynvml.NVML_ERROR_UNKNOWN
    devices = by_uuid(reader(fake).poll())
    assert devices[uuid(1)].problems == ["power unreadable: Unknown Error (NVML error 999)"]
    assert not devices[uuid(1)].healthy and devices[uuid(1)].power_milliwatts is None
    assert devices[uuid(1)].temperature_c == 35          # the other fields were still read
    assert devices[uuid(2)].healthy


def test_a_binding_bug_is_a_problem_on_the_gpu_not_a_crash():
    fake = FakeNVML(gpus(2))

    def broken(handle):
        raise TypeError("an integer is required")

    fake.nvmlDeviceGetPowerUsage = broken
    devices = by_uuid(reader(fake).poll())
    assert devices[uuid(1)].problems == ["power unreadable: TypeError: an integer is required"]
    fake.nvmlDeviceGetCount = lambda: 1 / 0
    with pytest.raises(NVMLUnavailable, match="could not count the GPUs: ZeroDivisionError"):
        reader(fake).poll()


@pytest.mark.parametrize(("code", "text"), [
    (pynvml.NVML_ERROR_LIBRARY_NOT_FOUND, "libnvidia-ml.so.1 not found"),
    (pynvml.NVML_ERROR_DRIVER_NOT_LOADED, "driver is not loaded"),
    (pynvml.NVML_ERROR_NO_PERMISSION, "no permission"),
    (pynvml.NVML_ERROR_UNKNOWN, "NVML initialisation failed: Unknown Error (NVML error 999)"),
])
def test_init_failures_raise_nvml_unavailable_with_a_clear_message(code, text):
    r = reader(FakeNVML(gpus(1), init_error=code))
    with pytest.raises(NVMLUnavailable, match=re.escape(text)) as err:
        r.init()
    assert err.value.code == code and not r.initialized
    verdict = gpu_ready(GPUInventory(nvml_error=str(err.value)))
    assert verdict[:2] == ("False", GPUReadyReason.NO_NVML) and text in verdict[2]


def test_init_failures_back_off_with_a_bounded_delay():
    clock = Clock()
    fake = FakeNVML(gpus(1), init_error=pynvml.NVML_ERROR_DRIVER_NOT_LOADED)
    r = reader(fake, clock=clock)
    with pytest.raises(NVMLUnavailable):
        r.poll()
    delays = []
    for _ in range(10):               # how long until the reader calls nvmlInit again
        tries, start = fake.calls["nvmlInit"], clock.now
        while fake.calls["nvmlInit"] == tries:
            clock.now += 1
            with pytest.raises(NVMLUnavailable, match="driver is not loaded"):
                r.poll()
        delays.append(clock.now - start)
    assert delays == [5, 10, 20, 40, 80, 160, 300, 300, 300, 300]
    fake.init_error = None            # the driver got loaded: the next try succeeds
    clock.now += nv.INIT_BACKOFF_MAX_S
    assert r.poll().devices[0].healthy
    fake.init_error = pynvml.NVML_ERROR_DRIVER_NOT_LOADED
    r.shutdown()                      # a success reset the backoff: the next failure waits 5 s again
    with pytest.raises(NVMLUnavailable):
        r.poll()
    clock.now += nv.INIT_BACKOFF_S
    with pytest.raises(NVMLUnavailable):
        r.poll()
    assert fake.calls["nvmlInit"] == 14


def test_nvml_raising_at_every_call_fails_the_poll_cleanly_then_recovers():
    fake = FakeNVML(gpus(2))
    r = reader(fake, clock=Clock())
    r.init()
    fake.fail_all = pynvml.NVML_ERROR_UNKNOWN
    with pytest.raises(NVMLUnavailable, match="could not count the GPUs: Unknown Error"):
        r.poll()
    assert not r.initialized and fake.calls["nvmlShutdown"] == 1   # released; the next poll re-inits
    with pytest.raises(NVMLUnavailable, match="initialisation failed"):
        r.poll()
    fake.fail_all = None
    r._clock.now += nv.INIT_BACKOFF_MAX_S
    assert [d.healthy for d in r.poll().devices] == [True, True]


def test_nvml_raising_at_every_call_from_the_start():
    fake = FakeNVML(gpus(1))
    fake.fail_all = pynvml.NVML_ERROR_UNKNOWN
    with pytest.raises(NVMLUnavailable, match="Unknown Error"):
        reader(fake).poll()


def test_shutdown_is_idempotent_and_safe_without_init():
    fake = FakeNVML(gpus(1))
    r = reader(fake)
    r.shutdown()
    r.init()
    r.init()
    r.shutdown()
    r.shutdown()
    assert (fake.calls["nvmlInit"], fake.calls["nvmlShutdown"], fake.refcount) == (1, 1, 0)


async def test_poll_async_returns_the_inventory():
    inventory = await reader(FakeNVML(gpus(2))).poll_async(timeout=5)
    assert [d.index for d in inventory.devices] == [0, 1]


async def test_a_hanging_poll_times_out_without_piling_up_threads():
    fake = FakeNVML(gpus(1))
    r = reader(fake, shutdown_wait_s=0.05)
    r.init()
    fake.hang_on = "nvmlDeviceGetCount"
    try:
        started = time.monotonic()
        with pytest.raises(asyncio.TimeoutError):
            await r.poll_async(timeout=0.1)
        with pytest.raises(asyncio.TimeoutError):
            await r.poll_async(timeout=0.1)
        assert time.monotonic() - started < 2
        assert fake.calls["nvmlDeviceGetCount"] == 1      # the second call waited on the first poll
        assert sum(t.name == "nvml-poll" for t in threading.enumerate()) == 1
        r.shutdown()                                      # wedged: skipped, returns promptly
        assert fake.calls["nvmlShutdown"] == 0
    finally:
        fake.hang_on = None
        fake.release.set()
    assert (await r.poll_async(timeout=5)).devices[0].healthy
    r.shutdown()
    assert fake.calls["nvmlShutdown"] == 1


def test_missing_nvidia_ml_py_is_nvml_unavailable(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", None)     # makes `import pynvml` raise ImportError
    with pytest.raises(NVMLUnavailable, match="nvidia-ml-py package is not installed"):
        NVMLReader().poll()


def test_the_real_pynvml_on_this_machine_does_not_crash():
    """On a machine without an NVIDIA driver (CI): NoNVML. On a GPU machine: a real inventory."""
    r = NVMLReader(node_name="here")
    try:
        inventory = r.poll()
    except NVMLUnavailable as err:
        assert err.code in (pynvml.NVML_ERROR_LIBRARY_NOT_FOUND, pynvml.NVML_ERROR_DRIVER_NOT_LOADED)
        inventory = GPUInventory(nvml_error=str(err))
        status, reason, message = gpu_ready(inventory)
        assert (status, reason) == ("False", GPUReadyReason.NO_NVML) and "NVML" in message
    else:
        assert inventory.driver_version and all(d.uuid for d in inventory.devices)
    finally:
        r.shutdown()


def test_gpucheck_reports_inventory_verdict_capacity_and_timing():
    fake = FakeNVML(gpus(2))
    fake.gpus[1].ecc_uncorrectable = 1
    result = check(reader(fake), polls=5, allocatable=2, timeout_s=5)
    assert result["nvml"] == "ok" and len(result["inventory"]["devices"]) == 2
    assert result["gpuReady"]["status"] == "True" and result["gpuReady"]["reason"] == "SomeUnhealthy"
    assert result["capacity"]["gpusFree"] == 1
    timing = result["timing"]
    assert timing["polls"] == 5 and timing["gpus"] == 2 and timing["withinTarget"] is True
    assert 0 < timing["p50Ms"] <= timing["maxMs"] and fake.calls["nvmlInit"] == 1


def test_gpucheck_without_nvml_and_with_a_wedged_gpu():
    result = check(reader(FakeNVML(init_error=pynvml.NVML_ERROR_LIBRARY_NOT_FOUND)), polls=3, allocatable=None,
                   timeout_s=5)
    assert result["nvml"] == "unavailable" and result["gpuReady"]["reason"] == "NoNVML"
    fake = FakeNVML(gpus(1))
    fake.hang_on = "nvmlDeviceGetCount"
    try:
        with pytest.raises(TimeoutError):
            check(reader(fake), polls=0, allocatable=None, timeout_s=0.05)
    finally:
        fake.release.set()


def test_gpucheck_main_on_this_machine_exits_zero(capsys):
    assert gpucheck_main(["--polls", "2"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["nvml"] in ("ok", "unavailable")
    if result["nvml"] == "unavailable":
        assert result["gpuReady"] == {"status": "False", "reason": "NoNVML", "message": ANY}
