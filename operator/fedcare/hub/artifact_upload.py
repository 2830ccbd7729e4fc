"""The S3-compatible option of the rounds' artifact store.

The SuperLink always writes a round's result to the artifact store folder (a PVC mounted in
the hub and the SuperLink pod). With ``FEDCARE_ARTIFACT_S3_URL=s3://<bucket>/<prefix>`` the hub,
once the run finished and ``round_progress.read_result`` verified the model's digest there,
copies the whole result folder (model.safetensors and its .sha256, provenance.json, the model
card, the per-round models) to ``<prefix>/<namespace>/<round>-<uid8>/attempt-<n>/<file>``: the
same relative path as on the PVC, so the keys of a round and attempt are fixed and a restarted
hub finds what it already uploaded (an object of the same size whose bytes hash to the file's
sha256 is kept, never sent again). Every object is read back and hashed after its upload; the
round's ``status.result.storageUri`` becomes ``s3://<bucket>/<key of model.safetensors>`` with the
same digest, so the ModelRelease a round creates names the S3 object.

An S3 failure leaves the round Running with ``Complete=False/ArtifactUploadFailed`` (where, why,
what to do), but the run is over: its SuperLink and every assignment (the sites' training pods)
are deleted as on success, and only the upload stays pending. A transient failure (unreachable,
5xx, a digest mismatch) is tried again with an exponential backoff (5 s → 2 min); one that cannot
fix itself (access denied, no credentials, a missing bucket, a local file error) after
``retry_fatal`` (10 min: an operator who fixed it need not restart anything, and a broken
setup is not hammered). The round fails at its ``activeDeadlineSeconds`` if no try succeeds.
The model stays on the PVC throughout.

The blocking S3 calls (and the hashing for them) run on the S3 client's own pool of
``integrations.s3.WORKERS`` threads, never the loop's default executor (shared with Vault and
the Flower Control API calls). A publish has a total budget, ``publish_budget`` capped by the round's remaining deadline, checked between files.

| Setting | Environment | Default |
|---|---|---|
| bucket and key prefix | FEDCARE_ARTIFACT_S3_URL | unset: the PVC only |
| endpoint URL | FEDCARE_ARTIFACT_S3_ENDPOINT (or AWS_ENDPOINT_URL_S3) | https://s3.amazonaws.com |
| region | FEDCARE_ARTIFACT_S3_REGION (or AWS_REGION) | us-east-1 |
| credentials | AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY | — |
"""

from __future__ import annotations

import importlib.util
import os
import pathlib
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

from ..integrations.s3 import MISSING_CLIENT, ObjectStoreError, S3Store, join, parse_uri, redact, run_blocking
from . import round_progress as progress

MODEL = "model.safetensors"
#: a backoff entry whose next try is this long past belongs to a round no longer tried (failed, deleted)
_STALE = 3600.0


def result_files(folder: pathlib.Path) -> list[pathlib.Path]:
    """Every regular file of a result folder (no dot-files: writers' temporaries), the model last:
    an uploaded model means everything beside it was uploaded before."""
    files = [p for p in folder.rglob("*") if p.is_file() and not p.is_symlink()
             and not any(part.startswith(".") for part in p.relative_to(folder).parts)]
    return sorted(files, key=lambda p: (p.name == MODEL and p.parent == folder, p.as_posix()))


@dataclass
class S3ResultStore:
    store: S3Store
    bucket: str
    prefix: str = ""
    retry_base: float = 5.0
    retry_max: float = 120.0
    retry_fatal: float = 600.0       # the wait after a failure that cannot fix itself (access, bucket)
    publish_budget: float = 1800.0   # the most one publish may take (also capped by the round's deadline)
    #: round key -> (monotonic time of the next try, current delay): an outage is not hammered.
    _backoff: dict[str, tuple[float, float]] = field(default_factory=dict, repr=False)
    #: round key -> the Result read_result verified (the model is not hashed again at every retry)
    verified: dict[str, progress.Result] = field(default_factory=dict, repr=False)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> S3ResultStore | None:
        e = os.environ if env is None else env
        url = e.get("FEDCARE_ARTIFACT_S3_URL", "")
        if not url:
            return None
        try:
            bucket, prefix = parse_uri(url)
        except ObjectStoreError as err:
            raise ValueError(f"FEDCARE_ARTIFACT_S3_URL (Helm artifactStore.s3.url): {err}") from None
        if importlib.util.find_spec("minio") is None:
            raise ValueError(f"FEDCARE_ARTIFACT_S3_URL is set but the S3 client is missing: {MISSING_CLIENT}")
        try:
            store = S3Store.from_env(e, endpoint_var="FEDCARE_ARTIFACT_S3_ENDPOINT",
                                     region_var="FEDCARE_ARTIFACT_S3_REGION")
        except ObjectStoreError as err:
            raise ValueError(f"FEDCARE_ARTIFACT_S3_ENDPOINT (Helm artifactStore.s3.endpoint; else "
                             f"AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL): {err}") from None
        return cls(store, bucket, prefix)

    @property
    def url(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}".rstrip("/")

    def wait_left(self, key: str) -> float:
        due = self._backoff.get(key)
        return max(0.0, due[0] - time.monotonic()) if due else 0.0

    def failed(self, key: str, transient: bool = True) -> float:
        """Record a failed try; the seconds until the next. A failure that cannot fix itself waits
        ``retry_fatal`` (not the short backoff: it is not worth hammering the endpoint for)."""
        now = time.monotonic()
        for k in [k for k, (due, _) in self._backoff.items() if due < now - _STALE]:
            self.forget(k)          # rounds that failed or were deleted while waiting
        if not transient:
            delay = self.retry_fatal
        else:
            delay = min(self.retry_max, self._backoff[key][1] * 2) if key in self._backoff else self.retry_base
        self._backoff[key] = (now + delay, delay)
        return delay

    def forget(self, key: str) -> None:
        self._backoff.pop(key, None)
        self.verified.pop(key, None)

    async def _run(self, fn, *args):    # noqa: ANN001, ANN202
        return await run_blocking(fn, *args)     # the S3 threads (integrations/s3.py), not the default executor

    async def publish(self, folder: pathlib.Path, relative: str, result: progress.Result,
                      key: str = "", budget: float | None = None) -> tuple[progress.Result, int]:
        """Upload (or find uploaded) the result folder; the result as stored in S3, and how many
        objects were sent now (0: everything was there already). ``budget``: the most seconds it may
        take (``publish_budget`` and at most this), checked between files: past it, a transient
        ``UploadTimedOut`` (the files already sent are kept and not sent again)."""
        sent = 0
        limit = self.publish_budget if budget is None else max(0.0, min(self.publish_budget, budget))
        end = time.monotonic() + limit
        files = await self._run(result_files, folder)
        for path in files:
            if time.monotonic() >= end:
                raise ObjectStoreError("UploadTimedOut", f"copying {folder.name} to {redact(self.url)} took longer "
                                                         f"than its budget of {limit:g}s ({sent} of {len(files)} "
                                                         "object(s) sent); the rest is sent at the next try",
                                       transient=True)
            rel = path.relative_to(folder).as_posix()
            if rel == MODEL:
                sha = result.digest.removeprefix("sha256:")      # what read_result verified
            else:
                sha = await self._run(progress.sha256_file, path)
            if await self._run(self.store.ensure_file, path, self.bucket, join(self.prefix, relative, rel), sha):
                sent += 1
        if key:
            self.forget(key)
        model_key = join(self.prefix, relative, MODEL)
        return progress.Result(f"s3://{self.bucket}/{model_key}", result.digest, result.provenance_digest), sent
