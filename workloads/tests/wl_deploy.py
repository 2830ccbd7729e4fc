"""A real local Flower deployment for tests: flower-superlink + N flower-supernode
processes on loopback ports picked at runtime, runs submitted with `flwr run`.

Every process gets its own log file; `LocalDeployment.logs()` returns their
tails for assertion messages. `stop()` (also on context exit) terminates every
process it started, by pid, and kills what does not exit within 10 s.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def toml_node_config(cfg: dict) -> str:
    parts = []
    for k, v in cfg.items():
        parts.append(f'{k}="{v}"' if isinstance(v, str) else f"{k}={str(v).lower() if isinstance(v, bool) else v}")
    return " ".join(parts)


class LocalDeployment:
    def __init__(self, workdir: Path) -> None:
        self.workdir = Path(workdir)
        self.flwr_home = self.workdir / "flwr-home"
        self.flwr_home.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.procs: list[tuple[str, subprocess.Popen, Path]] = []
        self.env = {
            **os.environ,
            "FLWR_HOME": str(self.flwr_home),
            "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
            "OMP_NUM_THREADS": "1",
            "PYTHONUNBUFFERED": "1",
        }
        # The CLI reads SuperLink connections from $FLWR_HOME/config.toml.
        (self.flwr_home / "config.toml").write_text(
            f'[superlink]\ndefault = "local"\n\n[superlink.local]\naddress = "127.0.0.1:{self.port}"\ninsecure = true\n'
        )

    # -- processes ---------------------------------------------------------------
    def _spawn(self, name: str, args: list[str]) -> subprocess.Popen:
        log = self.workdir / f"{name}.log"
        fh = log.open("wb")
        proc = subprocess.Popen(
            args, cwd=self.workdir, env=self.env, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True
        )
        fh.close()
        self.procs.append((name, proc, log))
        return proc

    def start_superlink(self, timeout: float = 30.0) -> None:
        self._spawn(
            "superlink",
            [
                str(BIN / "flower-superlink"),
                "--insecure",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--disable-runtime-dependency-installation",
            ],
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                time.sleep(0.3)
            self._check_alive()
        raise TimeoutError(f"SuperLink not healthy after {timeout} s\n{self.logs()}")

    def start_supernode(self, name: str, node_config: dict) -> None:
        self._spawn(
            name,
            [
                str(BIN / "flower-supernode"),
                "--insecure",
                "--superlink",
                f"127.0.0.1:{self.port}",
                "--port",
                str(free_port()),
                "--node-config",
                toml_node_config(node_config),
            ],
        )

    def _check_alive(self) -> None:
        for name, proc, _ in self.procs:
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited with {proc.returncode}\n{self.logs()}")

    def stop(self) -> None:
        for _, proc, _ in reversed(self.procs):
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGTERM)  # its own session: the process and its children
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + 10
        for _, proc, _ in self.procs:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait(timeout=5)

    def __enter__(self) -> LocalDeployment:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def logs(self, tail: int = 4000) -> str:
        out = []
        for name, _, log in self.procs:
            text = log.read_text(errors="replace") if log.exists() else ""
            out.append(f"----- {name} -----\n{text[-tail:]}")
        return "\n".join(out)

    # -- flwr CLI ----------------------------------------------------------------
    def flwr(self, *args: str, timeout: float = 60.0) -> dict:
        res = subprocess.run(
            [str(BIN / "flwr"), *args, "--format", "json"],
            cwd=self.workdir,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        start = res.stdout.find("{")
        if res.returncode != 0 or start < 0:
            raise RuntimeError(f"flwr {' '.join(args)} failed (rc={res.returncode}): {res.stdout}\n{res.stderr}")
        return json.loads(res.stdout[start:])

    def submit(self, app_dir: Path, run_config: str) -> str:
        res = self.flwr("run", str(app_dir), "local", "-c", run_config, timeout=120)
        if not res.get("success"):
            raise RuntimeError(f"flwr run failed: {res}")
        return res["run-id"]

    def wait_finished(self, run_id: str, deadline_s: float) -> dict:
        deadline = time.monotonic() + deadline_s
        while True:
            runs = self.flwr("ls", "local", "--run-id", run_id)["runs"]
            run = runs[0] if runs else {}
            if str(run.get("status", "")).startswith("finished"):
                return run
            if time.monotonic() > deadline:
                try:
                    self.flwr("stop", run_id, "local")
                finally:
                    raise TimeoutError(f"run {run_id} not finished after {deadline_s} s: {run}\n{self.logs()}")
            self._check_alive()
            time.sleep(2.0)
