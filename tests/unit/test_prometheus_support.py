"""Without the prometheus binary the metrics tests skip, naming the command that installs it."""

from __future__ import annotations

import pathlib

import pytest

from tests.support import prometheus


def test_missing_prometheus_skips_with_the_install_command(monkeypatch):
    monkeypatch.setattr(prometheus.shutil, "which", lambda name: None)
    monkeypatch.setattr(pathlib.Path, "is_file", lambda self: False)
    with pytest.raises(pytest.skip.Exception) as skipped:
        prometheus.binary()
    assert "prometheus is not installed" in str(skipped.value)
    assert "make prometheus" in str(skipped.value) and "apt-get install -y prometheus" in str(skipped.value)
