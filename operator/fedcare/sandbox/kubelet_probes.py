"""Container probes on the process kubelet: exec, tcpSocket, httpGet and grpc, as a kubelet runs them.

``startupProbe`` gates the others; ``readinessProbe`` sets the container's ``ready`` (no probe:
ready while running); ``livenessProbe`` (and a failed startupProbe) restarts the container
after ``failureThreshold`` consecutive failures. Timing fields as in Kubernetes
(``initialDelaySeconds``, ``periodSeconds`` 10, ``timeoutSeconds`` 1, ``successThreshold`` 1,
``failureThreshold`` 3). Probes reach the container at its pod IP (httpGet ``host`` if set).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import Awaitable, Callable
from typing import Any

log = logging.getLogger(__name__)

__all__ = ["ProbeRunner", "run_probe"]


def _port(value: Any, container: dict[str, Any]) -> int:
    if isinstance(value, int) or (isinstance(value, str) and value.isdigit()):
        return int(value)
    for port in container.get("ports") or []:
        if port.get("name") == value:
            return int(port["containerPort"])
    raise ValueError(f"no container port named {value!r}")


async def run_probe(probe: dict[str, Any], container: dict[str, Any], ip: str, env: dict[str, str],
                    cwd: str) -> tuple[bool, str]:
    """One probe attempt: (success, why it failed)."""
    timeout = float(probe.get("timeoutSeconds", 1))
    try:
        if "exec" in probe:
            proc = await asyncio.create_subprocess_exec(
                *probe["exec"].get("command", []), env=env, cwd=cwd, stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, start_new_session=True)
            try:
                out, _ = await asyncio.wait_for(proc.communicate(), timeout)
            except asyncio.TimeoutError:
                proc.kill()
                await proc.wait()
                return False, f"command timed out after {timeout:g}s"
            except asyncio.CancelledError:   # the container stopped: leave no probe process behind
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await asyncio.shield(proc.wait())
                raise
            return proc.returncode == 0, f"exit code {proc.returncode}: {out.decode(errors='replace')[-200:]}"
        if "tcpSocket" in probe:
            port = _port(probe["tcpSocket"].get("port"), container)
            _, writer = await asyncio.wait_for(asyncio.open_connection(probe["tcpSocket"].get("host") or ip, port),
                                               timeout)
            writer.close()
            return True, ""
        if "httpGet" in probe:
            return await _http(probe["httpGet"], container, ip, timeout)
        if "grpc" in probe:
            return await _grpc(probe["grpc"], ip, timeout)
    except (OSError, asyncio.TimeoutError, ValueError) as exc:
        return False, f"{type(exc).__name__}: {exc}"
    return False, "the probe has no exec, tcpSocket, httpGet or grpc handler"


def _no_verify() -> ssl.SSLContext:
    # A kubelet does not verify a probe's certificate. One context for every probe: building
    # one per probe with create_default_context() loaded the system CA bundle each time
    # (~0.1 s of CPU per HTTPS probe, 12% of the sandbox's CPU during a demo round).
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    return context


_NO_VERIFY = _no_verify()


async def _http(spec: dict[str, Any], container: dict[str, Any], ip: str, timeout: float) -> tuple[bool, str]:
    port = _port(spec.get("port"), container)
    host = spec.get("host") or ip
    context = _NO_VERIFY if spec.get("scheme", "HTTP").upper() == "HTTPS" else None
    reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port, ssl=context), timeout)
    try:
        headers = "".join(f"{h['name']}: {h['value']}\r\n" for h in spec.get("httpHeaders") or [])
        writer.write(f"GET {spec.get('path', '/')} HTTP/1.0\r\nHost: {host}:{port}\r\n{headers}"
                     "User-Agent: kube-probe/1.34\r\n\r\n".encode())
        line = await asyncio.wait_for(reader.readline(), timeout)
    finally:
        writer.close()
    parts = line.decode(errors="replace").split()
    code = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0
    return 200 <= code < 400, f"HTTP probe failed with statuscode: {code}"


async def _grpc(spec: dict[str, Any], ip: str, timeout: float) -> tuple[bool, str]:
    try:
        import grpc
        from grpc_health.v1 import health_pb2, health_pb2_grpc
    except ImportError:
        return False, "grpc probes need grpcio-health-checking in the kubelet's virtualenv"
    async with grpc.aio.insecure_channel(f"{ip}:{int(spec['port'])}") as channel:
        try:
            answer = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=spec.get("service", "")), timeout=timeout)
        except grpc.aio.AioRpcError as err:
            return False, f"gRPC health check failed: {err.code().name}"
    ok = answer.status == health_pb2.HealthCheckResponse.SERVING
    return ok, "" if ok else f"service unhealthy ({health_pb2.HealthCheckResponse.ServingStatus.Name(answer.status)})"


class ProbeRunner:
    """The probes of one running container; reports through callbacks until cancelled."""

    def __init__(self, container: dict[str, Any], ip: str, env: dict[str, str], cwd: str, *,
                 on_ready: Callable[[bool], None], on_started: Callable[[], None],
                 on_failure: Callable[[str, str], Awaitable[None]]):
        self.container, self.ip, self.env, self.cwd = container, ip, env, cwd
        self.on_ready, self.on_started, self.on_failure = on_ready, on_started, on_failure
        self.started = "startupProbe" not in container
        self.tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        if self.started:
            self.on_started()
        for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
            if self.container.get(kind):
                self.tasks.append(loop.create_task(self._loop(kind, self.container[kind])))

    def stop(self) -> None:
        for task in self.tasks:
            task.cancel()

    async def _loop(self, kind: str, probe: dict[str, Any]) -> None:
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.sleep(float(probe.get("initialDelaySeconds", 0)))
            period = float(probe.get("periodSeconds", 10))
            need_ok, need_fail = int(probe.get("successThreshold", 1)), int(probe.get("failureThreshold", 3))
            oks = fails = 0
            while True:
                if kind != "startupProbe" and not self.started:
                    await asyncio.sleep(0.1)
                    continue
                ok, why = await run_probe(probe, self.container, self.ip, self.env, self.cwd)
                oks, fails = (oks + 1, 0) if ok else (0, fails + 1)
                if kind == "startupProbe" and oks >= 1:
                    self.started = True
                    self.on_started()
                    return
                if kind == "readinessProbe":
                    if oks >= need_ok:
                        self.on_ready(True)
                    elif fails >= need_fail:
                        self.on_ready(False)
                if kind in ("livenessProbe", "startupProbe") and fails >= need_fail:
                    name = {"livenessProbe": "Liveness", "startupProbe": "Startup"}[kind]
                    await self.on_failure(name, why)
                    return
                await asyncio.sleep(period)
