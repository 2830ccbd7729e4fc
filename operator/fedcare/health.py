"""kstatus health of fedcare objects: Current, InProgress, Failed or Terminating.

The rules of sigs.k8s.io/cli-utils/pkg/kstatus (what Flux's health checks and ``kubectl
wait``-style tools compute), applied to our kinds. Written by hand: kstatus is a Go library
and PyPI has no maintained port. In order:

1. ``metadata.deletionTimestamp`` set → Terminating.
2. ``status.observedGeneration`` missing or behind ``metadata.generation`` → InProgress (the
   controller has not seen the latest spec).
3. The standard abnormal-true conditions: ``Stalled=True`` → Failed, ``Reconciling=True`` →
   InProgress (fedcare does not set them today; honoured if a later version does).
4. ``Ready``: True → Current; missing or Unknown → InProgress; False → Failed when its reason
   is terminal for the object (below), else InProgress (the controller is still working).
   Terminal phases (a round Failed or Invalid, a release Failed or Invalid, an assignment
   Rejected or Failed) → Failed; Succeeded rounds and Revoked releases are finished → Current.

Argo CD maps the same verdicts to its health: Current → Healthy, InProgress/Terminating →
Progressing, Failed → Degraded (``ARGO``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

CURRENT, IN_PROGRESS, FAILED, TERMINATING = "Current", "InProgress", "Failed", "Terminating"
ARGO = {CURRENT: "Healthy", IN_PROGRESS: "Progressing", TERMINATING: "Progressing", FAILED: "Degraded"}
FLUX = {CURRENT: "Ready", IN_PROGRESS: "Progressing", TERMINATING: "Progressing", FAILED: "Failed"}

#: Ready=False reasons that need a person, not time: the object is Failed. (SiteUnavailable only
#: for a site that was lost: one whose agent never connected yet is still InProgress.)
TERMINAL_REASONS = {"InvalidSpec", "EnrollmentFailed", "InsufficientGPU", "WrongSite"}
FAILED_PHASES = {"FederatedRound": {"Failed", "Invalid"}, "ModelRelease": {"Failed", "Invalid"},
                 "RoundAssignment": {"Rejected", "Failed"}, "HospitalNode": {"Invalid"}}
FINISHED_PHASES = {"FederatedRound": {"Succeeded"}, "ModelRelease": {"Revoked"}, "RoundAssignment": {"Succeeded"}}


@dataclass(frozen=True)
class Health:
    status: str
    message: str

    @property
    def argo(self) -> str:
        return ARGO[self.status]

    @property
    def flux(self) -> str:
        return FLUX[self.status]


def _condition(obj: dict[str, Any], ctype: str) -> dict[str, Any] | None:
    for cond in (obj.get("status") or {}).get("conditions") or []:
        if isinstance(cond, dict) and cond.get("type") == ctype:
            return cond
    return None


def kstatus(obj: dict[str, Any]) -> Health:
    md = obj.get("metadata") or {}
    status = obj.get("status") or {}
    kind = obj.get("kind", "")
    if md.get("deletionTimestamp"):
        return Health(TERMINATING, "being deleted")
    generation, observed = md.get("generation"), status.get("observedGeneration")
    if generation is not None and (observed is None or observed < generation):
        return Health(IN_PROGRESS, f"generation {generation} not observed yet (observed: {observed})")
    for ctype, verdict in (("Stalled", FAILED), ("Reconciling", IN_PROGRESS)):
        cond = _condition(obj, ctype)
        if cond and cond.get("status") == "True":
            return Health(verdict, f"{ctype}: {cond.get('reason', '')} {cond.get('message', '')}".strip())
    phase = status.get("phase")
    if phase in FAILED_PHASES.get(kind, ()):
        return Health(FAILED, f"phase {phase}")
    if phase in FINISHED_PHASES.get(kind, ()):
        return Health(CURRENT, f"phase {phase}")
    ready = _condition(obj, "Ready")
    if ready is None:
        return Health(IN_PROGRESS, "no Ready condition yet")
    text = f"{ready.get('reason', '')}: {ready.get('message', '')}"
    if ready.get("status") == "True":
        return Health(CURRENT, text)
    if ready.get("status") == "False" and (ready.get("reason") in TERMINAL_REASONS or _gpus_failed(obj, ready)
                                           or _site_lost(obj, ready)):
        return Health(FAILED, text)
    return Health(IN_PROGRESS, text)


def _gpus_failed(obj: dict[str, Any], ready: dict[str, Any]) -> bool:
    """A site not Ready because its GPUs are reported unhealthy (not: waiting for a first report)."""
    gpu = _condition(obj, "GPUReady")
    return ready.get("reason") == "GPUNotReady" and gpu is not None and gpu.get("status") == "False"


def _site_lost(obj: dict[str, Any], ready: dict[str, Any]) -> bool:
    """Not Ready because the agent stopped renewing its Lease (not: has not connected yet)."""
    available = _condition(obj, "Available") or {}
    return ready.get("reason") == "SiteUnavailable" and available.get("reason") == "LeaseUpdateStopped"
