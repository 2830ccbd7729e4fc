"""The fedcare.io/v1alpha1 API: pydantic models are the single source of truth for the CRDs."""

from .federated_round import FederatedRoundSpec, FederatedRoundStatus
from .hospital_node import HospitalNodeSpec, HospitalNodeStatus
from .model_release import ModelReleaseSpec, ModelReleaseStatus
from .resources import API_VERSION, FINALIZER, GROUP, RESOURCES, VERSION, site_namespace
from .round_assignment import RoundAssignmentSpec, RoundAssignmentStatus
from .validation import SpecError, parse

__all__ = [
    "API_VERSION", "FINALIZER", "GROUP", "RESOURCES", "VERSION", "FederatedRoundSpec", "FederatedRoundStatus",
    "HospitalNodeSpec", "HospitalNodeStatus", "ModelReleaseSpec", "ModelReleaseStatus", "RoundAssignmentSpec",
    "RoundAssignmentStatus", "SpecError", "parse", "site_namespace",
]
