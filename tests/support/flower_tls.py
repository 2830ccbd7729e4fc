"""The TLS Flower deployment lives in ``fedcare.sandbox.flower_tls`` (the demo uses it too)."""

from fedcare.sandbox.flower_tls import BIN, TLSDeployment  # noqa: F401
