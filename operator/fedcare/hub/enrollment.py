"""Pure builders for what the hub creates when a hospital enrolls.

Per HospitalNode ``<site>``:
- Namespace ``fedcare-site-<site>`` holding the site's RoundAssignments and heartbeat Lease;
- ServiceAccount ``fedcare-agent``: the site agent's identity on the hub;
- RoleBinding ``fedcare-site`` to the chart's fixed ClusterRole ``fedcare:site-agent``: read its
  RoundAssignments, write their status, renew its Lease, post Events — in its own namespace
  only (a RoleBinding to a ClusterRole grants it in that namespace). The hub holds ``bind`` on
  that one ClusterRole instead of every permission in it;
- ClusterRole + ClusterRoleBinding ``fedcare-site-<site>``: read its own HospitalNode and
  write its status, restricted by resourceNames. This pair stays per site: resourceNames live
  in a role, not in a binding, so one shared ClusterRole cannot confine each site to its own
  node. The chart's admission policy (``hub-scope``) lets the hub create ClusterRoles only of
  exactly this shape and name, and bindings only of a site's role to that site's agent;
- Lease ``fedcare-agent``: created by the hub so the agent only needs get/update on it.

Every object carries an ownerReference to the HospitalNode (so a real cluster's garbage
collector cleans up if the operator is gone), but deletion is driven by the hub's finalizer:
it is ordered, observable, and works where no garbage collector runs (the sandbox).
"""

from __future__ import annotations

from typing import Any

from ..api import resources as r

AGENT_SA, SITE_ROLE, LEASE_NAME = r.AGENT_SA, r.SITE_ROLE, r.LEASE_NAME
#: The chart's ClusterRole every site's RoleBinding refers to (rules: ``site_role_rules``). The
#: colon keeps it apart from the per-site ``fedcare-site-<site>`` names: a site name is a DNS label.
SITE_AGENT_CLUSTER_ROLE = "fedcare:site-agent"


def cluster_role_name(site: str) -> str:
    return f"fedcare-site-{site}"


def labels(site: str) -> dict[str, str]:
    return {r.SITE_LABEL: site, r.MANAGED_BY_LABEL: r.MANAGED_BY}


def owner_reference(node: dict[str, Any]) -> dict[str, Any]:
    md = node["metadata"]
    return {"apiVersion": r.API_VERSION, "kind": r.HOSPITAL_NODES.kind, "name": md["name"], "uid": md["uid"],
            "controller": True, "blockOwnerDeletion": False}


def _meta(node: dict[str, Any], name: str, namespace: str | None = None) -> dict[str, Any]:
    site = node["metadata"]["name"]
    md: dict[str, Any] = {"name": name, "labels": labels(site), "ownerReferences": [owner_reference(node)]}
    if namespace:
        md["namespace"] = namespace
    return md


def build_namespace(node: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Namespace",
            "metadata": _meta(node, r.site_namespace(node["metadata"]["name"]))}


def build_service_account(node: dict[str, Any]) -> dict[str, Any]:
    ns = r.site_namespace(node["metadata"]["name"])
    return {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": _meta(node, AGENT_SA, ns),
            "automountServiceAccountToken": False}


def site_role_rules() -> list[dict[str, Any]]:
    return [
        {"apiGroups": [r.GROUP], "resources": [r.ROUND_ASSIGNMENTS.plural], "verbs": ["get", "list", "watch"]},
        {"apiGroups": [r.GROUP], "resources": [f"{r.ROUND_ASSIGNMENTS.plural}/status"],
         "verbs": ["get", "patch", "update"]},
        {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "resourceNames": [LEASE_NAME],
         "verbs": ["get", "update", "patch"]},
        {"apiGroups": [""], "resources": ["events"], "verbs": ["create", "patch"]},
    ]


def build_site_agent_cluster_role() -> dict[str, Any]:
    """The fixed ClusterRole the chart installs (``templates/rbac-hub.yaml``; the chart test
    checks both say the same). Tests on a real control plane without the chart apply this."""
    return {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
            "metadata": {"name": SITE_AGENT_CLUSTER_ROLE, "labels": {r.MANAGED_BY_LABEL: r.MANAGED_BY}},
            "rules": site_role_rules()}


def build_legacy_role(node: dict[str, Any]) -> dict[str, Any]:
    """The per-site Role ``fedcare-site`` of earlier versions (now the fixed ClusterRole): only
    its identity, so reconcile can remove it when fedcare created it."""
    ns = r.site_namespace(node["metadata"]["name"])
    return {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": _meta(node, SITE_ROLE, ns)}


def _subjects(site: str) -> list[dict[str, Any]]:
    return [{"kind": "ServiceAccount", "name": AGENT_SA, "namespace": r.site_namespace(site)}]


def build_role_binding(node: dict[str, Any]) -> dict[str, Any]:
    site = node["metadata"]["name"]
    return {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
            "metadata": _meta(node, SITE_ROLE, r.site_namespace(site)),
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                        "name": SITE_AGENT_CLUSTER_ROLE},
            "subjects": _subjects(site)}


def build_cluster_role(node: dict[str, Any]) -> dict[str, Any]:
    site = node["metadata"]["name"]
    plural = r.HOSPITAL_NODES.plural
    return {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
            "metadata": _meta(node, cluster_role_name(site)),
            "rules": [
                {"apiGroups": [r.GROUP], "resources": [plural], "resourceNames": [site],
                 "verbs": ["get", "list", "watch"]},
                {"apiGroups": [r.GROUP], "resources": [f"{plural}/status"], "resourceNames": [site],
                 "verbs": ["get", "patch", "update"]},
            ]}


def build_cluster_role_binding(node: dict[str, Any]) -> dict[str, Any]:
    site = node["metadata"]["name"]
    return {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
            "metadata": _meta(node, cluster_role_name(site)),
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                        "name": cluster_role_name(site)},
            "subjects": _subjects(site)}


def build_lease(node: dict[str, Any], lease_duration_seconds: int) -> dict[str, Any]:
    ns = r.site_namespace(node["metadata"]["name"])
    return {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": _meta(node, LEASE_NAME, ns),
            "spec": {"leaseDurationSeconds": lease_duration_seconds}}


#: (plural, builder) in creation order; deletion runs in reverse.
CHILDREN = (
    ("namespaces", build_namespace),
    ("serviceaccounts", build_service_account),
    ("rolebindings", build_role_binding),
    ("clusterroles", build_cluster_role),
    ("clusterrolebindings", build_cluster_role_binding),
)
