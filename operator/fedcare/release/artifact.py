"""Fetch a release artifact (and the files beside it) and hash it.

Supported URIs: ``file:///absolute/path`` (no ``..`` segments), ``http(s)://`` (a GET with a
bounded timeout and a bounded, jittered retry on connection errors and 5xx/429) and
``s3://bucket/key`` (an S3-compatible store, integrations/s3.py: the store in
``FetchPolicy.s3``, else the AWS_* environment; the hub writes the siblings there too). The hub also
takes ``pvc://<claim>/<path>`` (what a round records for its model) for a claim it mounts:
:func:`resolve_pvc` turns it into the ``file://`` URI inside that mount, refusing escapes. The files the
pipeline reads or writes beside the artifact (provenance.json, provenance-proofs.json,
release.json) are siblings in the same directory.
"""

from __future__ import annotations

import asyncio
import hashlib
import pathlib
import random
import urllib.parse
import posixpath
from dataclasses import dataclass, field
from typing import Any

from ..integrations.s3 import redact

PROVENANCE = "provenance.json"
PROOFS = "provenance-proofs.json"
MANIFEST = "release.json"
MAX_SIDE_FILE = 64 << 20          # provenance/proof/manifest files are small; refuse anything huge
_CHUNK = 1 << 20


class ArtifactError(ValueError):
    """The artifact cannot be fetched or is not what it should be. ``reason`` is a condition reason."""

    def __init__(self, reason: str, message: str, *, transient: bool = False) -> None:
        super().__init__(message)
        self.reason = reason
        self.transient = transient


@dataclass(frozen=True)
class FetchPolicy:
    timeout: float = 300.0        # total seconds for one GET (model files can be large)
    connect_timeout: float = 10.0
    attempts: int = 4
    base_delay: float = 0.5
    max_delay: float = 5.0
    #: The S3 store (integrations/s3.S3Store) for s3:// URIs; None: one from the AWS_* environment.
    s3: Any = field(default=None, compare=False)


def _scheme(uri: str) -> str:
    return urllib.parse.urlsplit(uri).scheme.lower()


def local_path(uri: str) -> pathlib.Path:
    """The path of a file:// URI; absolute, no '..', no host."""
    parts = urllib.parse.urlsplit(uri)
    if parts.scheme != "file":
        raise ArtifactError("UnsupportedURI", f"{redact(uri)!r} is not a file:// URI")
    if parts.netloc not in ("", "localhost"):
        raise ArtifactError("UnsupportedURI", f"file URI {redact(uri)!r} names a host; use file:///absolute/path")
    path = urllib.parse.unquote(parts.path)
    if not path.startswith("/"):
        raise ArtifactError("UnsupportedURI", f"file URI {redact(uri)!r} must hold an absolute path")
    if ".." in pathlib.PurePosixPath(path).parts:
        raise ArtifactError("UnsupportedURI", f"file URI {redact(uri)!r} contains '..'; give the real path")
    return pathlib.Path(path)


def resolve_pvc(uri: str, mounts: dict[str, str]) -> str:
    """``pvc://<claim>/<path>`` → ``file://<mount of claim>/<path>``; any other URI unchanged.

    ``mounts`` maps claim names to the folders where the hub mounts them (the round's artifact
    store: ``FEDCARE_ARTIFACT_CLAIM`` at ``FEDCARE_ARTIFACT_DIR``). ``..`` segments, absolute
    tricks and symlinks leading out of the mount are refused.
    """
    parts = urllib.parse.urlsplit(uri)
    if parts.scheme.lower() != "pvc":
        return uri
    claim = parts.netloc
    rel = urllib.parse.unquote(parts.path).lstrip("/")
    if not claim or not rel:
        raise ArtifactError("UnsupportedURI", f"{redact(uri)!r}: expected pvc://<claim>/<path inside the claim>")
    if ".." in pathlib.PurePosixPath(rel).parts:
        raise ArtifactError("UnsupportedURI", f"{redact(uri)!r} contains '..'; give the path inside the claim")
    if claim not in mounts:
        have = ", ".join(sorted(mounts)) or "none"
        raise ArtifactError("UnsupportedURI", f"{redact(uri)!r}: the hub does not mount claim {claim!r} (it mounts: "
                                              f"{have}); set artifactStore.existingClaim in the Helm values or "
                                              "use a file:// or http(s):// URI")
    root = pathlib.Path(mounts[claim]).resolve()
    target = (root / rel).resolve()
    if not target.is_relative_to(root):
        raise ArtifactError("UnsupportedURI", f"{redact(uri)!r} leads out of the claim's mount (a symlink?)")
    return target.as_uri()


def check_uri(uri: str) -> None:
    scheme = _scheme(uri)
    if scheme == "file":
        local_path(uri)
    elif scheme == "s3":
        _s3_parts(uri)
    elif scheme not in ("http", "https"):
        raise ArtifactError("UnsupportedURI", f"artifact URI scheme {scheme or '(none)'!r} is not supported: "
                                              "use file:///absolute/path, http(s):// or s3://bucket/key")


def _s3_parts(uri: str) -> tuple[str, str]:
    from ..integrations.s3 import ObjectStoreError, parse_uri
    try:
        bucket, key = parse_uri(uri)
    except ObjectStoreError as err:
        raise ArtifactError(err.reason, str(err)) from None
    if not key or key.endswith("/"):
        raise ArtifactError("UnsupportedURI", f"{redact(uri)!r} names no object: use s3://<bucket>/<key of the file>")
    return bucket, key


