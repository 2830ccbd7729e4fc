"""Every CEL rule in the CRDs compiles, holds for the examples, and catches what it is for."""

from __future__ import annotations

import copy
import pathlib

import pytest
import yaml

from fedcare.api.cel import all_rules, compile_rule, evaluate
from fedcare.api import crd
from fedcare.api.kinds import KINDS

ROOT = pathlib.Path(__file__).resolve().parents[2]
SCHEMAS = {k.resource.kind: crd.openapi_schema(k) for k in KINDS}


def load(name):
    return yaml.safe_load((ROOT / "examples" / name).read_text())


def test_there_are_rules_and_all_compile():
    rules = [(kind, path, r) for kind, s in SCHEMAS.items() for path, r in all_rules(s)]
    assert len(rules) >= 10
    for kind, path, rule in rules:
        compile_rule(rule["rule"])     # a syntax error fails here
        assert rule.get("message"), f"{kind} rule at {path} has no message"


@pytest.mark.parametrize("name", sorted(p.name for p in (ROOT / "examples").glob("*.yaml")))
def test_examples_pass_every_rule_on_create_and_on_a_no_op_update(name):
    doc = load(name)
    schema = SCHEMAS[doc["kind"]]
    assert evaluate(schema, doc) == []
    assert evaluate(schema, doc, copy.deepcopy(doc)) == []


def failures(kind, new, old=...):
    return [f.message for f in (evaluate(SCHEMAS[kind], new) if old is ... else evaluate(SCHEMAS[kind], new, old))]


def test_min_available_above_max_participants():
    doc = load("federatedround-ultrasound.yaml")
    doc["spec"]["participants"].update(minAvailable=4, maxParticipants=3)
    assert any("participants.minAvailable must not exceed participants.maxParticipants" in m
               for m in failures("FederatedRound", doc))


def test_min_train_nodes_above_quorum():
    doc = load("federatedround-ultrasound.yaml")
    doc["spec"]["strategy"]["minTrainNodes"] = 3
    assert any("minTrainNodes" in m for m in failures("FederatedRound", doc))


def test_rounds_and_deadline_are_immutable():
    old = load("federatedround-ultrasound.yaml")
    new = copy.deepcopy(old)
    new["spec"]["rounds"] = 9
    new["spec"]["activeDeadlineSeconds"] = 60
    msgs = failures("FederatedRound", new, old)
    assert "rounds is immutable; create a new FederatedRound" in msgs
    assert "activeDeadlineSeconds is immutable" in msgs
    assert failures("FederatedRound", new) == []      # transition rules do not apply on create


def test_release_artifact_immutable_and_revocation_one_way():
    old = load("modelrelease-ultrasound.yaml")
    old["spec"]["revocation"] = {"revoked": True, "reason": "drift"}
    new = copy.deepcopy(old)
    new["spec"]["artifact"]["digest"] = "sha256:" + "0" * 64
    new["spec"]["revocation"]["revoked"] = False
    msgs = failures("ModelRelease", new, old)
    assert "artifact is immutable; create a new release" in msgs
    assert "a revocation cannot be undone; create a new release instead" in msgs


def test_initial_model_needs_a_digest():
    doc = load("federatedround-ultrasound.yaml")
    doc["spec"]["model"]["initialModel"] = {"storageUri": "s3://x"}
    assert any("pinned by its sha256 digest" in m for m in failures("FederatedRound", doc))


def test_site_name_length():
    doc = load("hospitalnode-rouen.yaml")
    doc["metadata"]["name"] = "r" * 51
    assert any("at most 50" in m for m in failures("HospitalNode", doc))


@pytest.mark.parametrize("case", __import__("tests.support.bad_manifests", fromlist=["cases"]).cases(),
                         ids=lambda c: c.id)
def test_each_bad_manifest_breaks_its_rule(case):
    """The same list the real API server must refuse (tests/integration/test_real_cluster.py)."""
    msgs = failures(case.new["kind"], case.new) if case.old is None else failures(case.new["kind"], case.new,
                                                                                   case.old)
    assert any(case.message in m for m in msgs), msgs


def test_every_rule_has_a_bad_manifest():
    """Each CEL rule of every CRD is broken by at least one case, so the real API server is
    proven to enforce each one (tests/integration/test_real_cluster.py)."""
    from tests.support.bad_manifests import cases

    covered = [c.message for c in cases()]
    missing = [(kind, path, r["message"]) for kind, schema in SCHEMAS.items() for path, r in all_rules(schema)
               if not any(m in r["message"] for m in covered)]
    assert not missing, missing


def test_a_quoted_number_is_a_spec_error_not_a_crash():
    from fedcare.api.validation import SpecError, parse

    doc = load("federatedround-ultrasound.yaml")
    doc["spec"]["participants"]["minAvailable"] = "2"      # pydantic's lax mode accepts it; CEL cannot compare
    with pytest.raises(SpecError, match="wrong type"):
        parse("FederatedRound", doc)
