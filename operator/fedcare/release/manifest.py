"""release.json: what a stranger needs beside the artifact to verify it ("fedcare-release/v1").

Written by the hub next to a file:// artifact after signing (and again after anchoring);
``fedcare verify`` reads it. It holds no secret: the signature, the public key and the chain
coordinates are all public.
"""

from __future__ import annotations

import json
from typing import Any

from ..integrations.signing import Signature
from .digest import FORMAT as DIGEST_FORMAT
from .digest import ReleaseDigest

FORMAT = "fedcare-release/v1"


def build(namespace: str, name: str, digest: ReleaseDigest, sig: Signature, public_key_pem: str,
          chain: dict[str, Any] | None = None) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "format": FORMAT, "namespace": namespace, "name": name, "modelName": digest.model_name,
        "version": digest.version, "modelSha256": digest.model_sha256, "provenanceRoot": digest.provenance_root,
        "roundId": digest.round_id, "digestFormat": DIGEST_FORMAT,
        "signature": {"keyId": sig.key_id, "algorithm": sig.algorithm, "signature": sig.signature},
        "publicKeyPem": public_key_pem,
    }
    if chain:
        doc["chain"] = chain
    return doc


def dumps(doc: dict[str, Any]) -> bytes:
    return (json.dumps(doc, indent=1, sort_keys=True) + "\n").encode()


def signature_of(doc: dict[str, Any]) -> Signature:
    s = doc.get("signature") or {}
    return Signature(key_id=str(s.get("keyId", "")), algorithm=str(s.get("algorithm", "")),
                     signature=str(s.get("signature", "")))
