"""FederatedRound: one federated training run across selected hospital sites (namespaced)."""

from __future__ import annotations

import datetime as dt
import enum

from pydantic import ConfigDict, Field, model_validator

from .base import Condition, Decimal, Digest, DNSLabel, DNSSubdomain, FedcareModel, LabelSelector, StatusModel

#: Architectures the training image (workloads/) knows, and the run-config ``model`` each maps to.
ARCHITECTURES = {"ultrasound-cnn-small": "small", "ultrasound-cnn-large": "large"}

IMAGE_WITH_DIGEST = r"^[a-z0-9]+([._/:-][a-z0-9]+)*@sha256:[a-f0-9]{64}$"


def immutable(message: str) -> dict:
    return {"x-kubernetes-validations": [{"rule": "self == oldSelf", "message": message}]}


class ModelReleaseRef(FedcareModel):
    name: DNSSubdomain = Field(description="Name of a ModelRelease in the round's namespace.")


class InitialModel(FedcareModel):
    """Where the starting weights come from: a released model, or a digest-pinned artifact. Empty: random."""

    model_config = ConfigDict(json_schema_extra={"x-kubernetes-validations": [{
        "rule": "!(has(self.modelReleaseRef) && has(self.storageUri))",
        "message": "set either modelReleaseRef or storageUri+digest, not both"}, {
        "rule": "has(self.storageUri) == has(self.digest)",
        "message": "storageUri and digest go together: an artifact must be pinned by its sha256 digest"}]})

    model_release_ref: ModelReleaseRef | None = Field(default=None, description="Start from this release.")
    storage_uri: str | None = Field(default=None, max_length=2048, description="Start from this artifact.")
    digest: Digest | None = Field(default=None, description="sha256 digest of the artifact at storageUri.")


class ModelSpec(FedcareModel):
    architecture: str = Field(default="ultrasound-cnn-small", pattern=r"^[a-z0-9][a-z0-9-]*$", max_length=63,
                              description="Model architecture known to the training image, for example "
                                          "ultrasound-cnn-small or ultrasound-cnn-large.")
    classes: list[DNSLabel] = Field(default_factory=lambda: ["normal", "benign", "malignant"], min_length=2,
                                    max_length=64, description="Class labels, in output order.")
    input_size: int = Field(default=64, ge=16, le=1024, description="Square input size in pixels (grayscale).")
    initial_model: InitialModel | None = Field(default=None, description="Initial weights; random when unset.")


class Participants(FedcareModel):
    """Which HospitalNodes take part, and how many must."""

    model_config = ConfigDict(json_schema_extra={"x-kubernetes-validations": [{
        "rule": "!has(self.maxParticipants) || self.minAvailable <= self.maxParticipants",
        "message": "participants.minAvailable must not exceed participants.maxParticipants: lower minAvailable "
                   "or raise maxParticipants",
        "fieldPath": ".minAvailable"}]})

    selector: LabelSelector = Field(default_factory=LabelSelector,
                                    description="Label selector over HospitalNodes. Empty selects every site.")
    min_available: int = Field(ge=1, le=1000, description="Quorum: sites that must be selected and reply for a "
                                                          "round to count.")
    max_participants: int | None = Field(default=None, ge=1, le=1000,
                                         description="Cap on selected sites. Unset: every eligible site.")



class StrategyName(str, enum.Enum):
    FED_AVG = "FedAvg"
    FED_PROX = "FedProx"
    FED_ADAM = "FedAdam"


class StrategySpec(FedcareModel):
    name: StrategyName = Field(default=StrategyName.FED_AVG, description="Aggregation strategy.")
    fraction_train: Decimal = Field(default="1.0", description="Fraction of connected sites sampled to train "
                                                               "each round (decimal string).")
    fraction_evaluate: Decimal = Field(default="0.0", description="Fraction sampled for federated evaluation.")
    min_train_nodes: int | None = Field(default=None, ge=1, le=1000,
                                        description="Successful replies a server round needs. Default: "
                                                    "participants.minAvailable.")
    proximal_mu: Decimal = Field(default="0.01", description="FedProx proximal term (FedProx only).")
    server_learning_rate: Decimal = Field(default="0.1", description="Server-side learning rate (FedAdam only).")
    max_update_norm: str = Field(default="100", pattern=r"^([1-9][0-9]{0,8}(\.[0-9]{1,6})?|0\.[0-9]{0,5}[1-9])$",
                                 max_length=16, description="L2 bound on each site's update (its distance to "
                                                            "the global model): larger updates are clipped by "
                                                            "the ServerApp before aggregation; recorded in the "
                                                            "model card (decimal string).")
    config: dict[str, str] = Field(default_factory=dict, description="Extra run-config keys for the ServerApp.")


