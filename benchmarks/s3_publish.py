"""The artifact store's S3 option: what copying a round's result to S3 costs the hub.

    python benchmarks/s3_publish.py [--mib 20 100] [--repeat 3] [--quick]

In one run, on one machine: (a) baseline, what the hub does with the PVC alone: hash the
result folder's model (``round_progress.read_result``) plus a local copy of the folder;
(b) ``S3ResultStore.publish`` to a real S3 server (S3Proxy on loopback, filesystem backend):
upload every file, read each object back and hash it; (c) the same publish again, as a
restarted hub does (stat + read-back hash, nothing sent). Prints the median of each and the
ratios (b)/(a), (c)/(a). The loopback server makes this the client's and the protocol's cost,
not a network's.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import pathlib
import shutil
import statistics
import sys
import tempfile
import time

from fedcare.hub import round_progress as progress
from fedcare.hub.artifact_upload import S3ResultStore
from fedcare.sandbox.s3_setup import missing, s3_server


def folder_of(root: pathlib.Path, mib: int) -> pathlib.Path:
    folder = root / "store" / "default" / f"r{mib}-1a2b3c4d" / "attempt-1"
    folder.mkdir(parents=True)
    (folder / "model.safetensors").write_bytes(os.urandom(mib << 20))
    (folder / "provenance.json").write_text('{"status": "completed", "rounds": []}')
    (folder / "model-card.json").write_text("{}")
    return folder


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mib", type=int, nargs="+", default=[20, 100])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="5 MiB, one repeat")
    args = ap.parse_args()
    if args.quick:
        args.mib, args.repeat = [5], 1
    why = missing()
    if why:
        print(f"s3_publish: skipped: {why}")
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        root = pathlib.Path(tmp)
        with s3_server(root / "s3") as srv:
            srv.make_bucket("bench")
            print(f"{'model':>8} {'(a) hash+copy':>14} {'(b) publish':>12} {'(c) again':>10} {'b/a':>6} {'c/a':>6}")
            for mib in args.mib:
                folder = folder_of(root, mib)
                rel = folder.relative_to(root / "store").as_posix()
                base, first, again = [], [], []
                for i in range(args.repeat):
                    began = time.perf_counter()
                    result = progress.read_result(folder, "fedcare-artifacts", str(root / "store"))
                    shutil.copytree(folder, root / f"copy-{mib}-{i}")
                    base.append(time.perf_counter() - began)
                    store = S3ResultStore(srv.store(), "bench", f"run-{i}")
                    began = time.perf_counter()
                    _, sent = asyncio.run(store.publish(folder, rel, result))
                    first.append(time.perf_counter() - began)
                    began = time.perf_counter()
                    _, resent = asyncio.run(store.publish(folder, rel, result))
                    again.append(time.perf_counter() - began)
                    assert sent == 3 and resent == 0, (sent, resent)
                a, b, c = (statistics.median(x) for x in (base, first, again))
                print(f"{mib:>5} MiB {a * 1000:>11.0f} ms {b * 1000:>9.0f} ms {c * 1000:>7.0f} ms {b / a:>5.1f}x "
                      f"{c / a:>5.1f}x", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
