"""ModelRelease: a trained model, signed, anchored on-chain and promoted through stages (namespaced)."""

from __future__ import annotations

import datetime as dt
import enum

from pydantic import ConfigDict, Field

from .base import Condition, Decimal, Digest, DNSLabel, FedcareModel, StatusModel
from .federated_round import immutable
from .round_assignment import RoundRef


class Stage(str, enum.Enum):
    CANDIDATE = "Candidate"
    STAGING = "Staging"
    PRODUCTION = "Production"
    ARCHIVED = "Archived"


class Artifact(FedcareModel):
    storage_uri: str = Field(min_length=1, max_length=2048, description="Where the model file is.")
    digest: Digest = Field(description="sha256 of the model file: sha256:<64 lower-case hex>.")


class ModelFormat(FedcareModel):
    name: str = Field(default="safetensors", max_length=63, description="File format.")
    version: str = Field(default="", max_length=63, description="Format version.")


class Provenance(FedcareModel):
    federated_round_ref: RoundRef | None = Field(default=None, description="The round that produced the model.")
    rounds: int = Field(default=0, ge=0, description="Server rounds aggregated.")
    participants: list[DNSLabel] = Field(default_factory=list, max_length=1000, description="Contributing sites.")
    epsilon: Decimal | None = Field(default=None, description="Largest differential-privacy epsilon spent by a "
                                                              "site, when DP was on.")


class AnchorSpec(FedcareModel):
    chain_id: int = Field(ge=1, description="EVM chain id.")
    contract_address: str = Field(pattern=r"^0x[0-9a-fA-F]{40}$", description="ModelRegistry contract address.")
    required_confirmations: int = Field(default=2, ge=0, le=1000, description="Blocks to wait for.")


class Revocation(FedcareModel):
    model_config = ConfigDict(json_schema_extra={"x-kubernetes-validations": [{
        "rule": "!has(oldSelf.revoked) || !oldSelf.revoked || (has(self.revoked) && self.revoked)",
        "message": "a revocation cannot be undone; create a new release instead"}]})

    revoked: bool = Field(default=False, description="One-way: once true it stays true.")
    reason: str = Field(default="", max_length=1024, description="Why the release was revoked.")


#: One-way revocation over the whole spec: removing ``revocation`` (or unsetting ``revoked``) is refused
#: too, which the rule on the Revocation object alone cannot see (it does not run when the field is gone).
REVOCATION_STAYS = {
    "rule": "!has(oldSelf.revocation) || !has(oldSelf.revocation.revoked) || !oldSelf.revocation.revoked || "
            "(has(self.revocation) && has(self.revocation.revoked) && self.revocation.revoked)",
    "message": "a revocation cannot be removed or undone; create a new release instead"}


class ModelReleaseSpec(FedcareModel):
    model_config = ConfigDict(json_schema_extra={"x-kubernetes-validations": [REVOCATION_STAYS]})

    model_name: DNSLabel = Field(description="Model name; one Production release per name.",
                                 json_schema_extra=immutable("modelName is immutable"))
    version: str = Field(pattern=r"^[0-9A-Za-z][0-9A-Za-z.+_-]{0,62}$", description="Version, for example 1.2.0.",
                         json_schema_extra=immutable("version is immutable"))
    artifact: Artifact = Field(description="The model file, pinned by digest.",
                               json_schema_extra=immutable("artifact is immutable; create a new release"))
    format: ModelFormat = Field(default_factory=ModelFormat, description="Model file format.")
    provenance: Provenance = Field(default_factory=Provenance, description="Where the model came from.")
    anchor: AnchorSpec | None = Field(default=None, description="Where to anchor the release on-chain.")
    stage: Stage = Field(default=Stage.CANDIDATE, description="Requested stage.")
    revocation: Revocation = Field(default_factory=Revocation, description="Revocation; one-way.")


class ReleasePhase(str, enum.Enum):
    PENDING = "Pending"
    VERIFIED = "Verified"
    ANCHORED = "Anchored"
    REVOKED = "Revoked"
    FAILED = "Failed"
    INVALID = "Invalid"


class ChainRecord(StatusModel):
    chain_id: int | None = Field(default=None, ge=1, description="Chain the record lives on.")
    contract_address: str = Field(default="", description="ModelRegistry contract.")
    pending_tx: str = Field(default="", description="Transaction sent and not yet confirmed (followed by hash "
                                                    "after a restart, never re-sent blindly).")
    pending_nonce: int | None = Field(default=None, ge=0, description="Nonce of the pending transaction.")
    tx_hash: str = Field(default="", description="Anchoring transaction hash.")
    block_number: int | None = Field(default=None, ge=0, description="Block that included it.")
    confirmations: int = Field(default=0, ge=0, description="Confirmations seen.")
    anchored_time: dt.datetime | None = Field(default=None, description="When it reached the required "
                                                                        "confirmations.")


class RevocationRecord(StatusModel):
    pending_tx: str = Field(default="", description="Revocation transaction sent and not yet confirmed.")
    pending_nonce: int | None = Field(default=None, ge=0, description="Nonce of the pending transaction.")
    tx_hash: str = Field(default="", description="Revocation transaction hash.")
    block_number: int | None = Field(default=None, ge=0, description="Block that included it.")
    revoked_time: dt.datetime | None = Field(default=None, description="When the revocation was confirmed.")


class ReleaseSignature(StatusModel):
    key_id: str = Field(default="", description="Signing key and version, e.g. vault:transit/fedcare-release:v1.")
    algorithm: str = Field(default="", description="Signature algorithm (ed25519).")
    signature: str = Field(default="", description="Base64 signature over the release digest "
                                                   "(fedcare-release-digest/v1, see docs/chain.md).")


class StageChange(StatusModel):
    stage: Stage = Field(description="The stage that took effect.")
    time: dt.datetime = Field(description="When it took effect.")
    reason: str = Field(default="", description="Why (Promoted, Superseded, Revoked).")


class ModelReleaseStatus(StatusModel):
    observed_generation: int | None = Field(default=None, ge=0, description="Last spec generation handled.")
    phase: ReleasePhase | None = Field(default=None, description="Summary of the conditions, for display.")
    conditions: list[Condition] = Field(default_factory=list, description="Current state, one entry per type.")
    verified_digest: str = Field(default="", description="Digest recomputed from the artifact.")
    provenance_root: str = Field(default="", description="Merkle root over the round's provenance (hex).")
    round_id: str = Field(default="", description="sha256 of <namespace>/<round> (hex), as anchored.")
    signature: ReleaseSignature | None = Field(default=None, description="Signature over the release digest.")
    anchor: ChainRecord | None = Field(default=None, description="On-chain record.")
    revocation: RevocationRecord | None = Field(default=None, description="On-chain revocation.")
    stage: Stage | None = Field(default=None, description="The stage in effect (spec.stage once allowed).")
    stage_history: list[StageChange] = Field(default_factory=list, max_length=1000,
                                             description="Every stage that took effect, oldest first; append-only.")
    superseded_by: str = Field(default="", description="The release that replaced this one in Production.")
