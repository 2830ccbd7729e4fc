"""The generated CRDs are fresh, structural, valid Kubernetes objects, and accept our examples."""

from __future__ import annotations

import pathlib

import jsonschema
import kubernetes_validate
import pytest
import yaml

from fedcare.api import crd
from fedcare.api.kinds import KINDS, BY_KIND

ROOT = pathlib.Path(__file__).resolve().parents[2]
CRDS = {k.resource.kind: crd.crd_manifest(k) for k in KINDS}


def test_generated_files_are_fresh():
    assert crd.check(ROOT) == [], "run `fedcare crds generate` and commit the result"


def test_check_reports_a_stale_file(tmp_path):
    crd.generate(tmp_path)
    target = tmp_path / "crds" / "hospitalnodes.fedcare.io.yaml"
    target.write_text(target.read_text().replace("minimum: 10", "minimum: 11"))
    diffs = crd.check(tmp_path)
    assert len(diffs) == 1 and "-                minimum: 11" in diffs[0]
    assert crd.generate(tmp_path) == [target] and crd.check(tmp_path) == []


def walk(node, path=""):
    yield path, node
    if isinstance(node, dict):
        for key, val in node.items():
            yield from walk(val, f"{path}.{key}")
    elif isinstance(node, list):
        for i, val in enumerate(node):
            yield from walk(val, f"{path}[{i}]")


@pytest.mark.parametrize("kind", CRDS)
def test_schema_is_structural(kind):
    schema = CRDS[kind]["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    for path, node in walk(schema):
        if not isinstance(node, dict):
            continue
        for forbidden in ("$ref", "$defs", "anyOf", "allOf", "oneOf", "title", "definitions"):
            assert forbidden not in node or path.endswith(".properties"), f"{forbidden} at {path}"
        if path.endswith(".properties") or path.endswith(".x-kubernetes-validations") or "[" in path.split(".")[-1]:
            continue
        if any(k in node for k in ("properties", "items", "enum", "pattern", "minimum")):
            assert "type" in node, f"no type at {path}"
    assert "x-kubernetes-preserve-unknown-fields" not in yaml.safe_dump(schema)


@pytest.mark.parametrize("kind", CRDS)
def test_every_spec_field_is_described(kind):
    spec = CRDS[kind]["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    for path, node in walk(spec):
        if path.endswith(".properties") and isinstance(node, dict):
            for name, prop in node.items():
                assert prop.get("description"), f"{kind} spec field {path}.{name} has no description"


@pytest.mark.parametrize("kind", CRDS)
def test_crd_is_a_valid_kubernetes_object(kind):
    kubernetes_validate.validate(CRDS[kind], "1.33", strict=True)


@pytest.mark.parametrize("kind", CRDS)
def test_crd_shape(kind):
    spec = CRDS[kind]["spec"]
    version = spec["versions"][0]
    assert version["subresources"] == {"status": {}}
    assert spec["names"]["categories"] == ["fedcare"] and spec["names"]["shortNames"]
    columns = {c["name"] for c in version["additionalPrinterColumns"]}
    assert {"Ready", "Age"} <= columns
    status = version["schema"]["openAPIV3Schema"]["properties"]["status"]["properties"]
    assert status["conditions"]["x-kubernetes-list-type"] == "map"
    assert status["conditions"]["x-kubernetes-list-map-keys"] == ["type"]
    assert "observedGeneration" in status
    assert set(status["conditions"]["items"]["required"]) >= {"type", "status", "reason", "lastTransitionTime"}


def test_quorum_column_for_rounds():
    cols = {c["name"]: c["jsonPath"] for c in CRDS["FederatedRound"]["spec"]["versions"][0]["additionalPrinterColumns"]}
    assert cols["Quorum"] == ".spec.participants.minAvailable" and cols["Eligible"] == ".status.eligibleSites"


def test_chart_templates_gate_crds_on_a_value():
    for kind in KINDS:
        text = (ROOT / crd.CHART_CRD_DIR / f"{kind.resource.crd_name}.yaml").read_text()
        assert "{{- if include \"fedcare.installCRDs\" . }}" in text and text.rstrip().endswith("{{- end }}")
        assert 'include "fedcare.crdAnnotations"' in text


def examples():
    for path in sorted((ROOT / "examples").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            yield pytest.param(doc, id=path.name)


@pytest.mark.parametrize("doc", examples())
def test_examples_validate_against_generated_schema(doc):
    assert doc["apiVersion"] == "fedcare.io/v1alpha1"
    schema = CRDS[doc["kind"]]["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    jsonschema.validate(doc, schema)
    # and the pydantic model accepts it, with defaults filled the way the API server would
    BY_KIND[doc["kind"]].spec.model_validate(doc["spec"])


def test_schema_rejects_what_the_model_rejects():
    schema = CRDS["ModelRelease"]["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    doc = yaml.safe_load((ROOT / "examples" / "modelrelease-ultrasound.yaml").read_text())
    doc["spec"]["artifact"]["digest"] = "sha256:1234"
    with pytest.raises(jsonschema.ValidationError, match="does not match"):
        jsonschema.validate(doc, schema)


def _kubectl() -> str:
    import shutil

    path = ROOT / ".tools" / "bin" / "kubectl"
    found = str(path) if path.exists() else shutil.which("kubectl")
    if not found:
        pytest.fail("kubectl not found in .tools/bin or on PATH: run `make tools`", pytrace=False)
    return found


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.resource.kind)
def test_go_yaml_reads_each_crd_as_python_meant(kind):
    """kubectl's (Go) YAML parser reads the file exactly as the Python model intends.

    `default: 1e-5` unquoted in a string field was read as a number by Go and the API server
    rejected the whole CRD; PyYAML had read it as a string. kubectl converts offline here.
    """
    import json
    import subprocess

    path = ROOT / "crds" / f"{kind.resource.crd_name}.yaml"
    out = subprocess.run([_kubectl(), "label", "--local", "-f", str(path), "fedcare.io/probe=1", "-o", "json"],
                         capture_output=True, text=True, timeout=60, check=True).stdout
    seen = json.loads(out)
    seen["metadata"]["labels"].pop("fedcare.io/probe")
    assert seen == crd.crd_manifest(kind)


def test_string_that_looks_like_a_number_is_quoted():
    text = crd.dump_yaml({"default": "1e-5", "enum": ["on", "1.0"], "pattern": "^a$", "x": "0x1F", "y": "plain"})
    assert yaml.safe_load(text) == {"default": "1e-5", "enum": ["on", "1.0"], "pattern": "^a$", "x": "0x1F",
                                    "y": "plain"}
    for quoted in ('"1e-5"', '"on"', '"1.0"', '"0x1F"'):
        assert quoted in text


def test_defaulted_nested_objects_default_to_empty():
    spec = CRDS["FederatedRound"]["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    for name in ("model", "strategy", "privacy"):
        assert spec["properties"][name].get("default") == {}, name
    assert spec["properties"]["privacy"]["properties"]["differentialPrivacy"].get("default") == {}
    node = CRDS["HospitalNode"]["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    assert node["properties"]["gpu"].get("default") == {}
    assert "default" not in spec["properties"]["participants"]     # required: never defaulted
