"""Fixes to kmock 0.8's request parser (``kmock._internal.parsing``), installed process-wide.

kmock parses every URL with ``parsing.parse_path`` and guesses the Kubernetes action with
``parsing.guess_k8s``; ``rendering.Request._parse`` looks both up as module attributes at
call time, so replacing the attributes is enough. Two bugs need it:

* ``/api/v1/namespaces/NAME`` is read as "namespace NAME, no plural": every GET, PATCH or
  DELETE of a Namespace object misses it (``/namespaces/NAME/status|finalize`` as well).
* kubernetes_asyncio sends ``?watch=True`` (a Python bool rendered as text) and kmock only
  recognises ``watch=true``: its watch requests were served as plain LISTs.

The fixes are idempotent (the originals are kept in ``__wrapped__``) and harmless for any
other user of kmock in the same process.
"""

from __future__ import annotations

from collections.abc import Mapping

from kmock._internal import enums
from kmock._internal import parsing as _kparsing

_orig_parse_path = getattr(_kparsing.parse_path, "__wrapped__", _kparsing.parse_path)
_orig_guess_k8s = getattr(_kparsing.guess_k8s, "__wrapped__", _kparsing.guess_k8s)


def parse_path(path: str) -> _kparsing.ParsedPath:
    parts = path.strip("/").split("/")
    if parts[:3] == ["api", "v1", "namespaces"] and (
            len(parts) <= 4 or (len(parts) == 5 and parts[4] in {"status", "finalize"})):
        return _kparsing.ParsedPath(group="", version="v1", plural="namespaces", namespace=None,
                                    name=parts[3] if len(parts) >= 4 else None,
                                    subresource=parts[4] if len(parts) == 5 else None)
    return _orig_parse_path(path)


def guess_k8s(k8s: _kparsing.ParsedPath, method: enums.method,
              query: Mapping[str, str]) -> enums.action | None:
    if "watch" in query:
        query = {**query, "watch": str(query["watch"]).lower()}
    return _orig_guess_k8s(k8s, method, dict(query))


parse_path.__wrapped__ = _orig_parse_path  # type: ignore[attr-defined]
guess_k8s.__wrapped__ = _orig_guess_k8s  # type: ignore[attr-defined]


def install_parser_fixes() -> None:
    _kparsing.parse_path = parse_path
    _kparsing.guess_k8s = guess_k8s  # type: ignore[assignment]
