"""The release part of the demo: anvil, the ModelRegistry, a ModelRelease of the trained model
anchored by the real hub pipeline, and `fedcare verify` on the files.

Sandbox only: the release signer here is an ed25519 key generated in memory for this run
(production signs with the Vault transit key, which never leaves Vault), and the sending key is
anvil's public first dev key passed through an environment variable (a key reference).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import pathlib
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ..api.resources import API_VERSION
from ..hub.release_service import ReleaseConfig
from ..integrations.chain import ChainClient, ChainSettings
from ..integrations.keyref import EnvKeyRef
from ..integrations.kube import Kube, Ref
from ..integrations.signing import Signature
from .anvil import DEV_KEY, anvil_binary

KEY_VAR = "FEDCARE_SANDBOX_CHAIN_KEY"


class SandboxSigner:
    """A ReleaseSigner with an in-memory ed25519 key (sandbox only)."""

    def __init__(self) -> None:
        self._key = Ed25519PrivateKey.generate()
        self.key_id = "sandbox:ed25519:v1"

    def sign(self, message: bytes) -> Signature:
        return Signature(self.key_id, "ed25519", base64.b64encode(self._key.sign(message)).decode())

    def public_key_pem(self, key_id: str) -> str:
        return self._key.public_key().public_bytes(serialization.Encoding.PEM,
                                                   serialization.PublicFormat.SubjectPublicKeyInfo).decode()


def available() -> bool:
    return anvil_binary() is not None


def release_config(rpc_url: str, chain_id: int) -> ReleaseConfig:
    os.environ[KEY_VAR] = DEV_KEY
    return ReleaseConfig(signer=SandboxSigner(), key_ref=EnvKeyRef(KEY_VAR), rpc_url=rpc_url, chain_id=chain_id,
                         confirmations=1, retry_delay=1.0, error_delay=2.0, receipt_timeout=20.0, poll_interval=0.1)


async def deploy(cfg: ReleaseConfig) -> str:
    assert cfg.chain_id is not None
    async with ChainClient(ChainSettings(cfg.rpc_url, cfg.chain_id, confirmations=1, poll_interval=0.1),
                           cfg.key_ref) as client:
        address, _ = await client.deploy()
    cfg.contract_address = address
    return address


async def release_model(api: Kube, cfg: ReleaseConfig, out: pathlib.Path, say: Any) -> dict[str, Any] | None:
    model = out / "model.safetensors"
    digest = "sha256:" + hashlib.sha256(model.read_bytes()).hexdigest()
    body = {"apiVersion": API_VERSION, "kind": "ModelRelease",
            "metadata": {"name": "ultrasound-cnn-sandbox", "namespace": "default"},
            "spec": {"modelName": "ultrasound-cnn", "version": "0.1.0-sandbox",
                     "artifact": {"storageUri": model.resolve().as_uri(), "digest": digest},
                     "anchor": {"chainId": cfg.chain_id, "contractAddress": cfg.contract_address,
                                "requiredConfirmations": 1},
                     "stage": "Staging"}}
    ref = Ref(API_VERSION, "modelreleases", "default", body["metadata"]["name"])
    await api.create(Ref(API_VERSION, "modelreleases", "default"), body)
    for _ in range(600):
        obj = await api.get_or_none(ref)
        conds = {c["type"]: c for c in (obj or {}).get("status", {}).get("conditions", [])}
        if conds.get("Promoted", {}).get("status") == "True":
            return obj
        await asyncio.sleep(0.2)
    say("the release did not reach Anchored in time")
    return None


def _say(text: str) -> None:
    print(f"\n== {text}", flush=True)


async def release_step(api: Kube, cfg: ReleaseConfig | None, out: pathlib.Path) -> None:
    """Deploy the registry on the local chain, let the hub release the model in ``out`` (verify,
    sign, anchor, promote to Staging), then check it as a stranger would with `fedcare verify`."""
    if cfg is None:
        _say("Release skipped: anvil is not installed (make contracts-deps)")
        return
    address = await deploy(cfg)
    _say(f"Local chain: anvil at {cfg.rpc_url}; ModelRegistry deployed at {address} (fedcare chain deploy)")
    _say("Releasing the trained model: the hub verifies its sha256 and provenance, signs the release digest, "
         "anchors it on chain and promotes it to Staging")
    obj = await release_model(api, cfg, out, _say)
    if obj is None:
        return
    st = obj["status"]
    print(f"   phase={st.get('phase')} stage={st.get('stage')} tx={st['anchor']['txHash']} "
          f"block={st['anchor']['blockNumber']} provenanceRoot={st.get('provenanceRoot', '')[:16]}…")
    _say(f"Anyone can now check it: fedcare verify {out / 'model.safetensors'} --rpc {cfg.rpc_url} "
         f"--contract {address}")
    from ..cli import main as cli_main
    code = await asyncio.to_thread(cli_main, ["verify", str(out / "model.safetensors"), "--rpc", cfg.rpc_url,
                                              "--contract", address])
    print(f"   fedcare verify exit status {code}")
