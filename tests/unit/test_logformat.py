"""--log-format json: one JSON object per line, allow-listed keys only (no stray extras)."""

from __future__ import annotations

import dataclasses
import io
import json
import logging

import pytest

from fedcare.logformat import configure_logging, json_formatter


@dataclasses.dataclass
class Credentials:
    token: str = "eyJhbGciOi.fedcare-secret"


def _line(**extra) -> dict:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(json_formatter())
    logger = logging.getLogger("fedcare.test.logformat")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logger.warning("Site %s is %s", "rouen", "unavailable", extra=extra)
    finally:
        logger.removeHandler(handler)
    text = stream.getvalue()
    assert text.count("\n") == 1
    return json.loads(text)


def test_json_line_has_the_usual_keys_and_the_object_reference():
    record = _line(k8s_ref={"kind": "HospitalNode", "name": "rouen", "uid": "u-1", "extra": "x"})
    assert record["level"] == "WARNING" and record["logger"] == "fedcare.test.logformat"
    assert record["message"] == "Site rouen is unavailable" and "T" in record["time"]
    assert record["k8s_ref"] == {"kind": "HospitalNode", "name": "rouen", "uid": "u-1"}


def test_unknown_extras_are_dropped_not_serialised():
    record = _line(settings=Credentials(), k8s_skip=True)
    assert set(record) == {"time", "level", "logger", "message"}
    assert "fedcare-secret" not in json.dumps(record)


def test_bad_format_is_refused():
    with pytest.raises(ValueError, match="expected text or json"):
        configure_logging(fmt="xml")


def test_a_busy_metrics_port_is_an_error_not_a_crash():
    import socket

    from fedcare import metrics

    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    logger = logging.getLogger("fedcare.metrics")
    logger.addHandler(handler)
    try:
        with socket.socket() as busy:
            busy.bind(("127.0.0.1", 0))
            busy.listen()
            port = busy.getsockname()[1]
            assert metrics.serve(f"127.0.0.1:{port}", metrics.build_registry("agent")) is None
    finally:
        logger.removeHandler(handler)
    assert f"Cannot serve metrics on 127.0.0.1:{port}" in stream.getvalue() and "--metrics ''" in stream.getvalue()


@pytest.mark.parametrize("bad", ["nowhere", "host:", "host:99999", "9102"])
def test_metrics_address_must_be_host_port(bad):
    from fedcare.metrics import parse_address

    with pytest.raises(ValueError, match="expected HOST:PORT"):
        parse_address(bad)
