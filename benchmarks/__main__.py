"""`make bench`: every benchmark in its quick form, one after the other.

The full forms (the numbers in docs/performance.md) take longer:
    python benchmarks/hub_scale.py            # 1,000 sites, ~5 min (--metrics-compare: metrics off vs on)
    python benchmarks/metrics_scrape.py       # the hub's /metrics with 1,000 sites, ~1 min
    python benchmarks/aggregation.py          # N = 3, 8, 18 x 1M, 25M, 100M params, ~2 min, ~10 GB RAM
    python benchmarks/train_throughput.py     # CPU (and CUDA when present)
    python benchmarks/anchoring.py            # chain anchoring on anvil and fedcare verify, ~3 min
    python benchmarks/vault.py                # fedcare's Vault client against a real OpenBao, ~1 min
    python benchmarks/kubelet_pods.py         # sandbox process kubelet: pod vs direct process, ~1 min
    python benchmarks/round_overhead.py       # a round through fedcare vs bare Flower, 3 sites x 3 rounds, ~10 min
    python benchmarks/round_pods.py           # FederatedRound created -> 18 SuperNode pods created, ~1 min
    python benchmarks/s3_publish.py           # a round result copied to S3 (S3Proxy) vs hash + local copy, ~1 min
"""

import pathlib
import subprocess
import sys

HERE = pathlib.Path(__file__).resolve().parent
QUICK = [["hub_scale.py", "--quick"], ["metrics_scrape.py", "--quick"], ["aggregation.py", "--quick"],
         ["train_throughput.py", "--quick"], ["anchoring.py", "--quick"], ["vault.py", "--quick"],
         ["kubelet_pods.py", "--quick"], ["round_overhead.py", "--quick"], ["s3_publish.py", "--quick"]]

if __name__ == "__main__":
    failed = 0
    for script, *args in QUICK:
        print(f"\n### {script} {' '.join(args)}", flush=True)
        failed += subprocess.call([sys.executable, str(HERE / script), *args]) != 0
    sys.exit(1 if failed else 0)
