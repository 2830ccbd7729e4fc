"""Where the chain sending key comes from: a key reference, read into memory only when needed.

Production reads it from Vault KV (the Vault client implements ``KeyRef`` with a KV path; it is
not part of this module). ``EnvKeyRef`` and ``FileKeyRef`` serve development and tests (an
anvil dev key). The key is held in a ``SecretKey`` whose repr/str never show it, and no error
message here ever includes it.
"""

from __future__ import annotations

import os
import pathlib
import re
from typing import Protocol

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


def parse_key_ref(text: str) -> KeyRef:
    """``env:NAME`` or ``file:/path``. (``vault:kv/...`` is served by the Vault integration.)"""
    kind, _, rest = text.partition(":")
    if kind == "env" and rest:
        return EnvKeyRef(rest)
    if kind == "file" and rest:
        return FileKeyRef(rest)
    raise KeyRefError(f"unsupported key reference {text.split(':', 1)[0]!r}: use env:NAME or file:/path "
                      "(Vault KV references come with the Vault integration)")
