"""Label and field selectors as the API server evaluates them (kmock 0.8 ignores both).

Label selectors: ``k=v``, ``k==v``, ``k!=v``, ``k in (a,b)``, ``k notin (a)``, ``k``, ``!k``,
comma-separated, all must hold. Field selectors: ``path=v``, ``path==v``, ``path!=v`` on any
dotted path (a real server allows only a few per kind; accepting all is harmless for tests).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

_SET_RE = re.compile(r"^\s*([^\s!=]+)\s+(in|notin)\s+\(([^)]*)\)\s*$")


def split_selector(selector: str) -> list[str]:
    """Split on the commas that are not inside ``( … )``."""
    out: list[str] = []
    depth, cur = 0, ""
    for ch in selector:
        depth += ch == "("
        depth -= ch == ")"
        if ch == "," and depth == 0:
            out.append(cur)
            cur = ""
        else:
            cur += ch
    out.append(cur)
    return [p.strip() for p in out if p.strip()]


def _one_label_requirement(req: str, labels: Mapping[str, str]) -> bool:
    if m := _SET_RE.match(req):
        key, op = m.group(1), m.group(2)
        values = {v.strip() for v in m.group(3).split(",")}
        return (labels.get(key) in values) if op == "in" else (labels.get(key) not in values)
    if "!=" in req:
        key, val = (x.strip() for x in req.split("!=", 1))
        return labels.get(key) != val
    if "=" in req:
        key, val = (x.strip() for x in req.replace("==", "=").split("=", 1))
        return labels.get(key) == val
    if req.startswith("!"):
        return req[1:].strip() not in labels
    return req in labels


def match_labels(selector: str | None, labels: Mapping[str, str]) -> bool:
    return all(_one_label_requirement(req, labels) for req in split_selector(selector or ""))


def match_fields(selector: str | None, obj: Mapping[str, Any]) -> bool:
    for req in split_selector(selector or ""):
        negated = "!=" in req
        path, val = (x.strip() for x in req.replace("==", "=").replace("!=", "=").split("=", 1))
        cur: Any = obj
        for part in path.split("."):
            cur = cur.get(part) if isinstance(cur, Mapping) else None
        # The API server renders booleans as Go does: ``spec.unschedulable=true``.
        text = "" if cur is None else str(cur).lower() if isinstance(cur, bool) else str(cur)
        if (text == val) == negated:
            return False
    return True
