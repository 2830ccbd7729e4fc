"""The release part of the demo: anvil, the ModelRegistry, and the ModelRelease the round itself
created (``spec.release.create``) taken through the real hub pipeline (verified, signed,
anchored, promoted to Staging by a spec change as a GitOps commit would), then `fedcare verify`
on the trained model file as a stranger would.

Sandbox only: until the sandbox federation runs OpenBao, the release signer is an ed25519 key
generated in memory for this run (``SandboxSigner``; production signs with the Vault transit
key, which never leaves Vault: with ``signer=None`` and a hub context that has a Vault client,
the hub uses ``HubTransitSigner``). The sending key is anvil's public first dev key passed
through an environment variable (a key reference).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
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
from .anvil import DEV_KEY, INSTALL_HINT, anvil_binary, run_anvil

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


def release_config(rpc_url: str, chain_id: int, *, sandbox_signer: bool = True) -> ReleaseConfig:
    """The hub's chain configuration for the sandbox chain. ``sandbox_signer=False``: no signer
    here, so a hub context with a Vault client signs with the transit key (HubTransitSigner)."""
    os.environ[KEY_VAR] = DEV_KEY
    return ReleaseConfig(signer=SandboxSigner() if sandbox_signer else None, key_ref=EnvKeyRef(KEY_VAR), rpc_url=rpc_url,
                         chain_id=chain_id, confirmations=1, retry_delay=1.0, error_delay=2.0,
                         receipt_timeout=20.0, poll_interval=0.1)


async def deploy(cfg: ReleaseConfig) -> str:
    assert cfg.chain_id is not None
    async with ChainClient(ChainSettings(cfg.rpc_url, cfg.chain_id, confirmations=1, poll_interval=0.1),
                           cfg.key_ref) as client:
        address, _ = await client.deploy()
    cfg.contract_address = address
    return address


def _say(text: str) -> None:
    print(f"\n== {text}", flush=True)


async def start_chain(stack: contextlib.ExitStack, *, sandbox_signer: bool = True) -> ReleaseConfig | None:
    """anvil (stopped when ``stack`` closes) with a freshly deployed ModelRegistry, and the hub's
    ReleaseConfig for it; None (said aloud) when anvil is not installed."""
    if not available():
        _say(f"Release skipped: anvil is not installed ({INSTALL_HINT})")
        return None
    node = await asyncio.to_thread(stack.enter_context, run_anvil(block_time=None))
    cfg = release_config(node.url, node.chain_id, sandbox_signer=sandbox_signer)
    address = await deploy(cfg)
    _say(f"Local chain: anvil at {node.url} (chain id {node.chain_id}); ModelRegistry deployed at {address} "
         "(what `fedcare chain deploy` does)")
    return cfg


def _cond(obj: dict[str, Any] | None, ctype: str) -> dict[str, Any]:
    return next((c for c in ((obj or {}).get("status") or {}).get("conditions", []) if c["type"] == ctype), {})


async def _wait(api: Kube, ref: Ref, done: Any, timeout: float) -> dict[str, Any] | None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    obj = None
    while loop.time() < deadline:
        obj = await api.get_or_none(ref)
        if done(obj):
            return obj
        await asyncio.sleep(0.2)
    return None


async def release_round_model(api: Kube, cfg: ReleaseConfig, name: str, model: pathlib.Path,
                              namespace: str = "default", timeout: float = 120.0) -> bool:
    """The round's ModelRelease ``name`` anchored by the hub, promoted to Staging, then checked
    with `fedcare verify` on ``model``. True when every step passed."""
    ref = Ref(API_VERSION, "modelreleases", namespace, name)
    _say(f"ModelRelease {name} (created by the round): the hub resolves its pvc:// artifact, checks the "
         "sha256 and provenance, signs the release digest and anchors it on chain")
    obj = await _wait(api, ref, lambda o: _cond(o, "Anchored").get("status") == "True", timeout)
    if obj is None:
        last = await api.get_or_none(ref)
        ready = _cond(last, "Ready")
        _say(f"the release was not anchored within {timeout:.0f}s ({ready.get('reason')}: "
             f"{ready.get('message', '')[:300]})")
        return False
    st = obj["status"]
    print(f"   Verified={_cond(obj, 'Verified').get('status')} Signed={_cond(obj, 'Signed').get('status')} "
          f"({st.get('signature', {}).get('keyId')}) Anchored={_cond(obj, 'Anchored').get('status')}")
    print(f"   phase={st.get('phase')} tx={st['anchor']['txHash']} block={st['anchor']['blockNumber']} "
          f"provenanceRoot={st.get('provenanceRoot', '')[:16]}…")
    _say("Promoting it to Staging by changing spec.stage (what a GitOps commit does)")
    await api.patch(ref, {"spec": {"stage": "Staging"}})
    obj = await _wait(api, ref, lambda o: ((o or {}).get("status") or {}).get("stage") == "Staging"
                      and _cond(o, "Promoted").get("status") == "True", 60.0)
    if obj is None:
        _say("the promotion to Staging did not take effect in time")
        return False
    print(f"   stage={obj['status']['stage']} history="
          f"{' → '.join(h['stage'] for h in obj['status'].get('stageHistory', []))}")
    _say(f"Anyone can now check it: fedcare verify {model} --rpc {cfg.rpc_url} --contract {cfg.contract_address}")
    from ..cli import main as cli_main
    code = await asyncio.to_thread(cli_main, ["verify", str(model), "--rpc", cfg.rpc_url,
                                              "--contract", cfg.contract_address])
    print(f"   fedcare verify exit status {code}")
    return code == 0
