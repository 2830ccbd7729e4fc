"""HospitalNode: a hospital cluster enrolled as a managed site (cluster-scoped).

The object's name is the site id: it names the site namespace on the hub
(``fedcare-site-<name>``) and is what RoundAssignments and Leases refer to.
"""

from __future__ import annotations

import datetime as dt
import enum

from pydantic import Field

from .base import Condition, DNSSubdomain, FedcareModel, StatusModel
from .inventory import GPUInventory, SiteCapacity

#: ``fedcare-site-`` (13 characters) + name must stay a valid namespace name (63).
MAX_SITE_NAME = 50


class Modality(str, enum.Enum):
    ULTRASOUND = "Ultrasound"
    CT = "CT"
    MRI = "MRI"
    XRAY = "XRay"


class GPURequirement(FedcareModel):
    """The GPUs the hospital declares it offers; the agent reports what NVML really sees."""

    count: int = Field(default=0, ge=0, le=1024, description="Number of GPUs the site offers to federated training.")
    product: str = Field(default="", max_length=256,
                         description="Expected GPU product name, for example NVIDIA H100 80GB HBM3. Empty: any.")


class DatasetSpec(FedcareModel):
    """Where the site's de-identified training data lives, inside the hospital cluster."""

    claim_name: DNSSubdomain = Field(description="PersistentVolumeClaim in the site cluster holding the dataset "
                                                 "(mounted read-only into training pods).")
    modality: Modality = Field(default=Modality.ULTRASOUND, description="Imaging modality of the dataset.")
    size: int = Field(default=0, ge=0, description="Number of studies in the dataset, for scheduling and weighting.")


class VaultSpec(FedcareModel):
    """Where the site's short-lived credentials come from."""

    role: str = Field(default="", max_length=128, pattern=r"^[A-Za-z0-9_.-]*$",
                      description="Vault role the site agent authenticates as. Empty: derived from the site name.")
    path: str = Field(default="", max_length=512, pattern=r"^[A-Za-z0-9_./-]*$",
                      description="Vault path prefix holding this site's secrets. Empty: fedcare/sites/<name>.")


class Toleration(FedcareModel):
    """A core/v1 Toleration for the site's training pods."""

    key: str = Field(default="", max_length=317, description="Taint key; empty with Exists matches all.")
    operator: str = Field(default="Equal", pattern=r"^(Equal|Exists)$", description="Equal or Exists.")
    value: str = Field(default="", max_length=63, description="Taint value (Equal).")
    effect: str = Field(default="", pattern=r"^(|NoSchedule|PreferNoSchedule|NoExecute)$",
                        description="Taint effect; empty matches all.")
    toleration_seconds: int | None = Field(default=None, ge=0, description="NoExecute grace.")


class SchedulingSpec(FedcareModel):
    """Where in the hospital cluster the training pods run."""

    node_selector: dict[str, str] = Field(default_factory=dict, description="nodeSelector of training pods.")
    tolerations: list[Toleration] = Field(default_factory=list, max_length=32,
                                          description="Tolerations of training pods.")


class HospitalNodeSpec(FedcareModel):
    """A hospital site. Selection labels go in ``metadata.labels``, as for any Kubernetes object."""

    display_name: str = Field(default="", max_length=256, description="Human-readable hospital name.")
    region: str = Field(default="", max_length=63, description="Region, for data-residency constraints.")
    jurisdiction: str = Field(default="", max_length=63,
                              description="Legal jurisdiction of the data, for example EU or US-HIPAA.")
    gpu: GPURequirement = Field(default_factory=GPURequirement, description="GPUs the site offers.")
    dataset: DatasetSpec | None = Field(default=None, description="The site's training dataset.")
    scheduling: SchedulingSpec = Field(default_factory=SchedulingSpec,
                                       description="nodeSelector and tolerations of the site's training pods.")
    vault: VaultSpec = Field(default_factory=VaultSpec, description="Vault identity of the site.")
    cordoned: bool = Field(default=False, description="True: no new rounds are scheduled on this site; running "
                                                      "ones continue.")
    lease_duration_seconds: int = Field(default=40, ge=10, le=3600,
                                        description="Heartbeat Lease duration. The agent renews every quarter of "
                                                    "it; the hub marks the site Unknown after one full duration "
                                                    "without renewal.")
    super_node_public_key: str = Field(default="", max_length=4096,
                                       description="SuperNode public key (OpenSSH ECDSA) registered with "
                                                   "SuperLinks that authenticate SuperNodes.")


class HospitalNodePhase(str, enum.Enum):
    PENDING = "Pending"
    READY = "Ready"
    NOT_READY = "NotReady"
    CORDONED = "Cordoned"
    INVALID = "Invalid"
    TERMINATING = "Terminating"


class AgentVersions(StatusModel):
    """Versions the site agent reports."""

    agent: str = Field(default="", max_length=64, description="fedcare agent version.")
    kubernetes: str = Field(default="", max_length=64, description="Kubernetes version of the site cluster.")
    flwr: str = Field(default="", max_length=64, description="Flower version of the site's training image.")


class HospitalNodeStatus(StatusModel):
    """Observed state. The hub writes Enrolled, Available and Ready; the agent writes GPUReady,
    gpus, capacity and versions. Neither touches the other's fields."""

    observed_generation: int | None = Field(default=None, ge=0, description="Last spec generation the hub handled.")
    phase: HospitalNodePhase | None = Field(default=None, description="Summary of the conditions, for display.")
    conditions: list[Condition] = Field(default_factory=list, description="Current state, one entry per type.")
    site_namespace: str | None = Field(default=None, description="Hub namespace holding this site's assignments, "
                                                                 "Lease and agent identity.")
    last_heartbeat_time: dt.datetime | None = Field(default=None, description="Hub time at which a Lease "
                                                                              "renewal was last seen.")
    gpus: GPUInventory | None = Field(default=None, description="NVML inventory, as last reported by the agent.")
    capacity: SiteCapacity | None = Field(default=None, description="GPUs total/healthy/free and by product, as "
                                                                    "last reported by the agent (used for selection).")
    gpu_summary: str | None = Field(default=None, max_length=32, description="Healthy/total GPUs, for display "
                                                                             "(written with gpus by the agent).")
    versions: AgentVersions | None = Field(default=None, description="Versions reported by the agent.")
