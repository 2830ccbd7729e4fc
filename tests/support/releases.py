"""Fixture material for the release pipeline: a local ed25519 signer, model files with provenance."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import pathlib
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fedcare.api.resources import API_VERSION
from fedcare.integrations.signing import Signature


class LocalSigner:
    """Implements ReleaseSigner with an in-memory ed25519 key (the Vault transit signer's stand-in in tests)."""

    def __init__(self, key_id: str = "test:ed25519:v1") -> None:
        self._key = Ed25519PrivateKey.generate()
        self.key_id = key_id
        self.signed: list[bytes] = []

    def sign(self, message: bytes) -> Signature:
        self.signed.append(message)
        return Signature(self.key_id, "ed25519", base64.b64encode(self._key.sign(message)).decode())

    def public_key_pem(self, key_id: str) -> str:
        assert key_id == self.key_id, key_id
        return self._key.public_key().public_bytes(serialization.Encoding.PEM,
                                                   serialization.PublicFormat.SubjectPublicKeyInfo).decode()


def h(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def make_model(folder: pathlib.Path, *, sites: tuple[str, ...] = ("rouen", "lyon", "lille"), rounds: int = 2,
               size: int = 4096, seed: bytes = b"") -> tuple[pathlib.Path, str]:
    """model.safetensors (random bytes) and its provenance.json in ``folder``; returns (path, 'sha256:...')."""
    folder.mkdir(parents=True, exist_ok=True)
    model = (seed or os.urandom(16)) + os.urandom(size)
    path = folder / "model.safetensors"
    path.write_bytes(model)
    entries: list[dict[str, Any]] = [{"round": 0, "global_model_sha256": h(b"initial" + model[:16])}]
    for rnd in range(1, rounds + 1):
        entries.append({
            "round": rnd,
            "sites": {s: {"node_id": str(i), "status": "ok", "num_examples": 10,
                          "update_sha256": h(f"{s}-{rnd}".encode() + model[:16])} for i, s in enumerate(sites)},
            "global_model_sha256": h(model) if rnd == rounds else h(f"global-{rnd}".encode() + model[:16]),
        })
    doc = {"format": "fedcare-provenance/v1", "status": "completed", "run_id": "1", "rounds": entries}
    (folder / "provenance.json").write_text(json.dumps(doc, indent=1))
    return path, "sha256:" + h(model)


def release(name: str, path: pathlib.Path, digest: str, *, anchor: tuple[int, str, int] | None = None,
            round_ref: tuple[str, str] | None = None, stage: str = "Candidate", model_name: str = "ultrasound-cnn",
            version: str = "1.0.0", participants: list[str] | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {"modelName": model_name, "version": version,
                            "artifact": {"storageUri": path.as_uri(), "digest": digest}, "stage": stage}
    if anchor:
        spec["anchor"] = {"chainId": anchor[0], "contractAddress": anchor[1], "requiredConfirmations": anchor[2]}
    if round_ref or participants:
        spec["provenance"] = {}
        if round_ref:
            spec["provenance"]["federatedRoundRef"] = {"namespace": round_ref[0], "name": round_ref[1]}
        if participants:
            spec["provenance"]["participants"] = participants
    return {"apiVersion": API_VERSION, "kind": "ModelRelease",
            "metadata": {"name": name, "namespace": "default"}, "spec": spec}
