"""Manifests that break one CEL rule each: evaluated with cel-python (tests/unit/test_cel_rules.py)
and applied to the real API server (tests/integration/test_real_cluster.py), which must refuse
each one with the same message."""

from __future__ import annotations

import copy
import pathlib
from dataclasses import dataclass
from typing import Any

import yaml

ROOT = pathlib.Path(__file__).resolve().parents[2]


def load(name: str) -> dict[str, Any]:
    return yaml.safe_load((ROOT / "examples" / name).read_text())


@dataclass(frozen=True)
class BadCase:
    id: str
    new: dict[str, Any]
    message: str                       # what the rule says (a substring of the server's answer)
    old: dict[str, Any] | None = None  # set for transition rules: created first, then updated to ``new``


def _round(**edit: Any) -> dict[str, Any]:
    doc = load("federatedround-ultrasound.yaml")
    for path, value in edit.items():
        node = doc["spec"]
        *parents, leaf = path.split("__")
        for p in parents:
            node = node[p]
        node[leaf] = value
    return doc


def cases() -> list[BadCase]:
    out = [
        BadCase("min-available-above-max", _round(participants__minAvailable=4, participants__maxParticipants=3),
                "participants.minAvailable must not exceed participants.maxParticipants"),
        BadCase("min-train-nodes-above-quorum", _round(strategy__minTrainNodes=3),
                "strategy.minTrainNodes must not exceed participants.minAvailable"),
        BadCase("initial-model-without-digest", _round(model__initialModel={"storageUri": "s3://x"}),
                "pinned by its sha256 digest"),
        BadCase("initial-model-two-sources",
                _round(model__initialModel={"storageUri": "s3://x", "digest": "sha256:" + "a" * 64,
                                            "modelReleaseRef": {"name": "m"}}),
                "set either modelReleaseRef or storageUri+digest, not both"),
    ]
    node = load("hospitalnode-rouen.yaml")
    node["metadata"]["name"] = "r" * 51
    out.append(BadCase("site-name-too-long", node, "at most 50"))
    node = load("hospitalnode-rouen.yaml")
    node["metadata"]["name"] = "rouen.chu"    # a valid object name, not a valid namespace suffix
    out.append(BadCase("site-name-not-a-label", node, "must be a DNS-1123 label"))
    old = load("federatedround-ultrasound.yaml")
    new = copy.deepcopy(old)
    new["spec"]["rounds"] = 9
    out.append(BadCase("rounds-immutable", new, "rounds is immutable; create a new FederatedRound", old))
    new = copy.deepcopy(old)
    new["spec"]["activeDeadlineSeconds"] = 600
    out.append(BadCase("deadline-immutable", new, "activeDeadlineSeconds is immutable", old))
    rel = load("modelrelease-ultrasound.yaml")
    new = copy.deepcopy(rel)
    new["spec"]["artifact"]["digest"] = "sha256:" + "0" * 64
    out.append(BadCase("artifact-immutable", new, "artifact is immutable; create a new release", rel))
    revoked = copy.deepcopy(rel)
    revoked["spec"]["revocation"] = {"revoked": True, "reason": "drift"}
    new = copy.deepcopy(revoked)
    new["spec"]["revocation"]["revoked"] = False
    out.append(BadCase("revocation-one-way", new, "a revocation cannot be undone", revoked))
    new = copy.deepcopy(revoked)
    del new["spec"]["revocation"]
    out.append(BadCase("revocation-removed", new, "a revocation cannot be removed or undone", revoked))
    for field, value in (("modelName", "other-model"), ("version", "9.9.9")):
        new = copy.deepcopy(rel)
        new["spec"][field] = value
        out.append(BadCase(f"release-{field}-immutable", new, f"{field} is immutable", rel))
    ra = {"apiVersion": "fedcare.io/v1alpha1", "kind": "RoundAssignment",
          "metadata": {"name": "r1-rouen", "namespace": "default"},
          "spec": {"roundRef": {"namespace": "default", "name": "r1"}, "nodeName": "rouen", "attempt": 1,
                   "training": {"image": "ghcr.io/fedcare/train@sha256:" + "b" * 64}}}
    for field, value, message in (("roundRef", {"namespace": "default", "name": "r2"}, "roundRef is immutable"),
                                  ("nodeName", "lyon", "nodeName is immutable"),
                                  ("attempt", 2, "attempt is immutable")):
        new = copy.deepcopy(ra)
        new["spec"][field] = value
        out.append(BadCase(f"assignment-{field}-immutable", new, message, ra))
    return out
