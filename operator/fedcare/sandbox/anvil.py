"""Run a real anvil node (npm @foundry-rs/anvil-linux-amd64, pinned in contracts/package.json).

Used by the tests, the benchmark and the sandbox demo: a free loopback port, a fresh chain,
stopped (and waited for) on exit. The first dev account's well-known key is public anvil test
material, never a real secret.
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import shutil
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass

REPO = pathlib.Path(__file__).resolve().parents[3]
INSTALL_HINT = "make contracts-deps   (runs: npm ci --prefix contracts)"
#: anvil's first deterministic dev account (public test key; funded with 10000 ETH on a fresh anvil).
DEV_KEY = "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80"
DEV_KEY_2 = "0x59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d"


def anvil_binary() -> pathlib.Path | None:
    env = os.environ.get("FEDCARE_ANVIL")
    candidates = [pathlib.Path(env)] if env else []
    candidates.append(REPO / "contracts" / "node_modules" / "@foundry-rs" / "anvil-linux-amd64" / "bin" / "anvil")
    for cand in candidates:
        if cand.is_file() and os.access(cand, os.X_OK):
            return cand
    found = shutil.which("anvil")
    return pathlib.Path(found) if found else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Anvil:
    url: str
    port: int
    chain_id: int
    process: subprocess.Popen

    def rpc(self, method: str, *params: object) -> object:
        body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": list(params)}).encode()
        req = urllib.request.Request(self.url, body, {"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=10) as resp:
            reply = json.loads(resp.read())
        if "error" in reply:
            raise RuntimeError(f"anvil {method}: {reply['error']}")
        return reply["result"]

    def mine(self, blocks: int = 1) -> None:
        self.rpc("anvil_mine", hex(blocks))

    def automine(self, on: bool) -> None:
        self.rpc("evm_setAutomine", on)


@contextlib.contextmanager
def run_anvil(*, chain_id: int = 31337, block_time: float | None = None, port: int | None = None,
              extra: list[str] | None = None) -> Iterator[Anvil]:
    binary = anvil_binary()
    if binary is None:
        raise FileNotFoundError(f"anvil is not installed; run `{INSTALL_HINT}`")
    port = port or free_port()
    cmd = [str(binary), "--host", "127.0.0.1", "--port", str(port), "--chain-id", str(chain_id), "--silent"]
    if block_time:
        cmd += ["--block-time", str(block_time)]
    cmd += extra or []
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    node = Anvil(f"http://127.0.0.1:{port}", port, chain_id, proc)
    try:
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"anvil exited ({proc.returncode}): {proc.stderr.read().decode()[-500:]}")
            try:
                node.rpc("eth_chainId")
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise TimeoutError("anvil did not answer within 30 s") from None
                time.sleep(0.05)
        yield node
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        if proc.stderr:
            proc.stderr.close()
