"""kstatus rules (fedcare.health) for each kind, and what Argo CD and Flux would show."""

from __future__ import annotations

import pytest

from fedcare.health import kstatus


def obj(kind="HospitalNode", *, generation=1, observed=1, phase=None, conditions=(), deleting=False):
    md = {"name": "x", "generation": generation}
    if deleting:
        md["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    status = {"conditions": [dict(zip(("type", "status", "reason"), c)) for c in conditions]}
    if observed is not None:
        status["observedGeneration"] = observed
    if phase:
        status["phase"] = phase
    return {"apiVersion": "fedcare.io/v1alpha1", "kind": kind, "metadata": md, "status": status}


CASES = [
    # HospitalNode
    (obj(observed=None), "InProgress", "Progressing", "Progressing"),
    (obj(generation=2, observed=1, conditions=[("Ready", "True", "Reconciled")]), "InProgress", "Progressing",
     "Progressing"),
    (obj(conditions=[("Ready", "True", "Reconciled")]), "Current", "Healthy", "Ready"),
    (obj(conditions=[("Available", "Unknown", "AgentNotConnected"), ("Ready", "False", "SiteUnavailable")]),
     "InProgress", "Progressing", "Progressing"),
    (obj(conditions=[("Available", "Unknown", "LeaseUpdateStopped"), ("Ready", "False", "SiteUnavailable")]),
     "Failed", "Degraded", "Failed"),
    (obj(conditions=[("GPUReady", "False", "AllUnhealthy"), ("Ready", "False", "GPUNotReady")]), "Failed",
     "Degraded", "Failed"),
    (obj(conditions=[("Ready", "False", "GPUNotReady")]), "InProgress", "Progressing", "Progressing"),
    (obj(phase="Invalid", conditions=[("Ready", "False", "InvalidSpec")]), "Failed", "Degraded", "Failed"),
    (obj(deleting=True, conditions=[("Ready", "False", "Deleting")]), "Terminating", "Progressing", "Progressing"),
    (obj(conditions=[("Stalled", "True", "Stuck"), ("Ready", "True", "x")]), "Failed", "Degraded", "Failed"),
    (obj(conditions=[("Reconciling", "True", "Busy"), ("Ready", "True", "x")]), "InProgress", "Progressing",
     "Progressing"),
    # FederatedRound: the phases a full round goes through
    (obj("FederatedRound", observed=None), "InProgress", "Progressing", "Progressing"),
    (obj("FederatedRound", phase="Pending", conditions=[("Valid", "True", "Reconciled"),
                                                         ("Ready", "False", "AwaitingScheduler")]),
     "InProgress", "Progressing", "Progressing"),
    (obj("FederatedRound", phase="Running", conditions=[("Ready", "False", "Training")]), "InProgress",
     "Progressing", "Progressing"),
    (obj("FederatedRound", phase="Succeeded", conditions=[("Ready", "True", "Succeeded")]), "Current", "Healthy",
     "Ready"),
    (obj("FederatedRound", phase="Failed", conditions=[("Ready", "False", "QuorumLost")]), "Failed", "Degraded",
     "Failed"),
    (obj("FederatedRound", phase="Invalid", conditions=[("Ready", "False", "InvalidSpec")]), "Failed", "Degraded",
     "Failed"),
    # ModelRelease
    (obj("ModelRelease", phase="Pending", conditions=[("Ready", "False", "AwaitingAnchoring")]), "InProgress",
     "Progressing", "Progressing"),
    (obj("ModelRelease", phase="Anchored", conditions=[("Ready", "True", "Anchored")]), "Current", "Healthy",
     "Ready"),
    (obj("ModelRelease", phase="Revoked", conditions=[("Ready", "False", "Revoked")]), "Current", "Healthy",
     "Ready"),
    # RoundAssignment
    (obj("RoundAssignment", phase="Accepted", conditions=[("Ready", "True", "Accepted")]), "Current", "Healthy",
     "Ready"),
    (obj("RoundAssignment", phase="Rejected", conditions=[("Ready", "False", "InsufficientGPU")]), "Failed",
     "Degraded", "Failed"),
]


@pytest.mark.parametrize(("body", "status", "argo", "flux"), CASES)
def test_kstatus(body, status, argo, flux):
    health = kstatus(body)
    assert (health.status, health.argo, health.flux) == (status, argo, flux), health.message
    assert health.message
