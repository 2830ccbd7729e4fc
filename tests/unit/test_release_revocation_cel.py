"""The API server refuses to undo a revocation in every way: unset, set false, remove the field or the object."""

from __future__ import annotations

import copy
import pathlib

import yaml

from fedcare.api.cel import evaluate
from fedcare.api import crd
from fedcare.api.kinds import MODEL_RELEASE

ROOT = pathlib.Path(__file__).resolve().parents[2]
SCHEMA = crd.openapi_schema(MODEL_RELEASE)
MSG = "a revocation cannot be removed or undone; create a new release instead"


def revoked() -> dict:
    doc = yaml.safe_load((ROOT / "examples" / "modelrelease-ultrasound.yaml").read_text())
    doc["spec"]["revocation"] = {"revoked": True, "reason": "drift"}
    return doc


def messages(new: dict, old: dict) -> list[str]:
    return [f.message for f in evaluate(SCHEMA, new, old)]


def test_removing_the_whole_revocation_is_refused() -> None:
    old = revoked()
    new = copy.deepcopy(old)
    del new["spec"]["revocation"]
    assert MSG in messages(new, old)


def test_unsetting_revoked_is_refused() -> None:
    old = revoked()
    new = copy.deepcopy(old)
    del new["spec"]["revocation"]["revoked"]
    assert MSG in messages(new, old)
    new["spec"]["revocation"] = {"revoked": False, "reason": ""}
    assert MSG in messages(new, old)


def test_revoking_and_editing_the_reason_are_allowed() -> None:
    old = copy.deepcopy(revoked())
    old["spec"]["revocation"] = {"revoked": False}
    assert messages(revoked(), old) == []
    new = revoked()
    new["spec"]["revocation"]["reason"] = "data drift found in audit"
    assert messages(new, revoked()) == []
    unrevoked = copy.deepcopy(old)
    del unrevoked["spec"]["revocation"]
    assert messages(unrevoked, old) == []      # never revoked: removing the default is fine
