"""`make demo` keeps working: the narrated sandbox run, without its (slow) training step."""

from __future__ import annotations

import os
import subprocess
import sys


def test_demo_runs_end_to_end(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "KUBECONFIG"}
    proc = subprocess.run([sys.executable, "-m", "fedcare.cli", "sandbox", "demo", "--no-train"], env=env,
                          capture_output=True, text=True, timeout=240)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    for line in ("Enrolling hospitals rouen, lyon, lille", "lille    Rejected  4 GPU(s) needed, 1 healthy and free",
                 "no Lease renewal for 10s", "namespace fedcare-site-lille: deleted", "Demo complete"):
        assert line in out, out[-4000:]
    assert "Traceback" not in out, out[-4000:]
