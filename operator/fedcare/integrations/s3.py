"""S3-compatible object storage for round artifacts and releases (the MinIO Python SDK).

Why minio and not boto3: botocore pins ``python-dateutil<3`` while the kubernetes client this
project pins needs ``python-dateutil>=3``; the two cannot be installed together. The MinIO SDK
speaks the same S3 API (path-style addressing for a custom endpoint, SigV4) to any
S3-compatible server (AWS S3, MinIO, Ceph RGW, S3Proxy, ...).

Every call has a connect and a read timeout and a bounded retry with exponential backoff
(urllib3 ``Retry`` on the SDK's pool: connection errors, read timeouts, 5xx and 429). The
calls are blocking; async code runs them with :func:`run_blocking` on a small pool of their own,
never the event loop's default executor. Errors are
:class:`ObjectStoreError`: what was asked (``s3://bucket/key`` at the endpoint), why, and what to
do; never a credential (the SDK's own messages, which may quote the access key id, are not
echoed), and a URI or endpoint is shown through :func:`redact` (no query, fragment or user info:
a presigned URL's signature never reaches a message). Credentials come from the standard
variables ``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` (+ ``AWS_SESSION_TOKEN`` when the
keys are temporary; the chart passes it when its Secret has that key) unless given explicitly;
they are held by the SDK's provider only, never in these settings. No other credential source
(web identity, instance metadata) is read.

| Setting | Environment (the hub's artifact store) | Fallback (any command) | Default |
|---|---|---|---|
| endpoint URL | FEDCARE_ARTIFACT_S3_ENDPOINT | AWS_ENDPOINT_URL_S3, AWS_ENDPOINT_URL | https://s3.amazonaws.com |
| region | FEDCARE_ARTIFACT_S3_REGION | AWS_REGION, AWS_DEFAULT_REGION | us-east-1 |
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import hashlib
import logging
import os
import pathlib
import posixpath
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)

CREDENTIAL_HINT = ("set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (Helm: artifactStore.s3.credentialsSecret, "
                   "a Secret with those two keys)")
_CHUNK = 1 << 20
MISSING_CLIENT = "pip install 'fedcare[s3]' (the minio package; the fedcare image has it)"


class ObjectStoreError(Exception):
    """An S3 call failed. ``reason``: a condition reason; ``transient``: worth retrying later as is."""

    def __init__(self, reason: str, message: str, *, transient: bool = False) -> None:
        super().__init__(message)
        self.reason = reason
        self.transient = transient


#: OSErrors of a local file (fput_object's open, a download's write), never of the connection.
_LOCAL_ERRORS = (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError)


def _local_error(err: OSError, op: str, where: str) -> ObjectStoreError:
    """A local file/disk failure: its own reason and a message about the file, not the endpoint."""
    what = f"{err.strerror or type(err).__name__}" + (f": {err.filename}" if err.filename else "")
    return ObjectStoreError("LocalFileError", f"{op} {where}: the local file failed ({what}); check the file "
                                              "and the free space of its disk (not the S3 endpoint)")


@dataclass(frozen=True)
class S3Policy:
    connect_timeout: float = 5.0
    read_timeout: float = 60.0
    attempts: int = 4               # tries per HTTP request (urllib3 Retry total = attempts - 1)
    backoff: float = 0.5            # urllib3 backoff_factor: 0.5, 1, 2 s ... between tries
    max_backoff: float = 8.0


def redact(uri: str) -> str:
    """A URI fit for a message: no query, fragment or user info (a presigned URL's
    ``X-Amz-Credential``/``X-Amz-Signature``, a token, a password), at most 200 characters."""
    try:
        parts = urllib.parse.urlsplit(str(uri))
        netloc = parts.netloc.rpartition("@")[2]
        return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, "", ""))[:200]
    except ValueError:
        return "<an unparsable URI>"


def parse_uri(uri: str) -> tuple[str, str]:
    """``s3://bucket/key`` → (bucket, key); the key may be empty (a prefix). Refuses '..' segments."""
    parts = urllib.parse.urlsplit(uri)
    if parts.scheme.lower() != "s3":
        raise ObjectStoreError("UnsupportedURI", f"{redact(uri)!r} is not an s3://bucket/key URI")
    bucket, key = parts.netloc, urllib.parse.unquote(parts.path).lstrip("/")
    if "@" in bucket:            # user info may be a credential: say so without echoing it
        raise ObjectStoreError("UnsupportedURI", "an s3:// URI takes no user info (credentials come from "
                                                 "AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY); use s3://<bucket>/<key>")
    if not bucket or not _valid_bucket(bucket):
        raise ObjectStoreError("UnsupportedURI", f"{redact(uri)!r}: {bucket!r} is not a valid bucket name (3-63 "
                                                 "lowercase letters, digits, '.' and '-'); use s3://<bucket>/<key>")
    if parts.query or parts.fragment:
        raise ObjectStoreError("UnsupportedURI", f"{redact(uri)!r}: an s3:// URI takes no query or fragment")
    if ".." in pathlib.PurePosixPath(key).parts:
        raise ObjectStoreError("UnsupportedURI", f"{redact(uri)!r} contains '..'; give the object's real key")
    return bucket, key


