"""``--log-format text|json``: human lines, or one JSON object per line for log pipelines.

JSON lines come from python-json-logger (kopf depends on it too): ``time``, ``level``,
``logger``, ``message``, plus the extras a record carries — kopf's per-object loggers add
``k8s_ref`` (apiVersion, kind, namespace, name, uid), so a pipeline can filter by object.
"""

from __future__ import annotations

import logging
from typing import Any

from pythonjsonlogger.json import JsonFormatter

TEXT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
#: The only keys a JSON line carries. Extras are allow-listed, not passed through: kopf attaches
#: objects to some records (settings, credentials holders) that are neither serialisable nor
#: safe to print.
KEYS = ("time", "level", "logger", "message", "k8s_ref", "exc_info", "stack_info")


class FedcareJsonFormatter(JsonFormatter):
    def add_fields(self, log_data: dict[str, Any], record: logging.LogRecord, message_dict: dict[str, Any]) -> None:
        super().add_fields(log_data, record, message_dict)
        for key in list(log_data):
            if key not in KEYS:
                del log_data[key]
        ref = log_data.get("k8s_ref")
        if isinstance(ref, dict):        # only the object's identity, as plain strings
            log_data["k8s_ref"] = {k: str(v) for k, v in ref.items()
                                   if k in ("apiVersion", "kind", "namespace", "name", "uid") and v}
        elif ref is not None:
            del log_data["k8s_ref"]


def json_formatter() -> JsonFormatter:
    return FedcareJsonFormatter("%(asctime)s %(levelname)s %(name)s %(message)s",
                                rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
                                datefmt="%Y-%m-%dT%H:%M:%S%z", json_ensure_ascii=False)


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
