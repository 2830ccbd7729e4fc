"""Turn an object's body into its pydantic models, or explain precisely what is wrong.

Handlers call this first: nothing happens for an object whose spec does not validate.
Messages name the field (camelCase, as the user wrote it) and say what is expected; they
never echo input values, so a mistyped secret cannot leak into status or Events.
"""

from __future__ import annotations

import functools
from typing import Any

from pydantic import BaseModel, ValidationError

from . import cel
from .kinds import BY_KIND, Kind


class SpecError(ValueError):
    """A spec that can never work as written. ``problems`` lists ``(field, message)`` pairs."""

    def __init__(self, kind: str, problems: list[tuple[str, str]]):
        self.kind = kind
        self.problems = problems
        super().__init__(self.summary())

    def summary(self, limit: int = 5) -> str:
        shown = [f"{field}: {msg}" for field, msg in self.problems[:limit]]
        more = len(self.problems) - limit
        text = "; ".join(shown) + (f"; and {more} more" if more > 0 else "")
        return f"invalid {self.kind}: {text}. Fix the spec and apply it again."

    @property
    def fields(self) -> list[str]:
        return [field for field, _ in self.problems]


def _loc(prefix: str, loc: tuple[Any, ...]) -> str:
    path = prefix
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif part in ("function-after", "function-before") or str(part).startswith("function-"):
            continue
        else:
            path += f".{part}"
    return path


def _explain(err: dict[str, Any]) -> str:
    kind = err.get("type", "")
    if kind == "missing":
        return "required field is missing"
    if kind == "extra_forbidden":
        return "unknown field (check the spelling; fields are camelCase)"
    if kind == "string_pattern_mismatch":
        pattern = (err.get("ctx") or {}).get("pattern", "")
        return f"does not match the required format {pattern}"
    msg = str(err.get("msg", "invalid value"))
    return msg.removeprefix("Value error, ")


def problems_of(exc: ValidationError, prefix: str) -> list[tuple[str, str]]:
    return [(_loc(prefix, tuple(e["loc"])), _explain(e)) for e in exc.errors(include_input=False)]


def check_name(kind: Kind, name: str | None) -> list[tuple[str, str]]:
    """Only presence: what a name must look like is a CEL rule of the kind (``kinds.py``)."""
    if not name:
        return [("metadata.name", "required field is missing")]
    return []


@functools.lru_cache(maxsize=None)
def _spec_schema(kind_name: str) -> dict[str, Any]:
    from .crd import schema_for   # crd imports kinds, which imports the models: import late

    return schema_for(BY_KIND[kind_name].spec)


def cel_problems(kind_name: str, body: dict[str, Any]) -> list[tuple[str, str]]:
    """The CRD's own CEL rules (not the transition rules), as the API server would apply them:
    the object-level rules (metadata included) and every rule under ``spec``.

    For objects that bypassed admission (the emulator, stale CRDs): the rules are the single
    source, written beside their fields; nothing here restates them.
    """
    schema = {"x-kubernetes-validations": [dict(r) for r in BY_KIND[kind_name].rules],
              "properties": {"spec": _spec_schema(kind_name)}}
    try:
        failures = cel.evaluate(schema, body)
    except cel.CELEvaluationError:
        # A value of the wrong type that the model's lax parsing let through (e.g. a number
        # written as a string): the API server refuses it by type; say so without the value.
        return [("spec", "a field has the wrong type for a validation rule (numbers must not be quoted); "
                         "check the spec against `kubectl explain`")]
    # An object-level rule has no fieldPath the server would accept for metadata.name (the
    # schema does not describe metadata); point at the field the rule reads.
    return [(f.field or ("metadata.name" if "self.metadata.name" in f.rule else "metadata"),
             f.message or f"violates {f.rule}") for f in failures]


def parse(kind_name: str, body: dict[str, Any]) -> BaseModel:
    """Validate ``body`` (a whole object) and return its spec model, or raise SpecError.

    Field types, formats and bounds come from the pydantic models; cross-field rules from the
    CEL rules the CRD carries (evaluated with cel-python), so both tiers say the same thing.
    """
    kind = BY_KIND[kind_name]
    problems = check_name(kind, (body.get("metadata") or {}).get("name"))
    spec = body.get("spec")
    model = None
    if not isinstance(spec, dict):
        problems.append(("spec", "required field is missing or not an object"))
    else:
        try:
            model = kind.spec.model_validate(spec)
        except ValidationError as exc:
            problems.extend(problems_of(exc, "spec"))
        else:
            if not problems:     # the object-level rules read metadata.name
                problems.extend(cel_problems(kind_name, body))
            else:
                problems.extend(cel_problems(kind_name, {"spec": spec}))
    if problems:
        raise SpecError(kind_name, problems)
    assert model is not None
    return model

