"""Bad input is rejected with a message naming the field; good input parses."""

from __future__ import annotations

import copy
import pathlib

import pytest
import yaml

from fedcare.api import SpecError, parse

ROOT = pathlib.Path(__file__).resolve().parents[2]


def example(name: str) -> dict:
    return yaml.safe_load((ROOT / "examples" / name).read_text())


ROUND = example("federatedround-ultrasound.yaml")
NODE = example("hospitalnode-rouen.yaml")
RELEASE = example("modelrelease-ultrasound.yaml")


def with_(body: dict, path: str, value) -> dict:
    """A copy of body with the dotted path set to value (or removed when value is ...)."""
    out = copy.deepcopy(body)
    *parents, last = path.split(".")
    cur = out
    for p in parents:
        cur = cur.setdefault(p, {})
    if value is ...:
        cur.pop(last, None)
    else:
        cur[last] = value
    return out


def rejected(body: dict) -> SpecError:
    with pytest.raises(SpecError) as info:
        parse(body["kind"], body)
    return info.value


@pytest.mark.parametrize("body", [ROUND, NODE, RELEASE], ids=lambda b: b["kind"])
def test_examples_parse(body):
    parse(body["kind"], body)


@pytest.mark.parametrize("body, path, value, field, words", [
    # missing required fields
    (ROUND, "spec.participants", ..., "spec.participants", "required"),
    (ROUND, "spec.rounds", ..., "spec.rounds", "required"),
    (ROUND, "spec.training.image", ..., "spec.training.image", "required"),
    (RELEASE, "spec.artifact.digest", ..., "spec.artifact.digest", "required"),
    (NODE, "spec.dataset.claimName", ..., "spec.dataset.claimName", "required"),
    # wrong types
    (NODE, "spec.cordoned", "maybe", "spec.cordoned", "boolean"),
    (ROUND, "spec.rounds", "five", "spec.rounds", "integer"),
    (NODE, "spec.gpu", [1, 2], "spec.gpu", "dictionary"),
    # unknown enum values
    (ROUND, "spec.strategy.name", "FedMagic", "spec.strategy.name", "'FedAvg', 'FedProx' or 'FedAdam'"),
    (NODE, "spec.dataset.modality", "Ultrasonic", "spec.dataset.modality", "'Ultrasound'"),
    (RELEASE, "spec.stage", "Prod", "spec.stage", "'Production'"),
    # negative counts
    (NODE, "spec.gpu.count", -1, "spec.gpu.count", "greater than or equal to 0"),
    (ROUND, "spec.rounds", 0, "spec.rounds", "greater than or equal to 1"),
    (ROUND, "spec.participants.minAvailable", -2, "spec.participants.minAvailable", "greater than or equal"),
    (ROUND, "spec.training.batchSize", -32, "spec.training.batchSize", "greater than or equal"),
    # unknown fields (typos) are errors, not silently dropped
    (NODE, "spec.cordonned", True, "spec.cordonned", "unknown field"),
    # digests and references
    (RELEASE, "spec.artifact.digest", "sha256:abc", "spec.artifact.digest", "sha256"),
    (RELEASE, "spec.artifact.digest", "md5:" + "a" * 64, "spec.artifact.digest", "sha256"),
    (RELEASE, "spec.artifact.digest", "sha256:" + "G" * 64, "spec.artifact.digest", "sha256"),
    (ROUND, "spec.training.image", "ghcr.io/fedcare/train:latest", "spec.training.image", "sha256"),
    (RELEASE, "spec.anchor.contractAddress", "0x123", "spec.anchor.contractAddress", "0x"),
    # names that are not DNS-1123
    (NODE, "metadata.name", "CHU_Rouen", "metadata.name", "DNS-1123"),
    (NODE, "metadata.name", "-rouen", "metadata.name", "DNS-1123"),
    (NODE, "metadata.name", "r" * 51, "metadata.name", "at most 50"),
    (RELEASE, "spec.modelName", "Ultrasound CNN", "spec.modelName", "format"),
    (ROUND, "spec.model.classes", ["Normal", "benign"], "spec.model.classes[0]", "format"),
])
def test_bad_input_names_the_field(body, path, value, field, words):
    err = rejected(with_(body, path, value))
    assert field in err.fields, err.summary()
    assert words.lower() in err.summary().lower(), err.summary()
    assert "Fix the spec" in err.summary()


def test_min_available_larger_than_participants_maximum():
    body = with_(ROUND, "spec.participants.minAvailable", 5)
    err = rejected(body)
    # The CRD's CEL rule, evaluated with cel-python: the same words the API server answers with.
    assert "participants.minAvailable must not exceed participants.maxParticipants" in err.summary()
    assert "spec.participants.minAvailable" in err.fields
    assert "(5)" not in err.summary()      # values are never echoed


def test_min_train_nodes_cannot_exceed_quorum():
    err = rejected(with_(ROUND, "spec.strategy.minTrainNodes", 3))
    assert "strategy.minTrainNodes must not exceed participants.minAvailable" in err.summary()
    assert "spec.strategy.minTrainNodes" in err.fields


def test_initial_model_needs_digest_with_uri():
    err = rejected(with_(ROUND, "spec.model.initialModel", {"storageUri": "s3://m/model.safetensors"}))
    assert "pinned by its sha256 digest" in err.summary()


def test_missing_spec_entirely():
    err = rejected({"kind": "HospitalNode", "metadata": {"name": "rouen"}})
    assert err.fields == ["spec"]


def test_several_problems_reported_at_once():
    body = with_(with_(ROUND, "spec.rounds", -1), "spec.strategy.name", "Nope")
    err = rejected(body)
    assert {"spec.rounds", "spec.strategy.name"} <= set(err.fields)


def test_errors_never_echo_input_values():
    secret = "hvs.CAESIJ very/secret vault token 0123456789"
    for body in (with_(NODE, "spec.vault.role", secret), with_(NODE, "spec.gpu.count", secret),
                 with_(RELEASE, "spec.artifact.digest", secret), with_(NODE, "spec.token", secret)):
        err = rejected(body)
        assert secret not in err.summary()
        assert secret not in str(err)


def test_defaults_are_filled():
    spec = parse("HospitalNode", {"kind": "HospitalNode", "metadata": {"name": "lyon"}, "spec": {}})
    assert spec.lease_duration_seconds == 40
    assert spec.cordoned is False
    wire = spec.wire()
    assert wire["leaseDurationSeconds"] == 40 and "lease_duration_seconds" not in wire