def _valid_bucket(name: str) -> bool:
    return 3 <= len(name) <= 63 and all(ch.islower() or ch.isdigit() or ch in ".-" for ch in name) \
        and name[0].isalnum() and name[-1].isalnum()


def join(*parts: str) -> str:
    return posixpath.join(*[p.strip("/") for p in parts if p.strip("/")])


def _first_env(env: Mapping[str, str] | None, names: tuple[str, ...], default: str) -> str:
    e = os.environ if env is None else env
    return next((e[name] for name in names if e.get(name)), default)


def endpoint_from_env(env: Mapping[str, str] | None = None, *names: str) -> str:
    return _first_env(env, (*names, "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"), "https://s3.amazonaws.com")


def region_from_env(env: Mapping[str, str] | None = None, *names: str) -> str:
    return _first_env(env, (*names, "AWS_REGION", "AWS_DEFAULT_REGION"), "us-east-1")


@dataclass(frozen=True)
class Stat:
    size: int
    sha256: str          # what the uploader recorded in x-amz-meta-sha256 ('' if none): a hint, never trusted


@dataclass
class S3Store:
    """A client of one S3-compatible endpoint. Credentials: explicit, or the AWS_* environment."""

    endpoint: str = "https://s3.amazonaws.com"
    region: str = "us-east-1"
    policy: S3Policy = field(default_factory=S3Policy)
    access_key: str | None = field(default=None, repr=False)
    secret_key: str | None = field(default=None, repr=False)
    _client: Any = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        parts = urllib.parse.urlsplit(self.endpoint)
        if parts.scheme not in ("http", "https") or not parts.hostname or parts.path not in ("", "/") \
                or parts.username or parts.password or parts.query or parts.fragment:
            raise ObjectStoreError("InvalidEndpoint", f"S3 endpoint {redact(self.endpoint)!r} must be http(s)://host"
                                                      "[:port] with no path or query and no user info (credentials come "
                                                      "from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY)")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, *, endpoint_var: str = "",
                 region_var: str = "", policy: S3Policy | None = None) -> S3Store:
        names = [n for n in (endpoint_var,) if n]
        return cls(endpoint_from_env(env, *names), region_from_env(env, *[n for n in (region_var,) if n]),
                   policy or S3Policy())

    # -- the SDK client ------------------------------------------------------------------------
    def client(self) -> Any:
        if self._client is None:
            import certifi
            import urllib3
            try:
                from minio import Minio
            except ImportError:
                raise ObjectStoreError("ClientMissing", f"the S3 client is not installed ({MISSING_CLIENT})") from None
            from minio.credentials import EnvAWSProvider, StaticProvider

            p = self.policy
            parts = urllib.parse.urlsplit(self.endpoint)
            retry = urllib3.Retry(total=p.attempts - 1, connect=p.attempts - 1, read=p.attempts - 1,
                                  status=p.attempts - 1, backoff_factor=p.backoff, backoff_max=p.max_backoff,
                                  status_forcelist=[429, 500, 502, 503, 504], allowed_methods=None,
                                  raise_on_status=False, respect_retry_after_header=True)
            pool = urllib3.PoolManager(timeout=urllib3.Timeout(connect=p.connect_timeout, read=p.read_timeout),
                                       retries=retry, maxsize=10, cert_reqs="CERT_REQUIRED",
                                       ca_certs=os.environ.get("SSL_CERT_FILE") or certifi.where())
            creds = (StaticProvider(self.access_key, self.secret_key or "") if self.access_key is not None
                     else EnvAWSProvider())
            self._client = Minio(parts.netloc, secure=parts.scheme == "https", region=self.region,
                                 http_client=pool, credentials=creds)
        return self._client

    def _has_credentials(self) -> bool:
        if self.access_key is not None:
            return True
        return bool(os.environ.get("AWS_ACCESS_KEY_ID") or os.environ.get("AWS_ACCESS_KEY"))

    def where(self, bucket: str, key: str = "") -> str:
        return f"s3://{bucket}/{key}".rstrip("/") + f" at {self.endpoint}"

    def _error(self, err: BaseException, op: str, bucket: str, key: str = "") -> ObjectStoreError:
        """Our message for an SDK/transport error: the SDK's text is not echoed (it may quote the access key id)."""
        from minio.error import InvalidResponseError, S3Error, ServerError

        where = self.where(bucket, key)
        if isinstance(err, S3Error):
            code = err.code or "Error"
            if code == "NoSuchBucket":
                return ObjectStoreError("BucketNotFound", f"{op} {where}: bucket {bucket!r} does not exist; create "
                                                          "it, or fix the bucket in the s3:// URL")
            if code in ("NoSuchKey", "NoSuchObject"):
                return ObjectStoreError("ArtifactNotFound", f"{op} {where}: no such object")
            if code in ("AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken",
                        "ExpiredToken", "AuthorizationHeaderMalformed", "AllAccessDisabled"):
                what = ("no credentials were found" if not self._has_credentials()
                        else f"the credentials were refused ({code})")
                return ObjectStoreError("AccessDenied", f"{op} {where}: {what}; {CREDENTIAL_HINT}, and grant "
                                                        f"them read and write on bucket {bucket!r}")
            return ObjectStoreError("ObjectStoreError", f"{op} {where}: the server answered {code}",
                                    transient=code in ("SlowDown", "InternalError", "ServiceUnavailable",
                                                       "RequestTimeout"))
        if isinstance(err, ServerError):
            return ObjectStoreError("ObjectStoreUnavailable", f"{op} {where}: the server answered HTTP "
                                                              f"{err.status_code} after {self.policy.attempts} "
                                                              "tries; retrying later", transient=True)
        if isinstance(err, InvalidResponseError):
            return ObjectStoreError("ObjectStoreError", f"{op} {where}: the endpoint's reply is not an S3 reply; "
                                                        "check that the endpoint URL names an S3 API")
        cause = err
        while getattr(cause, "reason", None) is not None and isinstance(cause.reason, BaseException):
            cause = cause.reason        # urllib3 MaxRetryError → the connection/timeout error under it
        if "SSL" in type(cause).__name__:
            return ObjectStoreError("ObjectStoreUnreachable",
                                    f"{op} {where}: the TLS handshake failed ({type(cause).__name__}); if the "
                                    "endpoint uses a private CA, point SSL_CERT_FILE at its CA bundle",
                                    transient=True)
        return ObjectStoreError("ObjectStoreUnreachable",
                                f"{op} {where}: unreachable after {self.policy.attempts} tries "
                                f"({type(cause).__name__}); check the endpoint URL, that the server runs and that "
                                "the hub may reach it", transient=True)

    def _call(self, op: str, bucket: str, key: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        import urllib3
        from minio.error import MinioException

        if not self._has_credentials():
            raise ObjectStoreError("AccessDenied", f"{op} {self.where(bucket, key)}: no credentials were found; "
                                                   f"{CREDENTIAL_HINT}")
        try:
            return fn(*args, **kwargs)
        except _LOCAL_ERRORS as err:      # this machine's file, not the server (fput_object opens it)
            raise _local_error(err, op, self.where(bucket, key)) from None
        except (MinioException, urllib3.exceptions.HTTPError, OSError) as err:
            raise self._error(err, op, bucket, key) from None
        except ValueError as err:     # the SDK's own argument checks (names): no credential in them
            raise ObjectStoreError("UnsupportedURI", f"{op} {self.where(bucket, key)}: {str(err)[:200]}") from None

    # -- operations (blocking) ---------------------------------------------------------------
    def stat(self, bucket: str, key: str) -> Stat | None:
        """Size and recorded sha256 of an object; None if it does not exist (a missing bucket raises)."""
        try:
            obj = self._call("HEAD", bucket, key, self.client().stat_object, bucket, key)
        except ObjectStoreError as err:
            if err.reason != "ArtifactNotFound":
                raise
            # a HEAD reply has no body: the SDK calls any 404 NoSuchKey; tell a missing bucket apart
            if not self._call("HEAD", bucket, "", self.client().bucket_exists, bucket):
                raise self._error_no_bucket("HEAD", bucket, key) from None
            return None
        meta = {k.lower(): v for k, v in (obj.metadata or {}).items()}
        return Stat(int(obj.size or 0), str(meta.get("x-amz-meta-sha256", "")))

    def _error_no_bucket(self, op: str, bucket: str, key: str) -> ObjectStoreError:
        return ObjectStoreError("BucketNotFound", f"{op} {self.where(bucket, key)}: bucket {bucket!r} does not "
                                                  "exist; create it, or fix the bucket in the s3:// URL")

    def upload(self, path: pathlib.Path, bucket: str, key: str, sha256: str) -> None:
        """PUT a file (multipart above the SDK's part size); records its sha256 as x-amz-meta-sha256."""
        self._call("PUT", bucket, key, self.client().fput_object, bucket, key, str(path),
                   metadata={"sha256": sha256})

    def put_bytes(self, bucket: str, key: str, data: bytes, content_type: str = "application/json") -> None:
        import io
        self._call("PUT", bucket, key, self.client().put_object, bucket, key, io.BytesIO(data), len(data),
                   content_type=content_type, metadata={"sha256": hashlib.sha256(data).hexdigest()})

    def _stream(self, op: str, bucket: str, key: str, sink: Any, limit: int | None = None) -> bool:
        """GET an object into ``sink(chunk)``; False if it does not exist."""
        import urllib3
        try:
            resp = self._call(op, bucket, key, self.client().get_object, bucket, key)
        except ObjectStoreError as err:
            if err.reason == "ArtifactNotFound":
                return False
            raise
        seen = 0
        try:
            for chunk in self._call(op, bucket, key, resp.stream, _CHUNK):
                seen += len(chunk)
                if limit is not None and seen > limit:
                    raise ObjectStoreError("ArtifactUnreadable", f"{op} {self.where(bucket, key)}: larger than "
                                                                 f"{limit} bytes")
                try:
                    sink(chunk)
                except OSError as err:      # the local file (a full disk): not the server's fault
                    raise _local_error(err, op, self.where(bucket, key)) from None
        except (urllib3.exceptions.HTTPError, OSError) as err:      # the body broke off mid-stream
            raise self._error(err, op, bucket, key) from None
        finally:
            resp.close()
            resp.release_conn()
        return True

    def sha256(self, bucket: str, key: str) -> str | None:
        """sha256 (hex) of the object's bytes, streamed; None if it does not exist."""
        h = hashlib.sha256()
        return h.hexdigest() if self._stream("GET", bucket, key, h.update) else None

    def read(self, bucket: str, key: str, limit: int) -> bytes | None:
        buf = bytearray()
        return bytes(buf) if self._stream("GET", bucket, key, buf.extend, limit) else None

    def download(self, bucket: str, key: str, path: pathlib.Path) -> str | None:
        """Stream an object into ``path``; return its sha256, None if it does not exist."""
        h = hashlib.sha256()
        tmp = path.with_name(f".{path.name}.part")
        try:
            fh = open(tmp, "wb")
        except OSError as err:
            raise _local_error(err, "GET", self.where(bucket, key)) from None
        with fh:
            def sink(chunk: bytes) -> None:
                h.update(chunk)
                fh.write(chunk)
            found = self._stream("GET", bucket, key, sink)
        if not found:
            tmp.unlink(missing_ok=True)
            return None
        tmp.replace(path)
        return h.hexdigest()

    def ensure_file(self, path: pathlib.Path, bucket: str, key: str, sha256: str) -> bool:
        """The object holds exactly this file's bytes afterwards; True if it was uploaded now.

        An existing object of the same size is re-hashed (a GET): if its sha256 matches it is
        kept (a restarted hub repeats no upload). After an upload the object is read back and
        hashed; a mismatch raises ``DigestMismatch`` (the object is not trusted).
        """
        try:
            size = path.stat().st_size
        except OSError as err:
            raise _local_error(err, "PUT", self.where(bucket, key)) from None
        have = self.stat(bucket, key)
        if have is not None and have.size == size and self.sha256(bucket, key) == sha256:
            return False
        self.upload(path, bucket, key, sha256)
        got = self.sha256(bucket, key)
        if got != sha256:
            raise ObjectStoreError("DigestMismatch", f"PUT {self.where(bucket, key)}: the stored object hashes to "
                                                     f"{got or 'nothing'}, the file to {sha256}; the upload is "
                                                     "not trusted and will be repeated", transient=True)
        return True


#: S3 calls' own threads: a long upload never starves the event loop's default executor (6
#: workers on a small host, shared with Vault reads and the Flower Control API calls); the SDK's
#: timeouts run inside the call, so they measure the call, not the wait for a thread.
WORKERS = 2
_POOL: concurrent.futures.ThreadPoolExecutor | None = None


async def run_blocking(fn: Any, *args: Any) -> Any:
    """``fn(*args)`` (a blocking S3 call, or hashing for one) on the S3 threads."""
    global _POOL
    if _POOL is None:
        _POOL = concurrent.futures.ThreadPoolExecutor(WORKERS, thread_name_prefix="fedcare-s3")
    return await asyncio.get_running_loop().run_in_executor(_POOL, functools.partial(fn, *args))


_ENV_STORES: dict[tuple[str, str], S3Store] = {}


def store_from_env() -> S3Store:
    """A store for s3:// URIs with no configured one (``fedcare verify``): AWS_* variables."""
    key = (endpoint_from_env(), region_from_env())
    if key not in _ENV_STORES:
        _ENV_STORES[key] = S3Store(*key)
    return _ENV_STORES[key]