class TrainingSpec(FedcareModel):
    image: str = Field(pattern=IMAGE_WITH_DIGEST, max_length=512,
                       description="Training image, pinned by digest (name@sha256:…).")
    epochs: int = Field(default=1, ge=1, le=1000, description="Local epochs per server round.")
    batch_size: int = Field(default=32, ge=1, le=65536, description="Local batch size.")
    learning_rate: Decimal = Field(default="0.001", description="Local learning rate (decimal string).")
    gpus_per_site: int = Field(default=1, ge=0, le=16, description="GPUs each site's training pod requests.")
    gpu_product: str = Field(default="", max_length=256, description="Required GPU product. Empty: any.")
    max_restarts: int = Field(default=3, ge=0, le=100,
                              description="Times a site's crashed training pod is re-created before the site's "
                                          "assignment fails.")


class DifferentialPrivacy(FedcareModel):
    enabled: bool = Field(default=False, description="Train with DP-SGD at each site.")
    noise_multiplier: Decimal = Field(default="1.0", description="Gaussian noise multiplier.")
    max_grad_norm: Decimal = Field(default="1.0", description="Per-sample gradient clipping norm.")
    target_epsilon: Decimal | None = Field(default=None, description="Budget; the round fails when a site would "
                                                                     "exceed it.")
    delta: Decimal = Field(default="1e-5", description="The accountant's delta.")


class PrivacySpec(FedcareModel):
    differential_privacy: DifferentialPrivacy = Field(default_factory=DifferentialPrivacy,
                                                      description="Differential privacy settings.")


class ReleaseTemplate(FedcareModel):
    create: bool = Field(default=False, description="Create a ModelRelease from the final model.")
    model_name: DNSLabel | None = Field(default=None, description="modelName of the release. Default: the round's "
                                                                  "name.")


class FederatedRoundSpec(FedcareModel):
    model_config = ConfigDict(json_schema_extra={"x-kubernetes-validations": [{
        "rule": "!has(self.strategy) || !has(self.strategy.minTrainNodes) || "
                "self.strategy.minTrainNodes <= self.participants.minAvailable",
        "message": "strategy.minTrainNodes must not exceed participants.minAvailable: a round could never "
                   "collect that many replies", "fieldPath": ".strategy.minTrainNodes"}]})

    model: ModelSpec = Field(default_factory=ModelSpec, description="What is trained.")
    participants: Participants = Field(description="Which sites take part and the quorum.")
    rounds: int = Field(ge=1, le=10000, description="Number of server rounds.",
                        json_schema_extra=immutable("rounds is immutable; create a new FederatedRound"))
    strategy: StrategySpec = Field(default_factory=StrategySpec, description="Aggregation strategy.")
    training: TrainingSpec = Field(description="Local training at each site.")
    privacy: PrivacySpec = Field(default_factory=PrivacySpec, description="Privacy settings.")
    round_timeout_seconds: int = Field(default=600, ge=10, le=86400,
                                       description="How long a server round waits for replies.")
    active_deadline_seconds: int = Field(default=86400, ge=60, le=2592000,
                                         description="Wall-clock limit for the whole run, counted from admission. "
                                                     "Past it the round fails with DeadlineExceeded.",
                                         json_schema_extra=immutable("activeDeadlineSeconds is immutable"))
    release: ReleaseTemplate = Field(default_factory=ReleaseTemplate, description="What to release at the end.")
    suspend: bool = Field(default=False, description="Pause the run; resuming starts the deadline anew.")
    ttl_seconds_after_finished: int | None = Field(default=None, ge=0, le=31536000,
                                                   description="Delete the round this long after it succeeded or "
                                                               "failed. Unset: keep it.")

    @model_validator(mode="after")
    def _known_architecture(self) -> "FederatedRoundSpec":
        if self.model.architecture not in ARCHITECTURES:
            raise ValueError(f"model.architecture must be one of {', '.join(sorted(ARCHITECTURES))}: the training "
                             "image knows no other")
        return self


class RoundPhase(str, enum.Enum):
    PENDING = "Pending"
    SCHEDULING = "Scheduling"
    RUNNING = "Running"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    SUSPENDED = "Suspended"
    INVALID = "Invalid"


