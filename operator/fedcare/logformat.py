"""``--log-format text|json``: human lines, or one JSON object per line for log pipelines.

JSON lines come from python-json-logger (kopf depends on it too): ``time``, ``level``,
``logger``, ``message``, plus the extras a record carries — kopf's per-object loggers add
``k8s_ref`` (apiVersion, kind, namespace, name, uid), so a pipeline can filter by object.
"""

from __future__ import annotations

import logging

from pythonjsonlogger.core import RESERVED_ATTRS
from pythonjsonlogger.json import JsonFormatter

TEXT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
#: Extras that are noise in a pipeline (kopf's flag for its own event poster, asyncio's task name).
_DROPPED = ["k8s_skip", "color_message", "taskName"]


def json_formatter() -> JsonFormatter:
    return JsonFormatter("%(asctime)s %(levelname)s %(name)s %(message)s",
                         rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
                         reserved_attrs=[*RESERVED_ATTRS, *_DROPPED], datefmt="%Y-%m-%dT%H:%M:%S%z",
                         json_ensure_ascii=False)


def configure_logging(*, level: int = logging.INFO, fmt: str = "text") -> None:
    handler = logging.StreamHandler()
    if fmt == "json":
        handler.setFormatter(json_formatter())
    elif fmt == "text":
        handler.setFormatter(logging.Formatter(TEXT))
    else:
        raise ValueError(f"--log-format {fmt!r}: expected text or json")
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
