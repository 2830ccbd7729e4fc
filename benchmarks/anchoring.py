"""Anchoring speed on a real anvil, and `fedcare verify` against sha256sum (docs/performance.md).

1. Latency: one release at a time through fedcare's ChainClient.anchor (look-up, gas estimate,
   EIP-1559 fees, nonce, send, receipt) versus a raw JSON-RPC client (aiohttp) sending the same
   anchor() transaction (signed with eth_account, fixed gas) and polling its receipt, on the same
   anvil (automine) in the same run. Target: fedcare ≤ 2 × raw.
2. Throughput: N releases in flight at once (asyncio.gather) through one ChainClient, anvil with
   interval mining (--block-time 1), one transaction per release and batched (anchorBatch, each
   release keeps its own record and event). Target: ≥ 50 anchored releases/s.
3. Verify: `fedcare verify` of a 100 MB artifact (hash, signature, chain record, proofs) versus
   `sha256sum` of the same file; in-process (the check itself) and as a fresh CLI process.
   Target: ≤ 1.2 × sha256sum.

    python benchmarks/anchoring.py [--quick] [--part latency|throughput|verify]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time

HERE = pathlib.Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent / "operator"), str(HERE.parent)]

import aiohttp  # noqa: E402
from eth_account import Account  # noqa: E402

from fedcare.integrations.chain import ABI, ChainClient, ChainSettings  # noqa: E402
from fedcare.integrations.keyref import EnvKeyRef  # noqa: E402
from fedcare.sandbox.anvil import DEV_KEY, DEV_KEY_2, run_anvil  # noqa: E402

KEY_VAR = "FEDCARE_BENCH_CHAIN_KEY"


def h(i: int, salt: int) -> str:
    return f"{salt:08x}{i:056x}"


async def deploy(url: str, chain_id: int) -> str:
    async with ChainClient(ChainSettings(url, chain_id, confirmations=1, poll_interval=0.01),
                           EnvKeyRef(KEY_VAR)) as c:
        address, _ = await c.deploy()
    async with ChainClient(ChainSettings(url, chain_id, address, confirmations=1, poll_interval=0.01),
                           EnvKeyRef(KEY_VAR)) as c:
        await c.set_registrar(Account.from_key(DEV_KEY_2).address)   # the raw client's account
    return address


async def raw_anchor_latency(url: str, chain_id: int, contract: str, n: int) -> list[float]:
    """A minimal client: JSON-RPC over aiohttp, eth_account signing, fixed gas and fees."""
    from web3 import Web3

    acct = Account.from_key(DEV_KEY_2)
    c = Web3().eth.contract(address=contract, abi=ABI)
    ids = iter(range(10**9))

    async def call(session, method, *params):
        async with session.post(url, json={"jsonrpc": "2.0", "id": next(ids), "method": method,
                                           "params": list(params)}) as resp:
            body = await resp.json()
        if "error" in body:
            raise RuntimeError(body["error"])
        return body["result"]

    out = []
    async with aiohttp.ClientSession() as s:
        nonce = int(await call(s, "eth_getTransactionCount", acct.address, "pending"), 16)
        for i in range(n):
            t0, c0 = time.perf_counter(), time.process_time()
            data = c.encode_abi("anchor", args=[bytes.fromhex(h(i, 2)), b"\x01" * 32, b"\x02" * 32, "u"])
            signed = Account.sign_transaction({"type": 2, "chainId": chain_id, "nonce": nonce, "to": contract,
                                               "data": data, "value": 0, "gas": 200_000,
                                               "maxFeePerGas": 10**10, "maxPriorityFeePerGas": 10**9},
                                              DEV_KEY_2)
            tx = await call(s, "eth_sendRawTransaction", "0x" + bytes(signed.raw_transaction).hex())
            while await call(s, "eth_getTransactionReceipt", tx) is None:
                await asyncio.sleep(0.005)
            out.append((time.perf_counter() - t0, time.process_time() - c0))
            nonce += 1
    return out


async def fedcare_anchor_latency(url: str, chain_id: int, contract: str, n: int) -> list[float]:
    out = []
    async with ChainClient(ChainSettings(url, chain_id, contract, confirmations=1, poll_interval=0.005),
                           EnvKeyRef(KEY_VAR)) as c:
        await c.anchor(h(10**6, 3), "01" * 32, "02" * 32, "warm-up")
        for i in range(n):
            t0, c0 = time.perf_counter(), time.process_time()
            await c.anchor(h(i, 1), "01" * 32, "02" * 32, "u")
            out.append((time.perf_counter() - t0, time.process_time() - c0))
    return out


async def throughput(url: str, chain_id: int, contract: str, n: int, batch: int, salt: int) -> tuple[float, int]:
    cfg = ChainSettings(url, chain_id, contract, confirmations=1, poll_interval=0.25, receipt_timeout=600,
                        gas_cap=12_000_000, batch_window=0.2 if batch > 1 else 0.0, batch_max=max(batch, 1))
    async with ChainClient(cfg, EnvKeyRef(KEY_VAR)) as c:
        t0 = time.perf_counter()
        results = await asyncio.gather(*(c.anchor(h(i, salt), "01" * 32, "02" * 32, f"u{i}") for i in range(n)))
        wall = time.perf_counter() - t0
        blocks = len({r.block_number for r in results})
        calls = dict(c.calls.most_common(6))
    print(f"    JSON-RPC calls: {sum(c.calls.values())} for {n} releases {calls}", flush=True)
    return n / wall, blocks


def verify_timing(size_mb: int, repeats: int) -> dict[str, float]:
    """Anchor a 100 MB artifact for real, then time verify vs sha256sum on it (page cache warm)."""
    from tests.integration.test_verify_cli import publish
    from fedcare.release import verify as v

    folder = pathlib.Path(tempfile.mkdtemp(prefix="fedcare-bench-"))
    with run_anvil() as node:
        contract = asyncio.run(deploy(node.url, node.chain_id))
        path, _, _ = publish(node, contract, EnvKeyRef(KEY_VAR), folder / "m", size=size_mb << 20)
        subprocess.run(["sha256sum", str(path)], capture_output=True, check=True)     # warm the cache

        def best(fn) -> float:
            times = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                fn()
                times.append(time.perf_counter() - t0)
            return min(times)

        def inproc() -> None:
            inputs, rows = v.inputs_from_files(path, rpc=node.url, contract=contract)
            rows += asyncio.run(v.check(inputs))
            assert all(r.ok is not False for r in rows), rows

        env = {**os.environ, "PYTHONPATH": f"{HERE.parent / 'operator'}:{os.environ.get('PYTHONPATH', '')}"}

        def cli() -> None:
            done = subprocess.run([sys.executable, "-m", "fedcare.cli", "verify", str(path), "--rpc", node.url,
                                   "--contract", contract], capture_output=True, env=env)
            assert done.returncode == 0, done.stdout[-2000:]

        res = {"sha256sum": best(lambda: subprocess.run(["sha256sum", str(path)], capture_output=True,
                                                         check=True)),
               "verify_inprocess": best(inproc), "verify_cli": best(cli),
               "python_startup": best(lambda: subprocess.run([sys.executable, "-c", "import fedcare.cli"],
                                                            env=env, check=True))}
    for f in folder.rglob("*"):
        if f.is_file():
            f.unlink()
    return res


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--part", choices=("latency", "throughput", "verify"), action="append",
                    help="run only this part (repeatable; default: all)")
    args = ap.parse_args()
    parts = set(args.part or ("latency", "throughput", "verify"))
    os.environ[KEY_VAR] = DEV_KEY
    n_lat = 30 if args.quick else 100
    n_tp = 200 if args.quick else 500
    size = 20 if args.quick else 100

    if "latency" in parts:
        latency(n_lat)
    if "throughput" in parts:
        print(f"throughput (anvil --block-time 1, {n_tp} releases in flight, one sending account)", flush=True)
        for batch in (1, 50):
            with run_anvil(block_time=1) as node:
                contract = asyncio.run(deploy(node.url, node.chain_id))
                rate, blocks = asyncio.run(throughput(node.url, node.chain_id, contract, n_tp, batch, 4 + batch))
            how = "one transaction per release" if batch == 1 else f"batches of up to {batch} (anchorBatch)"
            print(f"  {how:40} {rate:7.1f} anchored releases/s over {blocks} blocks   (target >= 50/s)",
                  flush=True)
    if "verify" in parts:
        t = verify_timing(size, 2 if args.quick else 3)
        print(f"verify of a {size} MB artifact (best of runs, page cache warm)")
        print(f"  sha256sum              {t['sha256sum'] * 1e3:8.1f} ms")
        print(f"  fedcare verify (check) {t['verify_inprocess'] * 1e3:8.1f} ms   ratio "
              f"{t['verify_inprocess'] / t['sha256sum']:.2f}x   (target <= 1.2x)")
        print(f"  fedcare verify (CLI)   {t['verify_cli'] * 1e3:8.1f} ms   ratio "
              f"{t['verify_cli'] / t['sha256sum']:.2f}x   (of which Python start + imports "
              f"{t['python_startup'] * 1e3:.0f} ms)")
    return 0


def latency(n_lat: int) -> None:
    with run_anvil() as node:
        contract = asyncio.run(deploy(node.url, node.chain_id))
        raw = asyncio.run(raw_anchor_latency(node.url, node.chain_id, contract, n_lat))
        ours = asyncio.run(fedcare_anchor_latency(node.url, node.chain_id, contract, n_lat))

    def stats(xs):
        wall = [x[0] * 1e3 for x in xs]
        cpu = [x[1] * 1e3 for x in xs]
        return statistics.median(wall), statistics.quantiles(wall, n=20)[18], statistics.median(cpu)

    r_med, r_p95, r_cpu = stats(raw)
    o_med, o_p95, o_cpu = stats(ours)
    print(f"latency (anvil automine, {n_lat} sequential releases; cpu = this process's CPU per release)")
    print(f"  raw JSON-RPC   median {r_med:7.2f} ms   p95 {r_p95:7.2f} ms   cpu {r_cpu:6.2f} ms")
    print(f"  fedcare client median {o_med:7.2f} ms   p95 {o_p95:7.2f} ms   cpu {o_cpu:6.2f} ms")
    print(f"  ratio fedcare/raw (median) {o_med / r_med:.2f}x   (target <= 2x)", flush=True)


if __name__ == "__main__":
    sys.exit(main())
