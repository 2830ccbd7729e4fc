"""Each kind's resource, spec/status models, printer columns and top-level CEL rules."""

from __future__ import annotations

from dataclasses import dataclass, field

from pydantic import BaseModel

from . import resources as r
from .federated_round import FederatedRoundSpec, FederatedRoundStatus
from .hospital_node import MAX_SITE_NAME, HospitalNodeSpec, HospitalNodeStatus
from .model_release import ModelReleaseSpec, ModelReleaseStatus
from .round_assignment import RoundAssignmentSpec, RoundAssignmentStatus


def _cond(ctype: str) -> str:
    return f'.status.conditions[?(@.type=="{ctype}")].status'


def column(name: str, path: str, type_: str = "string", description: str = "", priority: int = 0) -> dict:
    col = {"name": name, "type": type_, "jsonPath": path}
    if description:
        col["description"] = description
    if priority:
        col["priority"] = priority
    return col


AGE = column("Age", ".metadata.creationTimestamp", "date")


@dataclass(frozen=True)
class Kind:
    resource: r.Resource
    spec: type[BaseModel]
    status: type[BaseModel]
    columns: tuple[dict, ...]
    rules: tuple[dict, ...] = field(default=())   # CEL rules on the whole object (metadata included)


HOSPITAL_NODE = Kind(r.HOSPITAL_NODES, HospitalNodeSpec, HospitalNodeStatus, (
    column("Phase", ".status.phase"),
    column("Ready", _cond("Ready"), description="Enrolled, heartbeating and GPUs healthy"),
    column("Available", _cond("Available"), description="Agent Lease renewed in time"),
    column("GPUs", ".status.gpuSummary", description="Healthy/total GPUs reported by the agent"),
    column("Cordoned", ".spec.cordoned", "boolean"),
    column("Heartbeat", ".status.lastHeartbeatTime", "date", "Time since the last Lease renewal seen"),
    AGE,
    column("Namespace", ".status.siteNamespace", priority=1),
), rules=({
    "rule": f"self.metadata.name.size() <= {MAX_SITE_NAME}",
    "message": f"metadata.name is the site id and must be at most {MAX_SITE_NAME} characters "
               "(it prefixes the site namespace fedcare-site-<name>)",
}, {
    "rule": "self.metadata.name.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?$')",
    "message": "metadata.name is the site id and must be a DNS-1123 label (lower-case letters, digits and '-', "
               "no dots): it names the site namespace fedcare-site-<name>",
}))

FEDERATED_ROUND = Kind(r.FEDERATED_ROUNDS, FederatedRoundSpec, FederatedRoundStatus, (
    column("Phase", ".status.phase"),
    column("Ready", _cond("Ready")),
    column("Sites", ".status.sitesReady", description="Sites running / participants"),
    column("Round", ".status.serverRound", description="Server rounds aggregated / requested"),
    column("Quorum", ".spec.participants.minAvailable", "integer", "Sites required (k)", priority=1),
    column("Eligible", ".status.eligibleSites", "integer", "Sites that could run it at admission", priority=1),
    column("Run", ".status.runId", description="Flower run id", priority=1),
    AGE,
))

ROUND_ASSIGNMENT = Kind(r.ROUND_ASSIGNMENTS, RoundAssignmentSpec, RoundAssignmentStatus, (
    column("Site", ".spec.nodeName"),
    column("Round", ".spec.roundRef.name"),
    column("Attempt", ".spec.attempt", "integer"),
    column("Phase", ".status.phase"),
    column("Ready", _cond("Ready")),
    column("Restarts", ".status.restarts", "integer"),
    AGE,
))

MODEL_RELEASE = Kind(r.MODEL_RELEASES, ModelReleaseSpec, ModelReleaseStatus, (
    column("Model", ".spec.modelName"),
    column("Version", ".spec.version"),
    column("Stage", ".status.stage", description="Stage in effect"),
    column("Phase", ".status.phase"),
    column("Ready", _cond("Ready")),
    column("Tx", ".status.anchor.txHash", description="Anchoring transaction"),
    AGE,
    column("Requested", ".spec.stage", priority=1),
    column("Digest", ".spec.artifact.digest", priority=1),
))

KINDS: tuple[Kind, ...] = (HOSPITAL_NODE, FEDERATED_ROUND, ROUND_ASSIGNMENT, MODEL_RELEASE)
BY_KIND: dict[str, Kind] = {k.resource.kind: k for k in KINDS}
