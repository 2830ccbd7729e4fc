"""The objects the hub creates for a site, and what the site's identity may do with them."""

from __future__ import annotations

import fnmatch

import kubernetes_validate
import pytest

from fedcare.hub import enrollment as e

NODE = {"apiVersion": "fedcare.io/v1alpha1", "kind": "HospitalNode",
        "metadata": {"name": "rouen", "uid": "0b7e-uid"}, "spec": {}}
AGENT = ("system:serviceaccount", "fedcare-site-rouen", "fedcare-agent")


@pytest.mark.parametrize("plural, build", e.CHILDREN, ids=[p for p, _ in e.CHILDREN])
def test_children_are_valid_and_owned(plural, build):
    obj = build(NODE)
    kubernetes_validate.validate(obj, "1.33", strict=True)
    md = obj["metadata"]
    assert md["labels"] == {"fedcare.io/site": "rouen", "app.kubernetes.io/managed-by": "fedcare"}
    assert md["ownerReferences"] == [{"apiVersion": "fedcare.io/v1alpha1", "kind": "HospitalNode", "name": "rouen",
                                      "uid": "0b7e-uid", "controller": True, "blockOwnerDeletion": False}]


def test_the_site_agent_cluster_role_is_valid_and_fixed():
    role = e.build_site_agent_cluster_role()
    kubernetes_validate.validate(role, "1.33", strict=True)
    assert role["metadata"]["name"] == "fedcare:site-agent"      # cannot clash with fedcare-site-<site>
    assert e.build_role_binding(NODE)["roleRef"]["kind"] == "ClusterRole"


def test_lease_is_valid():
    lease = e.build_lease(NODE, 40)
    kubernetes_validate.validate(lease, "1.33", strict=True)
    assert lease["metadata"]["namespace"] == "fedcare-site-rouen" and lease["spec"] == {"leaseDurationSeconds": 40}


def allowed(verb: str, group: str, resource: str, namespace: str | None, name: str | None,
            subject=AGENT, site: dict = NODE) -> bool:
    """A tiny RBAC authorizer over the objects enrollment creates (what kube-apiserver would do)."""
    # the RoleBinding refers to the chart's ClusterRole: its rules hold in the binding's namespace only
    role, binding = e.build_site_agent_cluster_role(), e.build_role_binding(site)
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    crole, cbinding = e.build_cluster_role(site), e.build_cluster_role_binding(site)
    assert cbinding["roleRef"]["name"] == crole["metadata"]["name"]
    kind, sa_ns, sa = subject
    grants = []
    for b, rules, scope in ((binding, role["rules"], binding["metadata"]["namespace"]), (cbinding, crole["rules"], None)):
        if any(s["name"] == sa and s["namespace"] == sa_ns for s in b["subjects"]):
            grants += [(rule, scope) for rule in rules]
    for rule, scope in grants:
        if scope is not None and scope != namespace:
            continue
        if group not in rule["apiGroups"] or not any(fnmatch.fnmatch(resource, x) for x in rule["resources"]):
            continue
        if verb not in rule["verbs"]:
            continue
        if "resourceNames" in rule and name not in rule["resourceNames"]:
            continue
        return True
    return False


def test_agent_reads_only_its_own_assignments():
    assert allowed("list", "fedcare.io", "roundassignments", "fedcare-site-rouen", None)
    assert allowed("watch", "fedcare.io", "roundassignments", "fedcare-site-rouen", None)
    assert allowed("patch", "fedcare.io", "roundassignments/status", "fedcare-site-rouen", "r1")
    assert not allowed("list", "fedcare.io", "roundassignments", "fedcare-site-lyon", None)
    assert not allowed("get", "fedcare.io", "roundassignments", "fedcare-site-lyon", "r1")
    assert not allowed("patch", "fedcare.io", "roundassignments", "fedcare-site-rouen", "r1")  # spec is the hub's
    assert not allowed("create", "fedcare.io", "roundassignments", "fedcare-site-rouen", None)
    assert not allowed("delete", "fedcare.io", "roundassignments", "fedcare-site-rouen", "r1")


def test_agent_writes_only_its_own_node_status_and_lease():
    assert allowed("patch", "fedcare.io", "hospitalnodes/status", None, "rouen")
    assert allowed("get", "fedcare.io", "hospitalnodes", None, "rouen")
    assert not allowed("patch", "fedcare.io", "hospitalnodes/status", None, "lyon")
    assert not allowed("patch", "fedcare.io", "hospitalnodes", None, "rouen")  # the spec is the admin's
    assert not allowed("list", "fedcare.io", "hospitalnodes", None, None)
    assert allowed("update", "coordination.k8s.io", "leases", "fedcare-site-rouen", "fedcare-agent")
    assert not allowed("update", "coordination.k8s.io", "leases", "fedcare-site-lyon", "fedcare-agent")
    assert not allowed("update", "coordination.k8s.io", "leases", "fedcare-site-rouen", "other")
    assert not allowed("get", "", "secrets", "fedcare-site-rouen", "x")


def test_another_sites_identity_gets_nothing_here():
    lyon = ("system:serviceaccount", "fedcare-site-lyon", "fedcare-agent")
    assert not allowed("list", "fedcare.io", "roundassignments", "fedcare-site-rouen", None, subject=lyon)
    assert not allowed("patch", "fedcare.io", "hospitalnodes/status", None, "rouen", subject=lyon)


def test_no_wildcards_anywhere():
    for role in (e.build_site_agent_cluster_role(), e.build_cluster_role(NODE)):
        for rule in role["rules"]:
            assert "*" not in rule["verbs"] + rule["resources"] + rule["apiGroups"]
