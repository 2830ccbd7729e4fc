"""Verify a release before anything is signed or anchored: the round, the artifact, the provenance.

Used by the hub (hub/release_service.py). Each refusal is a ``Refused`` with a condition
reason and a message that says which field or file is wrong and what to do; values that
could be anything (file contents, URIs' query strings) are never echoed in full.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from ..api.model_release import ModelReleaseSpec
from . import artifact as art
from . import merkle
from .digest import round_id as make_round_id


class Refused(Exception):
    def __init__(self, reason: str, message: str, *, transient: bool = False) -> None:
        super().__init__(message)
        self.reason = reason
        self.transient = transient


@dataclass(frozen=True)
class VerifiedRelease:
    model_sha256: str
    provenance_root: str
    round_id: str
    proofs: dict[str, Any]


def check_round(spec: ModelReleaseSpec, round_obj: dict[str, Any] | None) -> None:
    """The named FederatedRound exists, is the same object, has succeeded and recorded this model."""
    ref = spec.provenance.federated_round_ref
    if ref is None:
        return
    where = f"spec.provenance.federatedRoundRef ({ref.namespace}/{ref.name})"
    if round_obj is None:
        raise Refused("RoundNotFound", f"{where}: the FederatedRound does not exist; release a model of an "
                                       "existing, succeeded round", transient=True)
    if ref.uid and round_obj["metadata"].get("uid") != ref.uid:
        raise Refused("RoundNotFound", f"{where}: the FederatedRound was re-created (uid differs); the model "
                                       "came from the deleted one")
    status = round_obj.get("status") or {}
    phase = status.get("phase") or "Pending"
    if phase != "Succeeded":
        raise Refused("RoundNotSucceeded", f"{where} is {phase}, not Succeeded; only the model of a succeeded "
                                           "round can be released", transient=phase in ("Pending", "Running"))
    recorded = ((status.get("result") or {}).get("digest") or "")
    if recorded and recorded != spec.artifact.digest:
        raise Refused("DigestMismatch", f"spec.artifact.digest differs from the digest the round recorded in "
                                        f"status.result.digest ({recorded}); release the round's model")


async def verify(spec: ModelReleaseSpec, namespace: str, round_obj: dict[str, Any] | None,
                 policy: art.FetchPolicy = art.FetchPolicy()) -> VerifiedRelease:
    check_round(spec, round_obj)
    uri = spec.artifact.storage_uri
    try:
        art.check_uri(uri)
        actual = await art.sha256_uri(uri, policy)
    except art.ArtifactError as err:
        raise Refused(err.reason, f"spec.artifact.storageUri: {err}", transient=err.transient) from None
    expected = spec.artifact.digest.removeprefix("sha256:")
    if actual != expected:
        raise Refused("DigestMismatch", f"the artifact's sha256 is {actual}, spec.artifact.digest says "
                                        f"{expected}; the file changed or the digest is wrong. Nothing was "
                                        "signed or anchored.")
    prov_uri = art.sibling(uri, art.PROVENANCE)
    try:
        raw = await art.read_uri(prov_uri, policy)
    except art.ArtifactError as err:
        raise Refused("ProvenanceUnreadable", f"{art.PROVENANCE} beside the artifact: {err}",
                      transient=err.transient) from None
    if raw is None:
        raise Refused("ProvenanceNotFound", f"no {art.PROVENANCE} beside the artifact ({prov_uri[:200]}); the "
                                            "round's ServerApp writes it next to model.safetensors")
    try:
        doc = json.loads(raw)
        leaves = merkle.leaves_from_provenance(doc)
    except (ValueError, merkle.ProvenanceError) as err:
        raise Refused("ProvenanceInvalid", f"{art.PROVENANCE}: {str(err)[:300]}") from None
    final = merkle.final_model_sha256(doc)
    if final != actual:
        raise Refused("ProvenanceMismatch", f"{art.PROVENANCE} records {final} as the last round's global "
                                            f"model, but the artifact's sha256 is {actual}: the provenance is "
                                            "not this model's")
    if doc.get("status") not in (None, "completed"):
        raise Refused("ProvenanceMismatch", f"{art.PROVENANCE} has status {str(doc.get('status'))[:40]!r}, not "
                                            "completed: the run did not finish")
    sites = {leaf.site for leaf in leaves if leaf.kind == "update"}
    missing = sorted(set(spec.provenance.participants) - sites)
    if missing:
        raise Refused("ProvenanceMismatch", f"spec.provenance.participants names {', '.join(missing)}, but "
                                            f"{art.PROVENANCE} holds no update from them")
    ref = spec.provenance.federated_round_ref
    rid = make_round_id(ref.namespace, ref.name) if ref else make_round_id(None, None)
    proofs = merkle.proof_document(leaves, actual)
    return VerifiedRelease(actual, proofs["root"], rid, proofs)
