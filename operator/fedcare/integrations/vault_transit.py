"""Release signing with Vault's transit engine: the :class:`~fedcare.integrations.signing.ReleaseSigner`
protocol over key ``fedcare-release`` (ed25519).

The private key is created inside Vault as non-exportable and never leaves it: ``sign`` sends
the message, Vault answers ``vault:v<N>:<base64 signature>``. ``public_key_pem`` exports the
public half of the named key version as PEM SubjectPublicKeyInfo, so
:func:`fedcare.integrations.signing.verify` needs no Vault access.

For ed25519, transit signs the input itself (no pre-hash; ``hash_algorithm`` does not apply),
which is exactly what ``signing.verify`` checks. Messages are release digests (small); Vault's
request limit (32 MiB by default) bounds them anyway.
"""

from __future__ import annotations

import base64
import re
import threading

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from .signing import Signature, SignerUnavailable
from .vault import VaultClient, VaultError, VaultForbidden, VaultInvalidRequest, VaultNotFound

KEY_NAME = "fedcare-release"
ALGORITHM = "ed25519"
_VAULT_SIG = re.compile(r"^vault:v(\d+):([A-Za-z0-9+/=]+)$")
_KEY_ID = re.compile(r"^vault:(?P<mount>[A-Za-z0-9_.-]+)/(?P<key>[A-Za-z0-9_.-]+):v(?P<version>\d+)$")


class TransitSigner:
    """ReleaseSigner over Vault transit. ``ensure_key`` once (idempotent) before the first sign."""

    def __init__(self, vault: VaultClient, *, key: str = KEY_NAME, mount: str | None = None):
        self.vault = vault
        self.key = key
        self.mount = mount or vault.settings.transit_mount

    def key_id(self, version: int) -> str:
        return f"vault:{self.mount}/{self.key}:v{version}"

    def ensure_key(self) -> None:
        """Create the transit key (ed25519, not exportable, no plaintext backup) if it is absent;
        refuse an existing key of another type rather than sign with it."""
        path = f"{self.mount}/keys/{self.key}"
        try:
            info = self.vault.call(lambda c: c.secrets.transit.read_key(self.key, mount_point=self.mount), path)
        except VaultNotFound:
            self.vault.call(lambda c: c.secrets.transit.create_key(
                self.key, key_type=ALGORITHM, exportable=False, allow_plaintext_backup=False,
                mount_point=self.mount), path)
            return
        ktype = info["data"].get("type")
        if ktype != ALGORITHM:
            raise VaultError(f"transit key {self.key} exists with type {ktype}, not {ALGORITHM}: rename "
                             "the key in the settings or have an administrator rotate it", path=path)

    def sign(self, message: bytes) -> Signature:
        path = f"{self.mount}/sign/{self.key}"
        resp = self.vault.call(lambda c: c.secrets.transit.sign_data(
            self.key, hash_input=base64.b64encode(message).decode(), mount_point=self.mount), path)
        match = _VAULT_SIG.match(resp["data"]["signature"])
        if match is None:
            raise VaultError("transit answered a signature in an unknown format", path=path)
        return Signature(key_id=self.key_id(int(match.group(1))), algorithm=ALGORITHM, signature=match.group(2))

    def public_key_pem(self, key_id: str) -> str:
        match = _KEY_ID.match(key_id)
        if match is None or match["mount"] != self.mount or match["key"] != self.key:
            raise VaultInvalidRequest(f"key id {key_id!r} is not a version of {self.key_id(0)[:-3]}")
        version = match["version"]
        path = f"{self.mount}/keys/{self.key}"
        keys = self.vault.call(lambda c: c.secrets.transit.read_key(self.key, mount_point=self.mount),
                               path)["data"]["keys"]
        entry = keys.get(version) if isinstance(keys, dict) else None
        if not entry or not entry.get("public_key"):
            raise VaultNotFound(f"transit key {self.key} has no version {version} (rotated away or trimmed)",
                                path=path)
        raw = base64.b64decode(entry["public_key"])   # ed25519: 32 raw bytes, base64
        return Ed25519PublicKey.from_public_bytes(raw).public_bytes(
            Encoding.PEM, PublicFormat.SubjectPublicKeyInfo).decode()

    def verify_in_vault(self, message: bytes, sig: Signature) -> bool:
        """Vault's own verdict (the offline check is ``signing.verify``); for cross-checks."""
        version = int(sig.key_id.rsplit(":v", 1)[1])
        resp = self.vault.call(lambda c: c.secrets.transit.verify_signed_data(
            self.key, hash_input=base64.b64encode(message).decode(),
            signature=f"vault:v{version}:{sig.signature}", mount_point=self.mount),
            f"{self.mount}/verify/{self.key}")
        return bool(resp["data"]["valid"])


class HubTransitSigner:
    """The hub's release signer: a :class:`TransitSigner` whose key is made sure of on first use.

    The hub creates the key when its Vault policy allows it (the chart's hub policy does, see
    ``hub/vault_footprint.hub_policy_hcl``). A right the hub lacks becomes
    :class:`SignerUnavailable` naming the policy path and capability to grant (the ModelRelease
    shows it as ``Signed=False``); the check is repeated on the next attempt, so granting the
    right is enough.
    """

    def __init__(self, vault: VaultClient, *, key: str = KEY_NAME, mount: str | None = None):
        self.transit = TransitSigner(vault, key=key, mount=mount)
        self._ready = False
        self._lock = threading.Lock()

    @property
    def key(self) -> str:
        return self.transit.key

    def _grant(self, verb: str, path: str) -> str:
        return (f'the hub\'s Vault policy lacks {verb} on "{path}": add '
                f'path "{path}" {{ capabilities = [{verb}] }} to the hub\'s policy '
                "(fedcare's hub policy has it: hub/vault_footprint.hub_policy_hcl)")

    def _ensure(self) -> None:
        if self._ready:
            return
        with self._lock:
            if self._ready:
                return
            keys = f"{self.transit.mount}/keys/{self.key}"
            try:
                self.transit.ensure_key()
            except VaultForbidden:
                raise SignerUnavailable(
                    "SigningKeyForbidden",
                    f"transit key {self.key} cannot be read or created: "
                    + self._grant('"create", "read", "update"', keys)) from None
            except VaultNotFound:
                raise SignerUnavailable(
                    "SigningKeyMissing",
                    f"no transit engine at mount {self.transit.mount!r}: enable it (bao secrets enable "
                    f"-path={self.transit.mount} transit) or set vault.mounts.transit") from None
            except VaultError as err:
                if err.reason in ("VaultUnavailable", "VaultSealed"):
                    raise
                raise SignerUnavailable("SigningKeyUnusable", str(err)) from None
            self._ready = True

    def sign(self, message: bytes) -> Signature:
        self._ensure()
        try:
            return self.transit.sign(message)
        except VaultForbidden:
            raise SignerUnavailable("SigningForbidden", "Vault refused to sign with transit key "
                                    f"{self.key}: " + self._grant('"update"', f"{self.transit.mount}/sign/{self.key}")
                                    ) from None

    def public_key_pem(self, key_id: str) -> str:
        self._ensure()
        return self.transit.public_key_pem(key_id)
