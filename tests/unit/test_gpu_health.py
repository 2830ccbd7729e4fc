"""GPUReady verdicts, site capacity, allocatable GPUs and the status-write filter."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from fedcare.api.inventory import GPUDevice, GPUInventory, MIGMode
from fedcare.hub.selection import _free_gpus
from fedcare.site.gpu_health import (MAX_MESSAGE_BYTES, TEMPERATURE_BAND_C, GPUReadyReason, allocatable_gpus,
                                     capacity, gpu_ready, inventory_changed)
from tests.support.fake_nvml import uuid

H100, A100 = "NVIDIA H100 80GB HBM3", "NVIDIA A100-SXM4-40GB"


def device(i: int, *, healthy: bool = True, problems: list[str] | None = None, name: str = H100,
           **fields) -> GPUDevice:
    fields.setdefault("memory_total_mi_b", 81559)
    return GPUDevice(index=i, uuid=uuid(i + 1), name=name, healthy=healthy,
                     problems=problems if problems is not None else ([] if healthy else ["lost"]), **fields)


def inventory(*devices: GPUDevice, **fields) -> GPUInventory:
    return GPUInventory(driver_version="580.159.04", cuda_version="13.0", devices=list(devices), **fields)


def test_all_healthy():
    assert gpu_ready(inventory(device(0), device(1))) == ("True", GPUReadyReason.ALL_HEALTHY, "2/2 healthy")


def test_some_unhealthy_names_the_gpu_and_its_problem():
    inv = inventory(device(0), device(1, healthy=False, problems=["1 uncorrectable ECC errors"], node_name="n1"),
                    device(2), device(3))
    assert gpu_ready(inv) == ("True", GPUReadyReason.SOME_UNHEALTHY,
                              "3/4 healthy; n1#1 GPU-00000002…: 1 uncorrectable ECC errors")


def test_no_healthy_gpu_is_false():
    status, reason, message = gpu_ready(inventory(device(0, healthy=False), device(1, healthy=False)))
    assert (status, reason) == ("False", GPUReadyReason.NO_HEALTHY_GPU)
    assert message.startswith("0/2 healthy; #0 GPU-00000001…: lost; #1 GPU-00000002…: lost")


def test_no_gpus_and_no_nvml():
    assert gpu_ready(inventory())[:2] == ("False", GPUReadyReason.NO_GPUS)
    status, reason, message = gpu_ready(GPUInventory(nvml_error="NVIDIA kernel driver is not loaded on this node"))
    assert (status, reason, message) == ("False", GPUReadyReason.NO_NVML,
                                         "NVML unavailable: NVIDIA kernel driver is not loaded on this node")


def test_a_long_list_of_sick_gpus_fits_in_one_kibibyte():
    sick = [device(i, healthy=False, problems=["x" * 200, "over temperature (slowdown threshold 90 °C)"])
            for i in range(40)]
    status, _, message = gpu_ready(inventory(device(99), *sick))
    assert status == "True"
    assert len(message.encode()) <= MAX_MESSAGE_BYTES
    assert message.startswith("1/41 healthy; #0 GPU-00000001…")
    assert message.endswith("; and 32 more unhealthy")


def test_the_message_does_not_move_with_telemetry():
    sick = dict(healthy=False, problems=["over temperature (slowdown threshold 90 °C)"])
    hot = inventory(device(0), device(1, temperature_c=93, utilization_percent=10, **sick))
    hotter = inventory(device(0), device(1, temperature_c=97, utilization_percent=99, **sick))
    assert gpu_ready(hot) == gpu_ready(hotter)


def test_capacity_counts_healthy_gpus_capped_by_allocatable_less_busy():
    inv = inventory(device(0), device(1), device(2, healthy=False), device(3, name=A100))
    cap = capacity(inv, allocatable_gpus=4, busy_gpus=1)
    assert cap.wire() == {
        "gpusTotal": 4, "gpusHealthy": 3, "gpusFree": 2, "allocatable": 4,
        "byProduct": [{"product": A100, "total": 1, "healthy": 1}, {"product": H100, "total": 3, "healthy": 2}]}
    # The hub's selection reads the same wire format.
    assert _free_gpus(cap.wire(), H100) == 2 and _free_gpus(cap.wire(), "") == 2
    assert capacity(inv, allocatable_gpus=1).gpus_free == 1          # the nodes can schedule only one
    assert capacity(inv, allocatable_gpus=None).gpus_free == 3       # site cluster not readable
    assert capacity(inv, allocatable_gpus=4, busy_gpus=9).gpus_free == 0
    assert capacity(GPUInventory(nvml_error="no driver"), allocatable_gpus=8).wire()["gpusFree"] == 0


def test_allocatable_gpus_sums_the_nodes():
    nodes = [
        {"metadata": {"name": "a"}, "status": {"allocatable": {"nvidia.com/gpu": "4", "cpu": "64"}}},
        {"metadata": {"name": "b"}, "status": {"allocatable": {"nvidia.com/gpu": 2}}},
        {"metadata": {"name": "c"}, "status": {"allocatable": {"cpu": "8"}}},
        {"metadata": {"name": "d"}, "status": {}},
        {"metadata": {"name": "e"}},
        {"metadata": {"name": "f"}, "status": {"allocatable": {"nvidia.com/gpu": "1.5"}}},
        {"metadata": {"name": "g"}, "status": {"allocatable": {"nvidia.com/gpu": "-1"}}},
    ]
    assert allocatable_gpus(nodes) == 6
    assert allocatable_gpus([]) == 0


def test_meaningful_changes_are_detected():
    base = inventory(device(0, temperature_c=50), device(1))
    assert inventory_changed(None, base)
    assert not inventory_changed(base, base.model_copy(deep=True))
    changes = [
        inventory(device(0, temperature_c=50), device(1, healthy=False)),                     # health
        inventory(device(0, temperature_c=50)),                                               # GPU gone
        inventory(device(0, temperature_c=50), device(1), device(2)),                         # GPU added
        inventory(device(0, temperature_c=50, memory_total_mi_b=40960), device(1)),           # memory size
        inventory(device(0, temperature_c=50, mig_mode=MIGMode.ENABLED), device(1)),          # MIG
        inventory(device(0, temperature_c=50, ecc_uncorrectable_errors=0), device(1)),        # ECC counter
        inventory(device(0, temperature_c=50 + TEMPERATURE_BAND_C), device(1)),               # big drift
        inventory(device(0), device(1)),                                                      # sensor gone
        base.model_copy(update={"driver_version": "580.200.01"}),                             # driver
        GPUInventory(nvml_error="NVIDIA kernel driver is not loaded on this node"),           # NVML lost
    ]
    for new in changes:
        assert inventory_changed(base, new), new


telemetry = st.fixed_dictionaries({
    "utilization_percent": st.none() | st.integers(0, 100),
    "power_milliwatts": st.none() | st.integers(0, 1_000_000),
    "memory_used_mi_b": st.integers(0, 81559),
})
devices = st.lists(st.builds(
    lambda i, healthy, temp, mig, ecc, name: device(i, healthy=healthy, temperature_c=temp, mig_mode=mig,
                                                    ecc_uncorrectable_errors=ecc, name=name),
    st.integers(0, 7), st.booleans(), st.none() | st.integers(20, 110), st.sampled_from(MIGMode),
    st.none() | st.integers(0, 5), st.sampled_from([H100, A100])), max_size=6, unique_by=lambda d: d.uuid)


@settings(max_examples=150, deadline=None)
@given(devices, st.data())
def test_telemetry_alone_never_counts_as_a_change(devs, data):
    old = inventory(*devs)
    moved = []
    for d in devs:
        update = data.draw(telemetry)
        if d.temperature_c is not None:
            update["temperature_c"] = d.temperature_c + data.draw(
                st.integers(-(TEMPERATURE_BAND_C - 1), TEMPERATURE_BAND_C - 1))
        moved.append(d.model_copy(update=update))
    shuffled = data.draw(st.permutations(moved))
    assert not inventory_changed(old, inventory(*shuffled))


@settings(max_examples=100, deadline=None)
@given(devices.filter(bool), st.data())
def test_a_health_flip_always_counts(devs, data):
    i = data.draw(st.integers(0, len(devs) - 1))
    flipped = list(devs)
    flipped[i] = devs[i].model_copy(update={"healthy": not devs[i].healthy})
    assert inventory_changed(inventory(*devs), inventory(*flipped))
