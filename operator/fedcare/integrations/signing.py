"""The release-signing interface shared by the Vault transit client and the release pipeline.

The Vault issue implements it (`integrations/vault_transit.py`: a transit key, ed25519, the
private key never leaves Vault); the ModelRelease pipeline and `fedcare verify` consume it.
Verification needs only the exported public key, so an auditor needs no Vault access.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Protocol

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import load_pem_public_key


@dataclass(frozen=True)
class Signature:
    """A detached signature over a message. ``signature`` is the raw ed25519 signature, base64."""

    key_id: str        # e.g. "vault:transit/fedcare-release:v1" (mount, key name, key version)
    algorithm: str     # "ed25519"
    signature: str


class SignerUnavailable(RuntimeError):
    """The signer cannot sign yet for a reason an operator must fix (a missing key or Vault right).

    ``reason`` is a CamelCase condition reason; the message names what is missing and how to grant
    it, and never holds key material or tokens."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class ReleaseSigner(Protocol):
    """Signs release digests. Implementations must never log or return private key material."""

    def sign(self, message: bytes) -> Signature: ...

    def public_key_pem(self, key_id: str) -> str:
        """PEM SubjectPublicKeyInfo of the key version named by ``key_id``."""
        ...


def verify(public_key_pem: str, message: bytes, sig: Signature) -> bool:
    """True if ``sig`` is a valid ed25519 signature of ``message`` by ``public_key_pem``."""
    if sig.algorithm != "ed25519":
        return False
    key = load_pem_public_key(public_key_pem.encode())
    if not isinstance(key, Ed25519PublicKey):
        return False
    try:
        key.verify(base64.b64decode(sig.signature, validate=True), message)
    except (InvalidSignature, ValueError):
        return False
    return True
