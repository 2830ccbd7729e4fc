"""The agent's NVML metrics: poll duration, errors by kind, GPUs healthy/total (fake NVML)."""

from __future__ import annotations

import pynvml

from fedcare import metrics
from fedcare.integrations.nvml import NVMLReader
from fedcare.site import reporter as reporter_module
from fedcare.site.reporter import InventoryReporter
from tests.support.fake_nvml import FakeNVML, gpus


def value(metric, *labels) -> float:
    return metric.labels(*labels)._value.get()         # noqa: SLF001 - prometheus-client's documented test hook


def polls(site: str) -> float:
    return next(s.value for m in metrics.NVML_POLL_DURATION.collect() for s in m.samples
                if s.name.endswith("_count") and s.labels["site"] == site)


async def test_healthy_and_total_gpus_and_poll_duration():
    fake = FakeNVML(gpus(2))
    fake.gpus[1].ecc_uncorrectable = 1
    rep = InventoryReporter(None, "m-gpus", reader=NVMLReader(fake))
    metrics.init_agent_site("m-gpus")
    before = polls("m-gpus")
    await rep.poll()
    assert value(metrics.GPUS, "m-gpus", "healthy") == 1 and value(metrics.GPUS, "m-gpus", "total") == 2
    assert polls("m-gpus") == before + 1
    rep.reader.shutdown()


async def test_unavailable_nvml_is_counted_and_reports_no_gpus():
    metrics.init_agent_site("m-nonvml")
    rep = InventoryReporter(None, "m-nonvml", reader=NVMLReader(FakeNVML(init_error=pynvml.NVML_ERROR_LIBRARY_NOT_FOUND)))
    await rep.poll()
    assert value(metrics.NVML_ERRORS, "m-nonvml", "Unavailable") == 1
    assert value(metrics.GPUS, "m-nonvml", "total") == 0


async def test_a_hanging_poll_counts_a_timeout_and_keeps_the_last_gpus(monkeypatch):
    metrics.init_agent_site("m-hang")
    fake = FakeNVML(gpus(2))
    rep = InventoryReporter(None, "m-hang", reader=NVMLReader(fake, shutdown_wait_s=0.05))
    rep.inventory = await rep.poll()
    monkeypatch.setattr(reporter_module, "NVML_TIMEOUT", 0.1)
    fake.hang_on = "nvmlDeviceGetCount"
    try:
        await rep.poll()
    finally:
        fake.hang_on = None
        fake.release.set()
    assert value(metrics.NVML_ERRORS, "m-hang", "Timeout") == 1
    assert value(metrics.GPUS, "m-hang", "total") == 2          # the last good inventory, kept
    rep.reader.shutdown()


def test_training_pod_restarts_count_increases_of_the_assignment_status():
    from fedcare.site.work_metrics import RestartCounter

    counter = RestartCounter("m-restarts")
    metrics.init_agent_site("m-restarts")

    def ra(uid: str, restarts: int) -> dict:
        return {"metadata": {"uid": uid}, "status": {"restarts": restarts}}

    counter.observe(ra("a", 2), None)              # first sight (a restarted agent): not counted again
    assert value(metrics.TRAINING_POD_RESTARTS, "m-restarts") == 0
    counter.observe(ra("a", 2), "MODIFIED")
    counter.observe(ra("a", 3), "MODIFIED")
    counter.observe(ra("a", 5), "MODIFIED")
    counter.observe(ra("a", 4), "MODIFIED")        # an out-of-order older copy: never negative
    counter.observe(ra("a", 5), "MODIFIED")
    assert value(metrics.TRAINING_POD_RESTARTS, "m-restarts") == 3
    counter.observe(ra("b", 0), "ADDED")
    counter.observe(ra("b", 1), "MODIFIED")
    counter.observe(ra("b", 1), "DELETED")
    counter.observe({"metadata": {"uid": "c"}, "status": {"restarts": "garbage"}}, "MODIFIED")
    assert value(metrics.TRAINING_POD_RESTARTS, "m-restarts") == 4
