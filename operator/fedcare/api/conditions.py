"""Condition types, reasons and the pure helpers that compute conditions.

Conditions are the state of every fedcare object; ``phase`` is only a summary derived
from them. Each condition type has exactly one writer (the hub or the site agent): the
writer is recorded here so a reviewer can check it at a glance.
"""

from __future__ import annotations

import datetime as dt
import enum
from collections.abc import Iterable
from typing import Any

from .base import Condition, ConditionStatus


class Writer(str, enum.Enum):
    HUB = "hub"
    AGENT = "agent"


class ConditionType(str, enum.Enum):
    READY = "Ready"                     # every kind, hub; what kstatus tools (Argo CD, Flux) read
    ENROLLED = "Enrolled"               # HospitalNode, hub: site namespace and identity exist
    AVAILABLE = "Available"             # HospitalNode, hub: the agent's Lease is being renewed
    GPU_READY = "GPUReady"              # HospitalNode, agent: NVML health of the site's GPUs
    ACCEPTED = "Accepted"               # RoundAssignment, agent: the site took the work or refused it
    VALID = "Valid"                     # FederatedRound/ModelRelease, hub: the spec passed validation
    VERIFIED = "Verified"               # ModelRelease, hub: artifact digest, round and provenance checked
    SIGNED = "Signed"                   # ModelRelease, hub: release digest signed
    ANCHORED = "Anchored"               # ModelRelease, hub: on chain with the required confirmations
    PROMOTED = "Promoted"               # ModelRelease, hub: spec.stage in effect (or why not)
    REVOKED = "Revoked"                 # ModelRelease, hub: revocation confirmed on chain
    CREDENTIALS_READY = "CredentialsReady"  # HospitalNode, hub: the site's Vault path, policy and role exist
    # FederatedRound execution, hub (hub/round_scheduler.py)
    PARTICIPANTS_SELECTED = "ParticipantsSelected"
    AGGREGATOR_READY = "AggregatorReady"
    ASSIGNMENTS_DISPATCHED = "AssignmentsDispatched"
    QUORUM_HEALTHY = "QuorumHealthy"
    COMPLETE = "Complete"
    FAILED = "Failed"


#: Who may write each condition type, per kind. Tests assert that writers only touch their own.
WRITERS: dict[tuple[str, str], Writer] = {
    ("HospitalNode", ConditionType.READY.value): Writer.HUB,
    ("HospitalNode", ConditionType.ENROLLED.value): Writer.HUB,
    ("HospitalNode", ConditionType.AVAILABLE.value): Writer.HUB,
    ("HospitalNode", ConditionType.GPU_READY.value): Writer.AGENT,
    ("HospitalNode", ConditionType.CREDENTIALS_READY.value): Writer.HUB,
    ("FederatedRound", ConditionType.READY.value): Writer.HUB,
    ("FederatedRound", ConditionType.VALID.value): Writer.HUB,
    ("FederatedRound", ConditionType.PARTICIPANTS_SELECTED.value): Writer.HUB,
    ("FederatedRound", ConditionType.AGGREGATOR_READY.value): Writer.HUB,
    ("FederatedRound", ConditionType.ASSIGNMENTS_DISPATCHED.value): Writer.HUB,
    ("FederatedRound", ConditionType.QUORUM_HEALTHY.value): Writer.HUB,
    ("FederatedRound", ConditionType.COMPLETE.value): Writer.HUB,
    ("FederatedRound", ConditionType.FAILED.value): Writer.HUB,
    ("ModelRelease", ConditionType.READY.value): Writer.HUB,
    ("ModelRelease", ConditionType.VALID.value): Writer.HUB,
    ("ModelRelease", ConditionType.VERIFIED.value): Writer.HUB,
    ("ModelRelease", ConditionType.SIGNED.value): Writer.HUB,
    ("ModelRelease", ConditionType.ANCHORED.value): Writer.HUB,
    ("ModelRelease", ConditionType.PROMOTED.value): Writer.HUB,
    ("ModelRelease", ConditionType.REVOKED.value): Writer.HUB,
    # A RoundAssignment's status belongs to the site agent alone (the hub writes its spec).
    ("RoundAssignment", ConditionType.READY.value): Writer.AGENT,
    ("RoundAssignment", ConditionType.ACCEPTED.value): Writer.AGENT,
}


def owned(kind: str, writer: Writer) -> frozenset[str]:
    return frozenset(ctype for (k, ctype), w in WRITERS.items() if k == kind and w is writer)


