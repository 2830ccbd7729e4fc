"""Evaluate a CRD schema's CEL rules (x-kubernetes-validations) the way the API server does.

Each cross-field rule is written once, as CEL beside its field in the models (``api/*.py``),
and the real API server enforces it at admission. The hub evaluates the same rules with
cel-python only for objects that reached it without that admission (the emulator, or a
cluster whose CRDs are older than the hub), so no rule has a hand-written Python twin.

The server evaluates each rule with ``self`` bound to the value at the rule's place in the
schema, only where that value is present; rules that mention ``oldSelf`` (transition rules)
only on update, when the old value is present too. cel-python does the evaluation.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, Iterator

import celpy

_ENV = celpy.Environment()
_MISSING = object()


class CELEvaluationError(AssertionError):
    """A rule could not be evaluated on this value (a bug in the rule or a value of the wrong type)."""


@dataclass
class Failure:
    path: str
    rule: str
    message: str
    field_path: str = ""    # the rule's fieldPath, relative to ``path``

    @property
    def field(self) -> str:
        """Where to point the user: the rule's place plus its fieldPath, without the leading dot."""
        base = "" if self.path == "." else self.path
        return (base + self.field_path).lstrip(".")


def all_rules(schema: dict[str, Any], path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    for rule in schema.get("x-kubernetes-validations", []):
        yield path or ".", rule
    for name, sub in (schema.get("properties") or {}).items():
        yield from all_rules(sub, f"{path}.{name}")
    if isinstance(schema.get("items"), dict):
        yield from all_rules(schema["items"], f"{path}[*]")
    if isinstance(schema.get("additionalProperties"), dict):
        yield from all_rules(schema["additionalProperties"], f"{path}[*]")


@functools.lru_cache(maxsize=256)
def compile_rule(rule: str):
    return _ENV.program(_ENV.compile(rule))


def evaluate(schema: dict[str, Any], new: Any, old: Any = _MISSING, path: str = "") -> list[Failure]:
    failures: list[Failure] = []
    for rule in schema.get("x-kubernetes-validations", []):
        text = rule["rule"]
        transition = "oldSelf" in text
        if transition and old is _MISSING:
            continue
        activation = {"self": celpy.json_to_cel(new)}
        if transition:
            activation["oldSelf"] = celpy.json_to_cel(old)
        try:
            result = compile_rule(text).evaluate(activation)
        except celpy.CELEvalError as err:   # cel-python raises (or returns) on a value of the wrong type
            result = err
        if isinstance(result, celpy.CELEvalError):
            raise CELEvaluationError(f"CEL rule {text!r} at {path or '.'} failed to evaluate: {result}")
        if not bool(result):
            failures.append(Failure(path or ".", text, rule.get("message", ""), rule.get("fieldPath", "")))
    props = schema.get("properties") or {}
    if isinstance(new, dict):
        for name, sub in props.items():
            if name in new:
                old_sub = old.get(name, _MISSING) if isinstance(old, dict) else _MISSING
                failures += evaluate(sub, new[name], old_sub, f"{path}.{name}")
    if isinstance(new, list) and isinstance(schema.get("items"), dict):
        for i, item in enumerate(new):
            failures += evaluate(schema["items"], item, _MISSING, f"{path}[{i}]")
    return failures
