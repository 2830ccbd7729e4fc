"""Vault through fedcare's client, against a real OpenBao dev server started here.

    python benchmarks/vault.py [--quick]

1. KV v2 read latency p50/p99: fedcare's VaultClient (cache bypassed: ``fresh=True``, so each
   read is a request) against a raw httpx GET of the same path on the same server, same run,
   interleaved in blocks so machine load hits both alike. Target: ratio ≤ 1.5x.
2. Cached reads (what a round costs after the first read), same metric.
3. Transit ed25519 signatures/s through TransitSigner against raw httpx POSTs to the same key.
4. Vault reads during one round's access pattern, per site: the agent reads its hub credential
   at every heartbeat and its SuperNode key at every pod start, the hub reads each site's public
   key when registering SuperNodes. Target: at most one read per secret per site.
"""

from __future__ import annotations

import argparse
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
    ap.add_argument("--sites", type=int, default=20)
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

            # One round's access pattern, per site (fresh clients: nothing cached beforehand).
            sites = [f"site{i}" for i in range(args.sites)]
            for s in sites:
                client.write(f"sites/{s}/hub-credential", {"token": "t"}, ttl=600)
                client.write(f"sites/{s}/supernode", {"private_key": "k"}, ttl=600)
                client.write(f"sites/{s}/supernode-public", {"public_key": "p"}, ttl=600)
            hub = v.VaultClient(client.settings)
            agents = {s: v.VaultClient(client.settings, site=s) for s in sites}
            heartbeats, pods = 30, 3          # a 5-minute round at 10 s heartbeats; 3 pod starts
            for s, agent in agents.items():
                for _ in range(heartbeats):
                    agent.read(f"sites/{s}/hub-credential")
                for _ in range(pods):
                    agent.read(f"sites/{s}/supernode")
            for _ in range(2):                # registration, then a re-check at round start
                for s in sites:
                    hub.read(f"sites/{s}/supernode-public")
            served = sum(a.stats["reads"] for a in agents.values()) + hub.stats["reads"]
            asked = sum(a.stats["reads"] + a.stats["cache_hits"] for a in agents.values()) + \
                hub.stats["reads"] + hub.stats["cache_hits"]
            secrets = 3 * len(sites)
            print(f"one round, {len(sites)} sites, 3 secrets each: {asked} reads asked, {served} served by Vault "
                  f"= {served / secrets:.2f} per secret per site (target <= 1)")
        finally:
            server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
