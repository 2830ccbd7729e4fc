"""A real S3 API server for the sandbox and the tests: S3Proxy (Apache jclouds, filesystem backend).

``with s3_server(workdir) as srv:`` starts ``java -jar s3proxy.jar`` on a free loopback port
with its objects under ``workdir/objects``, random credentials (AWS SigV2/V4 checked by the
server), waits until it answers, and on exit stops it (SIGTERM, then SIGKILL) and waits for it:
no Java process outlives the block. ``srv.store()`` is an :class:`~fedcare.integrations.s3.S3Store`
with those credentials; ``srv.make_bucket(name)`` creates a bucket.

The jar comes from Maven Central (``make s3proxy``); it is looked up in ``$FEDCARE_S3PROXY_JAR``,
``.tools/s3proxy-<version>.jar`` of this checkout, then the local Maven repository.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import secrets
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass

from ..integrations.s3 import S3Policy, S3Store
from .openbao import free_port

REPO = pathlib.Path(__file__).resolve().parents[3]
VERSION = "2.7.0"
JAR = f"s3proxy-{VERSION}-jar-with-dependencies.jar"
INSTALL_HINT = "make s3proxy   (mvn dependency:get org.gaul:s3proxy:%s:jar:jar-with-dependencies; needs Java 17+)" \
    % VERSION


class S3ProxyMissing(RuntimeError):
    pass


def jar_path() -> pathlib.Path | None:
    env = os.environ.get("FEDCARE_S3PROXY_JAR")
    candidates = [pathlib.Path(env)] if env else []
    candidates += [REPO / ".tools" / f"s3proxy-{VERSION}.jar",
                   pathlib.Path.home() / ".m2" / "repository" / "org" / "gaul" / "s3proxy" / VERSION / JAR]
    return next((c for c in candidates if c.is_file()), None)


def java_binary() -> str | None:
    return shutil.which("java")


def missing() -> str:
    """Why the server cannot start here ('' when it can)."""
    if java_binary() is None:
        return f"java is not installed (S3Proxy needs Java 17+): {INSTALL_HINT}"
    if jar_path() is None:
        return f"S3Proxy {VERSION} is not installed: {INSTALL_HINT}"
    return ""


@dataclass
class S3Server:
    endpoint: str
    access_key: str
    secret_key: str
    basedir: pathlib.Path
    process: subprocess.Popen

    def store(self, policy: S3Policy | None = None, **kw: str) -> S3Store:
        creds = {"access_key": self.access_key, "secret_key": self.secret_key, **kw}
        return S3Store(self.endpoint, "us-east-1", policy or S3Policy(), **creds)

    def make_bucket(self, name: str) -> None:
        client = self.store().client()
        if not client.bucket_exists(name):
            client.make_bucket(name)


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


@contextlib.contextmanager
def s3_server(workdir: pathlib.Path, *, port: int | None = None, timeout: float = 60.0) -> Iterator[S3Server]:
    why = missing()
    if why:
        raise S3ProxyMissing(why)
    workdir.mkdir(parents=True, exist_ok=True)
    basedir = workdir / "objects"
    basedir.mkdir(exist_ok=True)
    port = port or free_port()
    access, secret = "fc" + secrets.token_hex(8), secrets.token_urlsafe(24)
    props = workdir / "s3proxy.properties"
    props.write_text(f"s3proxy.endpoint=http://127.0.0.1:{port}\n"
                     "s3proxy.authorization=aws-v2-or-v4\n"
                     f"s3proxy.identity={access}\n"
                     f"s3proxy.credential={secret}\n"
                     "jclouds.provider=filesystem\n"
                     f"jclouds.filesystem.basedir={basedir}\n")
    props.chmod(0o600)
    log = open(workdir / "s3proxy.log", "wb")
    # A small heap and one JIT thread: the server holds little, and the machine is shared.
    proc = subprocess.Popen([java_binary() or "java", "-Xmx256m", "-XX:TieredStopAtLevel=1",
                             "-XX:CICompilerCount=1", "-XX:+UseSerialGC", "-jar", str(jar_path()),
                             "--properties", str(props)],
                            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"S3Proxy exited with {proc.returncode} before answering; see "
                                   f"{workdir / 's3proxy.log'}")
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"S3Proxy did not listen on 127.0.0.1:{port} within {timeout:.0f}s; see "
                                       f"{workdir / 's3proxy.log'}") from None
                time.sleep(0.2)
        yield S3Server(f"http://127.0.0.1:{port}", access, secret, basedir, proc)
    finally:
        _stop(proc)
        log.close()
