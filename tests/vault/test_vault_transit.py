"""Transit signing (ReleaseSigner) against a real OpenBao: signatures verify offline."""

from __future__ import annotations

import pytest

from fedcare.integrations import signing
from fedcare.integrations import vault as v
from fedcare.integrations.vault_transit import TransitSigner


@pytest.fixture()
def signer(root_client: v.VaultClient, unique: str) -> TransitSigner:
    s = TransitSigner(root_client, key=f"fedcare-release-{unique}")
    s.ensure_key()
    return s


def test_signature_verifies_offline_with_the_exported_public_key(signer: TransitSigner) -> None:
    digest = b"sha256:" + bytes(range(32))
    sig = signer.sign(digest)
    assert sig.algorithm == "ed25519" and sig.key_id == signer.key_id(1)
    pem = signer.public_key_pem(sig.key_id)
    assert pem.startswith("-----BEGIN PUBLIC KEY-----")
    assert signing.verify(pem, digest, sig)
    assert signer.verify_in_vault(digest, sig)
    assert not signing.verify(pem, digest + b"x", sig)          # another message
    tampered = signing.Signature(sig.key_id, sig.algorithm, sig.signature[:-4] + "AAA=")
    assert not signing.verify(pem, digest, tampered)


def test_default_key_name_and_idempotent_creation(root_client: v.VaultClient) -> None:
    s = TransitSigner(root_client)
    s.ensure_key()
    s.ensure_key()
    info = root_client.hvac.secrets.transit.read_key("fedcare-release")["data"]
    assert info["type"] == "ed25519" and info["exportable"] is False
    assert signing.verify(s.public_key_pem(s.key_id(1)), b"m", s.sign(b"m"))


def test_rotation_keeps_old_signatures_verifiable(signer: TransitSigner, root_client: v.VaultClient) -> None:
    old = signer.sign(b"release-1")
    root_client.hvac.secrets.transit.rotate_key(signer.key)
    new = signer.sign(b"release-2")
    assert new.key_id.endswith(":v2")
    assert signing.verify(signer.public_key_pem(old.key_id), b"release-1", old)
    assert signing.verify(signer.public_key_pem(new.key_id), b"release-2", new)
    assert not signing.verify(signer.public_key_pem(new.key_id), b"release-1", old)


def test_private_key_cannot_be_exported(signer: TransitSigner, root_client: v.VaultClient) -> None:
    with pytest.raises(v.VaultError):
        signer.vault.call(lambda c: c.secrets.transit.export_key(signer.key, key_type="signing-key"),
                          f"transit/export/signing-key/{signer.key}")


def test_wrong_key_type_is_refused(root_client: v.VaultClient, unique: str) -> None:
    root_client.hvac.secrets.transit.create_key(f"rsa-{unique}", key_type="rsa-2048")
    with pytest.raises(v.VaultError, match="not ed25519"):
        TransitSigner(root_client, key=f"rsa-{unique}").ensure_key()


def test_unknown_key_id_is_refused(signer: TransitSigner) -> None:
    with pytest.raises(v.VaultInvalidRequest):
        signer.public_key_pem("vault:transit/other:v1")
    with pytest.raises(v.VaultNotFound):
        signer.public_key_pem(signer.key_id(9))
