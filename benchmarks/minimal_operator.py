"""Baseline for the hub benchmark: a kopf operator that watches the same kinds and does nothing."""

import kopf


@kopf.on.event("fedcare.io", "v1alpha1", "hospitalnodes")
def node_event(**_):
    pass


@kopf.on.event("coordination.k8s.io", "v1", "leases", labels={"app.kubernetes.io/managed-by": "fedcare"})
def lease_event(**_):
    pass