async def _s3_call(policy: FetchPolicy, fn: str, uri: str, *args: Any) -> Any:
    """Run an S3Store method on the S3 threads; its errors become ArtifactErrors (same reasons)."""
    from ..integrations.s3 import ObjectStoreError, run_blocking, store_from_env
    bucket, key = _s3_parts(uri)
    store = policy.s3 or store_from_env()
    try:
        return await run_blocking(getattr(store, fn), bucket, key, *args)
    except ObjectStoreError as err:
        raise ArtifactError(err.reason, str(err), transient=err.transient) from None


def sibling(uri: str, name: str) -> str:
    check_uri(uri)
    if _scheme(uri) == "s3":
        bucket, key = _s3_parts(uri)
        return f"s3://{bucket}/{posixpath.join(posixpath.dirname(key), name)}"
    return urllib.parse.urljoin(uri, name)


def sha256_file(path: pathlib.Path) -> str:
    """sha256 of a file with OpenSSL's hashing over large reads (close to sha256sum's speed)."""
    try:
        with open(path, "rb", buffering=0) as fh:
            return hashlib.file_digest(fh, "sha256").hexdigest()
    except FileNotFoundError:
        raise ArtifactError("ArtifactNotFound", f"{path} does not exist") from None
    except IsADirectoryError:
        raise ArtifactError("ArtifactNotFound", f"{path} is a directory, not a model file") from None
    except PermissionError:
        raise ArtifactError("ArtifactUnreadable", f"{path} is not readable by the hub") from None


async def _get(uri: str, policy: FetchPolicy, sink) -> None:
    import aiohttp     # only http(s) artifacts need it; `fedcare verify` of a file stays light

    timeout = aiohttp.ClientTimeout(total=policy.timeout, connect=policy.connect_timeout)
    for attempt in range(policy.attempts):
        try:
            async with aiohttp.ClientSession(timeout=timeout) as session, session.get(uri) as resp:
                if resp.status == 404:
                    raise ArtifactError("ArtifactNotFound", f"{redact(uri)} answered 404 Not Found")
                if resp.status in (429, 500, 502, 503, 504):
                    raise aiohttp.ClientResponseError(resp.request_info, (), status=resp.status)
                if resp.status != 200:
                    raise ArtifactError("ArtifactUnreadable", f"{redact(uri)} answered HTTP {resp.status}")
                sink.reset()
                async for chunk in resp.content.iter_chunked(_CHUNK):
                    sink.feed(chunk)
                return
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as err:
            if attempt + 1 == policy.attempts:
                raise ArtifactError("ArtifactUnreachable", f"GET {redact(uri)} failed {policy.attempts} times "
                                                           f"({type(err).__name__}); check the storage server",
                                    transient=True) from None
            await asyncio.sleep(random.uniform(0, min(policy.max_delay, policy.base_delay * 2 ** attempt)))


class _Hasher:
    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.h = hashlib.sha256()

    def feed(self, chunk: bytes) -> None:
        self.h.update(chunk)


class _Buffer:
    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.reset()

    def reset(self) -> None:
        self.data = bytearray()

    def feed(self, chunk: bytes) -> None:
        self.data += chunk
        if len(self.data) > self.limit:
            raise ArtifactError("ArtifactUnreadable", f"file is larger than {self.limit} bytes")


async def sha256_uri(uri: str, policy: FetchPolicy = FetchPolicy()) -> str:
    """Fetch the artifact and return its sha256 (64 hex)."""
    check_uri(uri)
    if _scheme(uri) == "file":
        return await asyncio.to_thread(sha256_file, local_path(uri))
    if _scheme(uri) == "s3":
        found = await _s3_call(policy, "sha256", uri)
        if found is None:
            raise ArtifactError("ArtifactNotFound", f"{redact(uri)} does not exist in its bucket")
        return found
    hasher = _Hasher()
    await _get(uri, policy, hasher)
    return hasher.h.hexdigest()


async def read_uri(uri: str, policy: FetchPolicy = FetchPolicy(), limit: int = MAX_SIDE_FILE) -> bytes | None:
    """A small file (provenance, proofs, manifest); None when it does not exist."""
    check_uri(uri)
    if _scheme(uri) == "file":
        path = local_path(uri)
        try:
            if path.stat().st_size > limit:
                raise ArtifactError("ArtifactUnreadable", f"{path} is larger than {limit} bytes")
            return await asyncio.to_thread(path.read_bytes)
        except FileNotFoundError:
            return None
    if _scheme(uri) == "s3":
        return await _s3_call(policy, "read", uri, limit)
    buf = _Buffer(limit)
    try:
        await _get(uri, policy, buf)
    except ArtifactError as err:
        if err.reason == "ArtifactNotFound":
            return None
        raise
    return bytes(buf.data)


async def download_s3(uri: str, path: pathlib.Path, policy: FetchPolicy = FetchPolicy()) -> str:
    """Stream an s3:// object into ``path`` (no whole-file buffer); its sha256."""
    found = await _s3_call(policy, "download", uri, path)
    if found is None:
        raise ArtifactError("ArtifactNotFound", f"{redact(uri)} does not exist in its bucket")
    return found


async def put_beside(uri: str, name: str, data: bytes, policy: FetchPolicy = FetchPolicy()) -> str | None:
    """Write a file beside a file:// or s3:// artifact; None for http(s) (read-only to us)."""
    if _scheme(uri) == "s3":
        target = sibling(uri, name)
        await _s3_call(policy, "put_bytes", target, data)
        return target
    return await asyncio.to_thread(write_beside, uri, name, data)


def write_beside(uri: str, name: str, data: bytes) -> str | None:
    """Write a file beside a file:// artifact (atomically); None for remote stores (see put_beside)."""
    if _scheme(uri) != "file":
        return None
    target = local_path(uri).parent / name
    tmp = target.with_name(f".{name}.tmp")
    tmp.write_bytes(data)
    tmp.replace(target)
    return target.as_uri()
