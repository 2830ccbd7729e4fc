"""The training part of the demo: the Flower app in workloads/, run as a real local deployment
(one flower-superlink, one flower-supernode per hospital, `flwr run`) on synthetic ultrasound
data, each site reading only its own folder. The operator does not start these processes yet
(round execution is a later issue); the demo runs the same app the training pods will run."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import pathlib
import shutil
import sys

ROOT = pathlib.Path(__file__).resolve().parents[3]
SCRIPT = ROOT / "workloads" / "scripts" / "local-deployment.sh"
TIMEOUT = 900


async def run_training(sites: list[str], workdir: pathlib.Path, rounds: int = 2) -> bool:
    print(f"\n== Federated training on synthetic ultrasound data: {len(sites)} sites, {rounds} rounds "
          "(Flower SuperLink + one SuperNode per site, CPU)", flush=True)
    if importlib.util.find_spec("fedcare_workloads") is None or not SCRIPT.exists():
        print("   skipped: the workloads package is not installed (pip install -e ./workloads)")
        return False
    shutil.rmtree(workdir, ignore_errors=True)
    bindir = str(pathlib.Path(sys.executable).parent)
    env = {**os.environ, "SITES": str(len(sites)), "ROUNDS": str(rounds), "IMAGES": "160", "WORK": str(workdir),
           "PYTHON": sys.executable, "PATH": f"{bindir}:{os.environ.get('PATH', '')}"}
    proc = await asyncio.create_subprocess_exec("bash", str(SCRIPT), env=env, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.STDOUT)
    try:
        async with asyncio.timeout(TIMEOUT):
            assert proc.stdout is not None
            async for line in proc.stdout:
                print(f"   {line.decode(errors='replace').rstrip()}", flush=True)
            code = await proc.wait()
    except TimeoutError:
        proc.kill()
        await proc.wait()
        print(f"   training did not finish within {TIMEOUT}s; logs in {workdir}")
        return False
    if code != 0:
        print(f"   training failed (exit {code}); logs in {workdir}")
        return False
    provenance = json.loads((workdir / "out" / "provenance.json").read_text())
    rounds_done = provenance.get("rounds") or []
    print(f"   provenance: {len(rounds_done)} server rounds recorded with per-site update hashes; "
          f"outputs in {workdir / 'out'}")
    return True
