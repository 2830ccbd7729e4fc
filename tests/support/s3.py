"""A real S3 API server (S3Proxy, fedcare.sandbox.s3_setup) for the artifact store tests.

``s3`` (module-scoped: the JVM takes a few seconds to start) is a running server with a
``fedcare`` bucket; it is stopped, and waited for, after the module. Without Java or the jar
the tests skip naming the install command (fail under ``make test``, which installs it).
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from fedcare.sandbox.s3_setup import S3Server, missing, s3_server

BUCKET = "fedcare"


def need_s3proxy() -> None:
    why = missing()
    if why:
        if os.environ.get("FEDCARE_REQUIRE_S3PROXY"):
            pytest.fail(f"S3Proxy is required under make test but missing: {why}", pytrace=False)
        pytest.skip(why)                     # it names the install command


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    need_s3proxy()
    with s3_server(tmp_path_factory.mktemp("s3proxy")) as server:
        server.make_bucket(BUCKET)
        yield server
    assert server.process.poll() is not None, "S3Proxy still runs after the fixture"
