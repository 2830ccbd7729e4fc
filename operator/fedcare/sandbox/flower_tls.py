"""A real Flower deployment with TLS and SuperNode authentication: flower-superlink and
flower-supernode processes on loopback, material passed in by the caller (from Vault).
Used by the TLS tests and the sandbox demo's training step.

Processes run in their own sessions with their own log files; ``stop`` ends them by pid."""

from __future__ import annotations

import json
import os
import signal
import ssl
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from .openbao import free_port

BIN = Path(sys.executable).parent


class TLSDeployment:
    def __init__(self, workdir: Path) -> None:
        self.workdir = Path(workdir)
        self.flwr_home = self.workdir / "flwr-home"
        self.flwr_home.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.procs: list[tuple[str, subprocess.Popen, Path]] = []
        self.env = {**os.environ, "FLWR_HOME": str(self.flwr_home), "OMP_NUM_THREADS": "1",
                    "PYTHONUNBUFFERED": "1", "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def configure_cli(self, ca_file: Path) -> None:
        (self.flwr_home / "config.toml").write_text(
            f'[superlink]\ndefault = "tls"\n\n[superlink.tls]\naddress = "{self.address}"\n'
            f'root-certificates = "{ca_file}"\n')

    def spawn(self, name: str, args: list[str]) -> subprocess.Popen:
        log = self.workdir / f"{name}.log"
        with log.open("wb") as fh:
            proc = subprocess.Popen(args, cwd=self.workdir, env=self.env, stdout=fh, stderr=subprocess.STDOUT,
                                    start_new_session=True)
        self.procs.append((name, proc, log))
        return proc

    def start_superlink(self, tls_args: list[str], ca_file: Path, timeout: float = 60.0) -> None:
        (self.workdir / "state").mkdir(exist_ok=True)
        self.spawn("superlink", [str(BIN / "flower-superlink"), *tls_args, "--host", "127.0.0.1", "--port",
                                 str(self.port), "--database", str(self.workdir / "state" / "link.db"),
                                 "--disable-runtime-dependency-installation"])
        ctx = ssl.create_default_context(cafile=str(ca_file))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"https://127.0.0.1:{self.port}/health", timeout=2, context=ctx) as r:
                    if r.status == 200:
                        return
            except OSError:
                time.sleep(0.3)
            self.check_alive()
        raise TimeoutError(f"SuperLink not healthy over TLS after {timeout}s\n{self.logs()}")

    def start_supernode(self, name: str, args: list[str], node_config: str) -> subprocess.Popen:
        return self.spawn(name, [str(BIN / "flower-supernode"), "--superlink", self.address, *args,
                                 "--port", str(free_port()), "--node-config", node_config])

    def flwr(self, *args: str, timeout: float = 60.0) -> dict:
        res = subprocess.run([str(BIN / "flwr"), *args, "--format", "json"], cwd=self.workdir, env=self.env,
                             capture_output=True, text=True, timeout=timeout)
        start = res.stdout.find("{")
        if res.returncode != 0 or start < 0:
            raise RuntimeError(f"flwr {' '.join(args)} failed ({res.returncode}): {res.stdout}\n{res.stderr}")
        return json.loads(res.stdout[start:])

    def check_alive(self) -> None:
        for name, proc, _ in self.procs:
            if name == "superlink" and proc.poll() is not None:
                raise RuntimeError(f"{name} exited with {proc.returncode}\n{self.logs()}")

    def logs(self, tail: int = 3000) -> str:
        return "\n".join(f"----- {n} -----\n{log.read_text(errors='replace')[-tail:]}" for n, _, log in self.procs
                         if log.exists())

    def stop(self) -> None:
        for _, proc, _ in reversed(self.procs):
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        for _, proc, _ in self.procs:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait(timeout=5)

    def __enter__(self) -> "TLSDeployment":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
