"""Canonical sha256 of a set of named arrays ("fedcare-arrays/v1"), and of files.

Definition (stable, independent of flwr's or safetensors' byte layout):

    H      = UTF-8 JSON of {"arrays": [[name, dtype, shape], ...], "format": "fedcare-arrays/v1"}
             with names sorted by code point, dtype as numpy's little-endian
             type string (e.g. "<f4"), keys sorted, separators (",", ":")
    digest = sha256( uint64_le(len(H)) || H || bytes(a_1) || ... || bytes(a_n) )

where bytes(a_i) are the C-ordered little-endian element bytes of the arrays in
the same sorted order. The same digest is computed from what a site sends, from
what the ServerApp receives and from any safetensors file holding those
tensors (`fedcare-workloads hash FILE`), so a site's update can be verified by
anyone who holds it. Hashing walks the arrays' own buffers: no copy.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path

import numpy as np

FORMAT = "fedcare-arrays/v1"
_CHUNK = 1 << 20


def _le(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a)
    if a.dtype.byteorder == ">" or (a.dtype.byteorder == "=" and np.little_endian is False):
        a = a.astype(a.dtype.newbyteorder("<"))
    return np.asarray(a, order="C")  # keeps 0-d arrays 0-d, unlike ascontiguousarray


def header_bytes(arrays: Mapping[str, np.ndarray]) -> bytes:
    entries = [[name, _le(arrays[name]).dtype.str, list(np.shape(arrays[name]))] for name in sorted(arrays)]
    return json.dumps({"arrays": entries, "format": FORMAT}, sort_keys=True, separators=(",", ":")).encode()


def arrays_sha256(arrays: Mapping[str, np.ndarray]) -> str:
    h = hashlib.sha256()
    head = header_bytes(arrays)
    h.update(len(head).to_bytes(8, "little"))
    h.update(head)
    for name in sorted(arrays):
        a = _le(arrays[name])
        h.update(a.reshape(-1).view(np.uint8))
    return h.hexdigest()


def bytes_sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()