class ParticipantStatus(StatusModel):
    node: str = Field(description="HospitalNode name.")
    assignment: str = Field(default="", description="RoundAssignment name in the site namespace.")
    state: str = Field(default="Selected", description="Hub's view: Selected, Accepted, Running, Rejected, "
                                                       "Failed, Dropped or Finished.")
    last_round: int = Field(default=0, ge=0, description="Last server round the site contributed to.")
    reason: str = Field(default="", description="Why the site is in that state.")
    restarts: int = Field(default=0, ge=0, description="Training pod restarts and re-creations at the site.")
    epsilon: str = Field(default="", description="Differential-privacy epsilon spent by the site (DP rounds).")


class SiteRoundResult(StatusModel):
    site: str = Field(description="HospitalNode name.")
    status: str = Field(description="ok, failed (an error reply) or dropped (no reply in time).")
    examples: int = Field(default=0, ge=0, description="Training examples the site used.")
    reason: str = Field(default="", max_length=512, description="Why the site did not contribute.")


class ServerRoundStatus(StatusModel):
    round: int = Field(ge=0, description="Server round (1-based).")
    loss: str = Field(default="", description="Held-out loss of the global model after the round.")
    accuracy: str = Field(default="", description="Held-out accuracy of the global model after the round.")
    auroc: str = Field(default="", description="Held-out macro AUROC of the global model after the round.")
    train_loss: str = Field(default="", description="Example-weighted training loss reported by the sites.")
    examples: int = Field(default=0, ge=0, description="Training examples aggregated.")
    sites: list[SiteRoundResult] = Field(default_factory=list, description="What each site did in this round.")


class RoundResult(StatusModel):
    storage_uri: str = Field(default="", description="Where the final model is.")
    digest: str = Field(default="", description="sha256 digest of the final model.")
    provenance_digest: str = Field(default="", description="sha256 digest of provenance.json.")
    model_release_ref: str = Field(default="", description="The ModelRelease created from it.")


class AggregatorStatus(StatusModel):
    pod: str = Field(default="", description="The SuperLink pod.")
    service: str = Field(default="", description="The SuperLink Service (the Fleet address sites dial).")
    address: str = Field(default="", description="Fleet API address given to the sites.")
    control_address: str = Field(default="", description="Control API address the hub submits the run to.")


class FederatedRoundStatus(StatusModel):
    observed_generation: int | None = Field(default=None, ge=0, description="Last spec generation handled.")
    phase: RoundPhase | None = Field(default=None, description="Summary of the conditions, for display.")
    conditions: list[Condition] = Field(default_factory=list, description="Current state, one entry per type.")
    eligible_sites: int | None = Field(default=None, ge=0, description="Sites that currently match the selector "
                                                                       "and can run the round.")
    selected_sites: int | None = Field(default=None, ge=0, description="Sites selected at admission.")
    participants: list[ParticipantStatus] = Field(default_factory=list, description="Per-site state.")
    current_round: int = Field(default=0, ge=0, description="Server round in progress.")
    rounds_completed: int = Field(default=0, ge=0, description="Server rounds aggregated.")
    start_time: dt.datetime | None = Field(default=None, description="When the run was admitted.")
    completion_time: dt.datetime | None = Field(default=None, description="When the run finished.")
    result: RoundResult | None = Field(default=None, description="The aggregated model.")
    attempt: int = Field(default=0, ge=0, description="Dispatch attempt (fencing token of the assignments); "
                                                      "bumped when a suspended round resumes.")
    deadline: dt.datetime | None = Field(default=None, description="Absolute deadline shared by every site.")
    sites_ready: str = Field(default="", description="Sites running / participants, for display.")
    server_round: str = Field(default="", description="Server round i/n, for display.")
    aggregator: AggregatorStatus | None = Field(default=None, description="The round's SuperLink.")
    run_id: str = Field(default="", description="Flower run id on the round's SuperLink.")
    run_status: str = Field(default="", description="Flower run status (pending, running, finished:…).")
    run_submitting: bool = Field(default=False, description="A run may have been submitted without its id "
                                                            "recorded (the hub lists the SuperLink's runs first).")
    server_rounds: list[ServerRoundStatus] = Field(default_factory=list, description="Metrics per server round.")
    suspended: bool = Field(default=False, description="The run is stopped because spec.suspend is true.")
    cleaned_up: bool = Field(default=False, description="A finished round's SuperLink and assignments are gone.")
