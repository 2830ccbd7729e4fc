"""Tests import the fake NVML from here; it lives in the sandbox, which simulates GPUs too."""

from fedcare.sandbox.simulated_nvml import FUNCTIONS, H100, FakeGPU, FakeNVML, gpus, uuid

__all__ = ["FUNCTIONS", "H100", "FakeGPU", "FakeNVML", "gpus", "uuid"]
