"""Base model and shared types for the fedcare.io API.

Every model is camelCase on the wire (``populate_by_name`` lets Python code use snake_case),
forbids unknown fields in specs (a typo is an error, not silently ignored), and documents
every field: the description becomes the CRD schema's description.
"""

from __future__ import annotations

import datetime as dt
import enum
import re
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StringConstraints
from pydantic.alias_generators import to_camel

DNS1123_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
DNS1123_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
SHA256_DIGEST = r"^sha256:[a-f0-9]{64}$"

#: A DNS-1123 label: lower-case letters, digits and '-', at most 63 characters.
DNSLabel = Annotated[str, StringConstraints(pattern=DNS1123_LABEL, min_length=1, max_length=63)]
#: A DNS-1123 subdomain (object names), at most 253 characters.
DNSSubdomain = Annotated[str, StringConstraints(pattern=DNS1123_SUBDOMAIN, min_length=1, max_length=253)]
#: A content digest, ``sha256:`` followed by 64 lower-case hex characters.
Digest = Annotated[str, StringConstraints(pattern=SHA256_DIGEST)]
#: A decimal number on the wire as a string (API conventions discourage floats).
Decimal = Annotated[str, StringConstraints(pattern=r"^-?[0-9]+(\.[0-9]+)?([eE][-+]?[0-9]+)?$", max_length=32)]


class FedcareModel(BaseModel):
    """camelCase on the wire, snake_case in Python, unknown fields rejected."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        use_enum_values=False,
        validate_default=True,
    )

    def wire(self) -> dict:
        """The object as the API server stores it: camelCase, defaults included, no nulls."""
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")


class StatusModel(FedcareModel):
    """Status is written by us, read back by us: tolerate fields from newer versions."""

    model_config = ConfigDict(**{**FedcareModel.model_config, "extra": "ignore"})


class ConditionStatus(str, enum.Enum):
    TRUE = "True"
    FALSE = "False"
    UNKNOWN = "Unknown"


class Condition(StatusModel):
    """A metav1.Condition: the observable state of one aspect of an object."""

    type: str = Field(description="Condition type in CamelCase, for example Ready or Enrolled.",
                      max_length=316, pattern=r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
    status: ConditionStatus = Field(description="True, False or Unknown.")
    reason: str = Field(description="A CamelCase, machine-readable reason for the last transition.",
                        min_length=1, max_length=1024, pattern=r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$")
    message: str = Field(default="", description="A human-readable explanation: what is wrong and what to do.",
                         max_length=32768)
    last_transition_time: dt.datetime = Field(description="When the status last changed (RFC 3339).")
    observed_generation: int | None = Field(default=None, ge=0,
                                            description="The .metadata.generation this condition was set for.")


def is_dns_label(value: str) -> bool:
    return len(value) <= 63 and re.match(DNS1123_LABEL, value) is not None


class LabelSelectorRequirement(FedcareModel):
    """One requirement of a label selector, as in metav1.LabelSelectorRequirement."""

    key: str = Field(description="The label key the requirement applies to.", min_length=1, max_length=317)
    operator: "SelectorOperator" = Field(description="In, NotIn, Exists or DoesNotExist.")
    values: list[str] = Field(default_factory=list,
                              description="Values for In and NotIn; must be empty for Exists and DoesNotExist.")


class SelectorOperator(str, enum.Enum):
    IN = "In"
    NOT_IN = "NotIn"
    EXISTS = "Exists"
    DOES_NOT_EXIST = "DoesNotExist"


class LabelSelector(FedcareModel):
    """A label query over HospitalNodes, as in metav1.LabelSelector. Empty selects all."""

    match_labels: dict[str, str] = Field(default_factory=dict, description="Labels that must all match exactly.")
    match_expressions: list[LabelSelectorRequirement] = Field(
        default_factory=list, description="Requirements that must all hold.")

    def matches(self, labels: dict[str, str]) -> bool:
        for key, value in self.match_labels.items():
            if labels.get(key) != value:
                return False
        for req in self.match_expressions:
            present = req.key in labels
            if req.operator is SelectorOperator.IN and labels.get(req.key) not in req.values:
                return False
            if req.operator is SelectorOperator.NOT_IN and present and labels[req.key] in req.values:
                return False
            if req.operator is SelectorOperator.EXISTS and not present:
                return False
            if req.operator is SelectorOperator.DOES_NOT_EXIST and present:
                return False
        return True


LabelSelectorRequirement.model_rebuild()
