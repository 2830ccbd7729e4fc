"""RoundAssignment: one site's share of a FederatedRound (lives in the site's hub namespace).

The hub writes the spec; the site agent alone writes the status (conditions included).
"""

from __future__ import annotations

import datetime as dt
import enum

from pydantic import Field

from .base import Condition, DNSLabel, DNSSubdomain, FedcareModel, StatusModel
from .federated_round import TrainingSpec, immutable


class RoundRef(FedcareModel):
    namespace: DNSLabel = Field(description="Namespace of the FederatedRound.")
    name: DNSSubdomain = Field(description="Name of the FederatedRound.")
    uid: str = Field(default="", max_length=64, description="UID of the FederatedRound, to detect re-creation.")


class SuperLinkEndpoint(FedcareModel):
    address: str = Field(pattern=r"^[A-Za-z0-9.-]+:[0-9]{1,5}$", max_length=260,
                         description="host:port of the round's SuperLink Fleet API.")
    insecure: bool = Field(default=False, description="Development only: the SuperLink serves plaintext (no TLS, "
                                                      "no SuperNode authentication). Sites refuse it unless their "
                                                      "agent runs with --insecure-flower.")
    ca_bundle: str = Field(default="", max_length=65536, description="PEM CA bundle that signed the SuperLink's "
                                                                     "certificate.")


class RoundAssignmentSpec(FedcareModel):
    round_ref: RoundRef = Field(description="The FederatedRound this work belongs to.",
                                json_schema_extra=immutable("roundRef is immutable"))
    node_name: DNSLabel = Field(description="The HospitalNode (site) that must do the work.",
                                json_schema_extra=immutable("nodeName is immutable"))
    attempt: int = Field(default=1, ge=1, description="Fencing token: the agent ignores older attempts.",
                         json_schema_extra=immutable("attempt is immutable; the hub creates a new assignment"))
    super_link: SuperLinkEndpoint | None = Field(default=None, description="Where the SuperNode connects.")
    training: TrainingSpec = Field(description="Local training settings, resolved by the hub.")
    node_config: dict[str, str] = Field(default_factory=dict, description="Passed to the SuperNode as "
                                                                          "--node-config.")
    deadline: dt.datetime | None = Field(default=None, description="Absolute deadline, identical across sites.")
    credentials_ref: str = Field(default="", max_length=512, description="Vault path of the round credential.")
    suspend: bool = Field(default=False, description="Stop the site's training pod without failing.")


class AssignmentPhase(str, enum.Enum):
    PENDING = "Pending"
    ACCEPTED = "Accepted"
    REJECTED = "Rejected"
    RUNNING = "Running"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"


class NamedValue(StatusModel):
    name: str = Field(max_length=63, description="Metric name.")
    value: str = Field(max_length=64, description="Metric value as a decimal string.")


class RoundAssignmentStatus(StatusModel):
    observed_generation: int | None = Field(default=None, ge=0, description="Last spec generation the agent "
                                                                            "handled.")
    phase: AssignmentPhase | None = Field(default=None, description="Summary, for display.")
    conditions: list[Condition] = Field(default_factory=list, description="Current state, written by the agent.")
    message: str = Field(default="", max_length=4096, description="Why the agent accepted or rejected the work.")
    agent_id: str = Field(default="", max_length=253, description="Identity of the agent that wrote this status.")
    attempt: int = Field(default=0, ge=0, description="The spec.attempt this status reflects.")
    super_node_id: str = Field(default="", max_length=64, description="Flower node id of the site's SuperNode.")
    last_server_round: int = Field(default=0, ge=0, description="Last server round the site trained.")
    num_examples: int = Field(default=0, ge=0, description="Training examples: the aggregation weight.")
    metrics: list[NamedValue] = Field(default_factory=list, description="Latest local metrics.")
    pod_name: str = Field(default="", max_length=253, description="The SuperNode training pod in the site cluster.")
    restarts: int = Field(default=0, ge=0, description="Container restarts plus pod re-creations.")
    retries: int = Field(default=0, ge=0, description="Times the agent re-created a crashed training pod.")
    exit_reason: str = Field(default="", max_length=1024, description="Why the training container last ended.")
