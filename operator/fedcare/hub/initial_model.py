"""Where a FederatedRound's starting weights come from (``spec.model.initialModel``).

A round starts from a released model (``modelReleaseRef``) or a digest-pinned artifact
(``storageUri`` + ``digest``). Either way the file must be in the hub's artifact store
(``pvc://<artifact claim>/<path>``; an ``s3://`` URI of the store's S3 copy names the same file
on the claim, hub/artifact_upload.py), which the SuperLink pod mounts at the same path as the
hub: the ServerApp reads it there, checks its sha256 against the pin before parsing it, and
refuses another architecture (workloads' ``initial_model.py``). The result is two run-config
entries, ``initial-model`` (the path in the SuperLink) and ``initial-model-sha256``.
"""

from __future__ import annotations

import pathlib
import posixpath
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from ..api import resources as r
from ..api.federated_round import FederatedRoundSpec
from ..integrations.kube import Kube, Ref
from ..integrations.s3 import ObjectStoreError, parse_uri, redact
from .aggregator import AggregatorConfig
from .artifact_upload import S3ResultStore

FIELD = "spec.model.initialModel"


@dataclass(frozen=True)
class Initial:
    problem: str = ""                                   # non-empty: the round cannot start (InvalidSpec)
    run_config: dict[str, Any] = field(default_factory=dict)


def _revoked(release: dict[str, Any]) -> bool:
    if (release.get("spec") or {}).get("revocation"):
        return True
    return any(c.get("type") == "Revoked" and c.get("status") == "True"
               for c in (release.get("status") or {}).get("conditions") or [])


def s3_to_store(uri: str, cfg: AggregatorConfig, s3: S3ResultStore | None) -> str:
    """An ``s3://`` URI of the hub's S3 copy (artifact store's S3 option) → the same file's
    ``pvc://`` URI: the copy keeps the store's relative paths under its prefix, and the
    SuperLink reads the claim. Any other URI unchanged."""
    if s3 is None or urlsplit(uri).scheme != "s3":
        return uri
    try:
        bucket, key = parse_uri(uri)
    except ObjectStoreError:
        return uri
    prefix = s3.prefix.strip("/")
    if bucket != s3.bucket or (prefix and not key.startswith(prefix + "/")):
        return uri
    return f"pvc://{cfg.artifact_claim}/{key[len(prefix) + 1:] if prefix else key}"


def store_path(uri: str, cfg: AggregatorConfig, where: str, s3: S3ResultStore | None = None) -> tuple[str, str]:
    """(path in the SuperLink, problem) for an artifact URI in the hub's artifact store."""
    parts = urlsplit(s3_to_store(uri, cfg, s3))
    if parts.scheme != "pvc" or parts.netloc != cfg.artifact_claim:
        also = f" or {s3.url}/<path> (the hub's S3 copy)" if s3 is not None else ""
        return "", (f"{where}: {redact(uri)!r} is not in the hub's artifact store: a round can only start from "
                    f"pvc://{cfg.artifact_claim}/<path>{also} (where finished rounds store their models)")
    rel = parts.path.lstrip("/")
    if not rel or any(seg in ("", ".", "..") for seg in rel.split("/")):
        return "", f"{where}: {redact(uri)!r} must name a file inside the artifact store, without '.' or '..' segments"
    return posixpath.join(cfg.artifact_dir, rel), ""


async def resolve(kube: Kube, body: dict[str, Any], spec: FederatedRoundSpec, cfg: AggregatorConfig,
                  s3: S3ResultStore | None = None) -> Initial:
    initial = spec.model.initial_model
    if initial is None:
        return Initial()
    if initial.model_release_ref is not None:
        ns, name = body["metadata"]["namespace"], initial.model_release_ref.name
        where = f"{FIELD}.modelReleaseRef"
        release = await kube.get_or_none(Ref(r.API_VERSION, r.MODEL_RELEASES.plural, ns, name))
        if release is None:
            return Initial(f"{where}: ModelRelease {name} does not exist in namespace {ns}; create it first or "
                           "remove initialModel to start from random weights")
        if _revoked(release):
            return Initial(f"{where}: ModelRelease {name} is revoked; start from another release")
        artifact = (release.get("spec") or {}).get("artifact") or {}
        uri, digest = artifact.get("storageUri", ""), artifact.get("digest", "")
        where = f"{where} (ModelRelease {name} spec.artifact.storageUri)"
    else:
        uri, digest, where = initial.storage_uri or "", initial.digest or "", f"{FIELD}.storageUri"
    path, problem = store_path(uri, cfg, where, s3)
    if problem:
        return Initial(problem)
    # The hub mounts the store at the same path as the SuperLink: when it is mounted here, a
    # missing file is said now rather than after the SuperLink has started.
    if pathlib.Path(cfg.artifact_dir).is_dir() and not pathlib.Path(path).is_file():
        return Initial(f"{where}: {redact(uri)} does not exist in the artifact store"
                       + (f" (looked for the claim's copy at {path}; the SuperLink reads the claim, not S3)"
                          if uri.startswith("s3:") else ""))
    return Initial(run_config={"initial-model": path, "initial-model-sha256": digest.removeprefix("sha256:")})
