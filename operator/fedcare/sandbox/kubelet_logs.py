"""The process kubelet's log endpoint: what the API server calls for ``kubectl logs``.

A real API server answers ``GET /api/v1/namespaces/NS/pods/POD/log`` by calling the pod's
node at ``https://<InternalIP>:<daemonEndpoints.kubeletEndpoint.Port>/containerLogs/NS/POD/
CONTAINER`` (it verifies the kubelet's certificate only when started with
``--kubelet-certificate-authority``, which the sandbox control plane is not). This serves that
path over HTTPS with a self-signed certificate (``DIR/pki``), from the log files under
``DIR/pods``: ``tailLines``, ``limitBytes``, ``previous`` and ``follow`` (until the container
stops) as in Kubernetes. The emulator proxies its ``pods/log`` the same way.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import pathlib
import ssl
from typing import TYPE_CHECKING

from aiohttp import web

if TYPE_CHECKING:
    from .kubelet import ProcessKubelet

log = logging.getLogger(__name__)

__all__ = ["LogServer", "self_signed"]


def self_signed(folder: pathlib.Path) -> tuple[pathlib.Path, pathlib.Path]:
    """A serving certificate for 127.0.0.1/localhost (made once, kept under ``folder``)."""
    cert, key = folder / "kubelet.crt", folder / "kubelet.key"
    if cert.exists() and key.exists():
        return cert, key
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    folder.mkdir(parents=True, exist_ok=True)
    private = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fedcare-sandbox-kubelet")])
    now = dt.datetime.now(dt.timezone.utc)
    certificate = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(private.public_key())
                   .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
                   .not_valid_after(now + dt.timedelta(days=365))
                   .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                               x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                                  critical=False)
                   .sign(private, hashes.SHA256()))
    key.write_bytes(private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
    key.chmod(0o600)
    cert.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    return cert, key


class LogServer:
    def __init__(self, kubelet: "ProcessKubelet"):
        self.kubelet = kubelet
        self.port = 0
        self._runner: web.AppRunner | None = None

    async def start(self) -> int:
        cert, key = self_signed(self.kubelet.dir / "pki")
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(cert, key)
        app = web.Application()
        app.router.add_get("/containerLogs/{namespace}/{pod}/{container}", self._logs)
        app.router.add_get("/healthz", lambda request: web.Response(text="ok"))
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0, ssl_context=context)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]   # aiohttp exposes no public accessor
        return self.port

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def _files(self, namespace: str, pod: str, container: str) -> list[pathlib.Path]:
        """The container's log files, oldest first, of the newest pod of that name."""
        dirs = sorted((self.kubelet.dir / "pods").glob(f"{namespace}_{pod}_*/logs/{container}"),
                      key=lambda p: p.stat().st_mtime)
        if not dirs:
            return []
        return sorted(dirs[-1].glob("*.log"), key=lambda p: int(p.stem))

    async def _logs(self, request: web.Request) -> web.StreamResponse:
        ns, pod, name = (request.match_info[k] for k in ("namespace", "pod", "container"))
        q = request.query
        files = self._files(ns, pod, name)
        if q.get("previous") in ("true", "1"):
            files = files[:-1]
            if not files:
                return web.Response(status=400, text=f'previous terminated container "{name}" in pod "{pod}" not found')
        if not files:
            return web.Response(status=404, text=f'container "{name}" in pod "{pod}" has no logs (not started yet)')
        path = files[-1]
        data = path.read_bytes()
        if q.get("tailLines"):
            lines = data.splitlines(keepends=True)
            data = b"".join(lines[-int(q["tailLines"]):]) if int(q["tailLines"]) > 0 else b""
        if q.get("limitBytes"):
            data = data[:int(q["limitBytes"])]
        follow = q.get("follow") in ("true", "1") and q.get("previous") not in ("true", "1")
        if not follow:
            return web.Response(body=data, content_type="text/plain")
        response = web.StreamResponse(headers={"Content-Type": "text/plain"})
        await response.prepare(request)
        await response.write(data)
        offset = path.stat().st_size
        while True:
            await asyncio.sleep(0.2)
            size = path.stat().st_size
            if size > offset:
                with path.open("rb") as fh:
                    fh.seek(offset)
                    await response.write(fh.read(size - offset))
                offset = size
            elif self.kubelet._stopping or not self._running(ns, pod, name, path):
                break
        await response.write_eof()
        return response

    def _running(self, namespace: str, pod: str, container: str, path: pathlib.Path) -> bool:
        worker = self.kubelet._worker(namespace, pod)
        if worker is None:
            return False
        c = worker.containers.get(container) or next((i for i in worker.inits if i.name == container), None)
        return c is not None and c.running and path.stem == str(c.restart_count)
