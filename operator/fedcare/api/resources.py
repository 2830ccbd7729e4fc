"""The custom resources fedcare serves: one place for group, version, plurals and scopes.

Everything that needs to name a resource (kopf handlers, the emulator, RBAC builders,
the Helm chart generator) reads it from here.
"""

from __future__ import annotations

from dataclasses import dataclass

GROUP = "fedcare.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"

#: Our own finalizer and annotation prefix (never kopf's defaults).
FINALIZER = "fedcare.io/finalizer"
ANNOTATION_PREFIX = "fedcare.io"
SITE_LABEL = "fedcare.io/site"
MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
MANAGED_BY = "fedcare"

#: Names inside every site namespace, shared by the hub (which creates them) and the agent.
AGENT_SA = "fedcare-agent"
SITE_ROLE = "fedcare-site"
LEASE_NAME = "fedcare-agent"


@dataclass(frozen=True)
class Resource:
    kind: str
    plural: str
    singular: str
    namespaced: bool
    short_names: tuple[str, ...]

    @property
    def group(self) -> str:
        return GROUP

    @property
    def version(self) -> str:
        return VERSION

    @property
    def api_version(self) -> str:
        return API_VERSION

    @property
    def crd_name(self) -> str:
        return f"{self.plural}.{GROUP}"


HOSPITAL_NODES = Resource("HospitalNode", "hospitalnodes", "hospitalnode", False, ("hn", "hospital"))
FEDERATED_ROUNDS = Resource("FederatedRound", "federatedrounds", "federatedround", True, ("fr", "fround"))
ROUND_ASSIGNMENTS = Resource("RoundAssignment", "roundassignments", "roundassignment", True, ("ra",))
MODEL_RELEASES = Resource("ModelRelease", "modelreleases", "modelrelease", True, ("mr", "release"))

RESOURCES: tuple[Resource, ...] = (HOSPITAL_NODES, FEDERATED_ROUNDS, ROUND_ASSIGNMENTS, MODEL_RELEASES)


SITE_NAMESPACE_PREFIX = "fedcare-site-"


def site_namespace(site: str) -> str:
    """The hub namespace that holds one site's assignments, Lease and identity."""
    return f"{SITE_NAMESPACE_PREFIX}{site}"
