"""Evaluate a CRD schema's CEL rules (x-kubernetes-validations) the way the API server does.

The server evaluates each rule with ``self`` bound to the value at the rule's place in the
schema, only where that value is present; rules that mention ``oldSelf`` (transition rules)
only on update, when the old value is present too. cel-python does the evaluation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator

import celpy

_ENV = celpy.Environment()
_MISSING = object()


@dataclass
class Failure:
    path: str
    rule: str
    message: str


def all_rules(schema: dict[str, Any], path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    for rule in schema.get("x-kubernetes-validations", []):
        yield path or ".", rule
    for name, sub in (schema.get("properties") or {}).items():
        yield from all_rules(sub, f"{path}.{name}")
    if isinstance(schema.get("items"), dict):
        yield from all_rules(schema["items"], f"{path}[*]")
    if isinstance(schema.get("additionalProperties"), dict):
        yield from all_rules(schema["additionalProperties"], f"{path}[*]")


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
        result = compile_rule(text).evaluate(activation)
        if isinstance(result, celpy.CELEvalError):
            raise AssertionError(f"CEL rule {text!r} at {path or '.'} failed to evaluate: {result}")
        if not bool(result):
            failures.append(Failure(path or ".", text, rule.get("message", "")))
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
