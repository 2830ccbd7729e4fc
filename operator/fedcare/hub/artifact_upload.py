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
what to do); the next try waits with an exponential backoff (5 s → 2 min) and the round fails at
its ``activeDeadlineSeconds``. The model stays on the PVC throughout.

| Setting | Environment | Default |
|---|---|---|
| bucket and key prefix | FEDCARE_ARTIFACT_S3_URL | unset: the PVC only |
| endpoint URL | FEDCARE_ARTIFACT_S3_ENDPOINT (or AWS_ENDPOINT_URL_S3) | https://s3.amazonaws.com |
| region | FEDCARE_ARTIFACT_S3_REGION (or AWS_REGION) | us-east-1 |
| credentials | AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY | — |
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import pathlib
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

from ..integrations.s3 import MISSING_CLIENT, ObjectStoreError, S3Store, join, parse_uri
from . import round_progress as progress

MODEL = "model.safetensors"


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
    #: round key -> (monotonic time of the next try, current delay): an outage is not hammered.
    _backoff: dict[str, tuple[float, float]] = field(default_factory=dict, repr=False)

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
        store = S3Store.from_env(e, endpoint_var="FEDCARE_ARTIFACT_S3_ENDPOINT",
                                 region_var="FEDCARE_ARTIFACT_S3_REGION")
        return cls(store, bucket, prefix)

    @property
    def url(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}".rstrip("/")

    def wait_left(self, key: str) -> float:
        due = self._backoff.get(key)
        return max(0.0, due[0] - time.monotonic()) if due else 0.0

    def failed(self, key: str) -> float:
        delay = min(self.retry_max, self._backoff[key][1] * 2) if key in self._backoff else self.retry_base
        self._backoff[key] = (time.monotonic() + delay, delay)
        return delay

    async def publish(self, folder: pathlib.Path, relative: str, result: progress.Result,
                      key: str = "") -> tuple[progress.Result, int]:
        """Upload (or find uploaded) the result folder; the result as stored in S3, and how many
        objects were sent now (0: everything was there already)."""
        sent = 0
        for path in result_files(folder):
            rel = path.relative_to(folder).as_posix()
            if rel == MODEL:
                sha = result.digest.removeprefix("sha256:")      # what read_result verified
            else:
                sha = await asyncio.to_thread(progress.sha256_file, path)
            if await asyncio.to_thread(self.store.ensure_file, path, self.bucket, join(self.prefix, relative, rel),
                                       sha):
                sent += 1
        if key:
            self._backoff.pop(key, None)
        model_key = join(self.prefix, relative, MODEL)
        return progress.Result(f"s3://{self.bucket}/{model_key}", result.digest, result.provenance_digest), sent
