"""Where the chain sending key comes from: a key reference, read into memory only when needed.

Production reads it from Vault KV: ``vault:<kv mount>/<path>#<field>`` (e.g.
``vault:fedcare/chain/sender#key``), read with the process's Vault client each time a
transaction is signed and kept only in memory, never cached or written. ``EnvKeyRef`` and
``FileKeyRef`` serve development and tests (an anvil dev key). The key is held in a ``SecretKey`` whose repr/str never show it, and no error
message here ever includes it.
"""

from __future__ import annotations

import os
import pathlib
import re
from typing import Any, Protocol

_HEX_KEY = re.compile(r"^(0x)?[0-9a-fA-F]{64}$")


class KeyRefError(RuntimeError):
    """The key reference could not be resolved (the message names the reference, never the key)."""


class SecretKey:
    """A private key in memory. repr/str are redacted so it cannot leak through logs or tracebacks."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        value = value.strip()
        if not _HEX_KEY.match(value):
            raise KeyRefError("the referenced value is not a 32-byte hex private key")
        self._value = value if value.startswith("0x") else "0x" + value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "SecretKey(<redacted>)"

    __str__ = __repr__


class KeyRef(Protocol):
    """A reference to the sending account's private key."""

    def describe(self) -> str:
        """A human-readable name of the reference (never the key), for messages."""
        ...

    def load(self) -> SecretKey: ...


class EnvKeyRef:
    def __init__(self, variable: str) -> None:
        self.variable = variable

    def describe(self) -> str:
        return f"env:{self.variable}"

    def load(self) -> SecretKey:
        value = os.environ.get(self.variable)
        if not value:
            raise KeyRefError(f"key reference {self.describe()}: the environment variable is not set")
        try:
            return SecretKey(value)
        except KeyRefError as err:
            raise KeyRefError(f"key reference {self.describe()}: {err}") from None


class FileKeyRef:
    def __init__(self, path: str | pathlib.Path) -> None:
        self.path = pathlib.Path(path)

    def describe(self) -> str:
        return f"file:{self.path}"

    def load(self) -> SecretKey:
        try:
            text = self.path.read_text()
        except OSError as err:
            raise KeyRefError(f"key reference {self.describe()}: cannot read it ({err.strerror})") from None
        try:
            return SecretKey(text)
        except KeyRefError as err:
            raise KeyRefError(f"key reference {self.describe()}: {err}") from None


_VAULT_REF = re.compile(r"^(?P<mount>[A-Za-z0-9_.-]+)/(?P<path>[A-Za-z0-9_.@=+/-]+)#(?P<field>[A-Za-z0-9_.-]+)$")


class VaultKeyRef:
    """``vault:<mount>/<path>#<field>``: one field of a Vault KV v2 secret.

    ``vault`` is the process's :class:`~fedcare.integrations.vault.VaultClient` (the hub context
    sets it; duck-typed here so this module needs no Vault import). Every ``load`` reads the
    secret afresh through ``vault.call`` (timeout, bounded retry, typed errors), bypassing the
    client's KV cache, so the key lives only in the returned :class:`SecretKey`.
    """

    def __init__(self, mount: str, path: str, field: str, vault: Any = None) -> None:
        self.mount, self.path, self.field, self.vault = mount, path, field, vault

    def describe(self) -> str:
        return f"vault:{self.mount}/{self.path}#{self.field}"

    def load(self) -> SecretKey:
        if self.vault is None:
            raise KeyRefError(f"key reference {self.describe()}: this process has no Vault client "
                              "(secrets.backend=kubernetes?); use file:/path with chain.keySecret instead")
        from .vault import VaultError     # the Vault integration is only needed for vault: references

        mount, path = self.mount, self.path
        try:
            resp = self.vault.call(lambda c: c.secrets.kv.v2.read_secret_version(
                path, mount_point=mount, raise_on_deleted_version=True), f"{mount}/data/{path}")
        except VaultError as err:
            hint = {"VaultForbidden": f'grant the hub read on "{mount}/data/{path}" in its Vault policy',
                    "VaultNotFound": "write the key there (bao kv put) or fix chain.keyRef"}.get(err.reason, "")
            raise KeyRefError(f"key reference {self.describe()}: {err.reason}"
                              f"{'; ' + hint if hint else ''}") from None
        data = (resp.get("data") or {}).get("data") or {}
        value = data.get(self.field)
        if not isinstance(value, str) or not value:
            raise KeyRefError(f"key reference {self.describe()}: the secret has no field {self.field!r}")
        try:
            return SecretKey(value)
        except KeyRefError as err:
            raise KeyRefError(f"key reference {self.describe()}: {err}") from None


def parse_key_ref(text: str, vault: Any = None) -> KeyRef:
    """``env:NAME``, ``file:/path`` or ``vault:<kv mount>/<path>#<field>`` (with ``vault``, the Vault client)."""
    kind, _, rest = text.partition(":")
    if kind == "env" and rest:
        return EnvKeyRef(rest)
    if kind == "file" and rest:
        return FileKeyRef(rest)
    if kind == "vault":
        m = _VAULT_REF.match(rest)
        if m is None or any(part in ("", ".", "..") for part in m["path"].split("/")):
            raise KeyRefError(f"key reference {text[:200]!r}: expected vault:<kv mount>/<path>#<field>, "
                              "e.g. vault:fedcare/chain/sender#key")
        return VaultKeyRef(m["mount"], m["path"], m["field"], vault)
    raise KeyRefError(f"unsupported key reference {text.split(':', 1)[0]!r}: use env:NAME, file:/path or "
                      "vault:<kv mount>/<path>#<field>")
