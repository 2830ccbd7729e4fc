"""Test support shared by the test tiers (import the modules: ``from tests.support.harness import ...``).

- ``harness``: ``run_operator`` (the real kopf operator in-process against the emulator),
  ``LogCollector``, ``eventually`` (polling with a deadline), ``fast_settings``;
- ``kube``: ``KubeClient``, a raw HTTP client returning ``Reply(status, body)``;
- ``fake_nvml``: scripted GPUs for the NVML reader.

Kept free of imports so that importing one helper does not pull in kopf or kmock.
"""