class Reason(str, enum.Enum):
    # Ready / Valid
    RECONCILED = "Reconciled"
    INVALID_SPEC = "InvalidSpec"
    AWAITING_SCHEDULER = "AwaitingScheduler"
    AWAITING_ANCHORING = "AwaitingAnchoring"
    DELETING = "Deleting"
    # Enrolled
    SITE_NAMESPACE_READY = "SiteNamespaceReady"
    ENROLLMENT_FAILED = "EnrollmentFailed"
    OBJECT_NOT_OWNED = "ObjectNotOwned"
    # Available (from the Lease)
    LEASE_RENEWED = "LeaseRenewed"
    LEASE_UPDATE_STOPPED = "LeaseUpdateStopped"
    AGENT_NOT_CONNECTED = "AgentNotConnected"
    # Site-level summaries for Ready
    SITE_UNAVAILABLE = "SiteUnavailable"
    GPU_NOT_READY = "GPUNotReady"
    # RoundAssignment acceptance (agent)
    ACCEPTED = "Accepted"
    INSUFFICIENT_GPU = "InsufficientGPU"
    WRONG_SITE = "WrongSite"
    # CredentialsReady (hub, Vault footprint of a site)
    CREDENTIALS_PROVISIONED = "CredentialsProvisioned"
    VAULT_POLICY_MISSING = "VaultPolicyMissing"
    VAULT_UNAVAILABLE = "VaultUnavailable"
    VAULT_SEALED = "VaultSealed"
    VAULT_PATH_REFUSED = "VaultPathRefused"
    VAULT_DISABLED = "VaultDisabled"
    # FederatedRound execution (hub)
    SELECTED = "Selected"
    QUORUM_NOT_MET = "QuorumNotMet"
    QUORUM_LOST = "QuorumLost"
    DEADLINE_EXCEEDED = "DeadlineExceeded"
    AGGREGATOR_STARTING = "AggregatorStarting"
    AGGREGATOR_RUNNING = "AggregatorRunning"
    AGGREGATOR_FAILED = "AggregatorFailed"
    PRIVACY_BUDGET_EXHAUSTED = "PrivacyBudgetExhausted"
    DISPATCHED = "Dispatched"
    AWAITING_SITES = "AwaitingSites"
    RUN_SUBMITTED = "RunSubmitted"
    TRAINING = "Training"
    RUN_SUCCEEDED = "RunSucceeded"
    RUN_FAILED = "RunFailed"
    ARTIFACT_UPLOAD_FAILED = "ArtifactUploadFailed"
    SUSPENDED = "Suspended"
    NOT_STARTED = "NotStarted"
    # RoundAssignment execution (agent)
    POD_RUNNING = "PodRunning"
    POD_FAILED = "PodFailed"
    INSECURE_REFUSED = "InsecureRefused"
    DEADLINE_PASSED = "DeadlinePassed"


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(microsecond=0)


def parse(raw: Iterable[dict[str, Any]] | None) -> list[Condition]:
    """Conditions from a body's status, skipping malformed entries (rewritten on our next write)."""
    out = []
    for item in raw or []:
        try:
            out.append(Condition.model_validate(item))
        except ValueError:
            continue
    return out


def raw_condition(body: dict[str, Any], ctype: str) -> dict[str, Any] | None:
    """One condition of a body, as stored (no parsing: for hot paths and filters)."""
    for cond in (body.get("status") or {}).get("conditions") or []:
        if cond.get("type") == ctype:
            return cond
    return None


def find(conditions: Iterable[Condition], ctype: str) -> Condition | None:
    for cond in conditions:
        if cond.type == ctype:
            return cond
    return None


def make(ctype: ConditionType | str, status: ConditionStatus | bool | str, reason: Reason | str,
         message: str = "", *, generation: int | None = None) -> Condition:
    if isinstance(status, bool):
        status = ConditionStatus.TRUE if status else ConditionStatus.FALSE
    return Condition(
        type=ctype.value if isinstance(ctype, ConditionType) else ctype,
        status=ConditionStatus(status),
        reason=reason.value if isinstance(reason, Reason) else reason,
        message=message[:32768],
        last_transition_time=now(),
        observed_generation=generation,
    )


def merge(current: Iterable[Condition], updates: Iterable[Condition]) -> list[Condition]:
    """Apply updates to a condition list, keeping lastTransitionTime when the status is unchanged.

    Conditions of other types (possibly owned by another writer) are kept as they are.
    """
    result = {c.type: c for c in current}
    for new in updates:
        old = result.get(new.type)
        if old is not None and old.status == new.status:
            new = new.model_copy(update={"last_transition_time": old.last_transition_time})
        result[new.type] = new
    return sorted(result.values(), key=lambda c: (c.type != ConditionType.READY.value, c.type))


def same(a: Iterable[Condition], b: Iterable[Condition]) -> bool:
    """True when two lists say the same thing (ignores ordering)."""
    key = lambda c: (c.type, c.status, c.reason, c.message, c.observed_generation)  # noqa: E731
    return sorted(map(key, a)) == sorted(map(key, b))
