"""`fedcare sandbox cluster` without a built control plane: a clear message, never a traceback."""

from __future__ import annotations

import pytest

from fedcare import cli
from fedcare.sandbox import cluster


def test_missing_binary_names_the_build_command(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(cluster, "ROOT", tmp_path)          # no .tools/bin/fedcare-kube here
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv("FEDCARE_KUBE", raising=False)
    with pytest.raises(cluster.ClusterError, match="make kube"):
        cluster.find_binary()
    assert cli.main(["sandbox", "cluster", "--dir", str(tmp_path / "c")]) == 2
    out = capsys.readouterr().out
    assert "fedcare-kube is not built" in out and "make kube" in out and "Go" in out


def test_build_script_without_go_says_what_to_install(tmp_path):
    import os
    import shutil
    import subprocess

    bin_dir = tmp_path / "bin"          # every tool the script needs, but no go
    bin_dir.mkdir()
    for tool in ("dirname", "sed", "cut", "mkdir", "date", "cat", "awk"):
        os.symlink(shutil.which(tool), bin_dir / tool)
    proc = subprocess.run(["/bin/bash", str(cluster.ROOT / "scripts" / "build-kube.sh"), str(tmp_path / "out")],
                          env={"PATH": str(bin_dir)}, capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0
    assert "Go is not installed" in proc.stderr and "emulator tier runs without it" in proc.stderr, proc.stderr
    assert not (tmp_path / "out" / "fedcare-kube").exists()
