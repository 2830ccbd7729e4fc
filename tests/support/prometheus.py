"""A real Prometheus server for tests: the Debian ``prometheus`` binary on a free loopback port.

``async with prometheus(targets, tmp_path) as prom:`` writes a config scraping ``targets``
(job name → list of ``host:port``) every second, starts the server with its own TSDB in
``tmp_path``, waits for ``/-/ready`` and stops it (SIGTERM, then SIGKILL) on exit, whatever
happened: no Prometheus process outlives the test. ``prom.query(expr)`` runs an instant query.
"""

from __future__ import annotations

import asyncio
import contextlib
import pathlib
import shutil
import signal
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
import yaml

INSTALL = "make prometheus (or: sudo apt-get update && sudo apt-get install -y prometheus)"


def binary(name: str = "prometheus") -> str:
    found = shutil.which(name) or (f"/usr/bin/{name}" if pathlib.Path(f"/usr/bin/{name}").is_file() else None)
    if found is None:
        pytest.skip(f"{name} is not installed: {INSTALL}")
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Prometheus:
    url: str
    session: aiohttp.ClientSession

    async def api(self, path: str, **params: str) -> Any:
        async with self.session.get(f"{self.url}/api/v1/{path}", params=params,
                                    timeout=aiohttp.ClientTimeout(total=10)) as resp:
            doc = await resp.json()
        if doc.get("status") != "success":
            raise AssertionError(f"Prometheus refused {path} {params}: {doc.get('errorType')}: {doc.get('error')}")
        return doc["data"]

    async def query(self, expr: str) -> dict[str, Any]:
        """Instant query; returns ``{"resultType": ..., "result": [...]}``."""
        return await self.api("query", query=expr)

    async def targets_up(self) -> dict[str, str]:
        data = await self.api("targets")
        return {t["scrapeUrl"]: t["health"] for t in data["activeTargets"]}


@contextlib.asynccontextmanager
async def prometheus(targets: dict[str, list[str]], workdir: pathlib.Path, *,
                     scrape_interval: str = "1s") -> AsyncIterator[Prometheus]:
    exe = binary()
    workdir.mkdir(parents=True, exist_ok=True)
    config = {"global": {"scrape_interval": scrape_interval, "scrape_timeout": scrape_interval,
                         "evaluation_interval": scrape_interval},
              "scrape_configs": [{"job_name": job, "static_configs": [{"targets": hosts}]}
                                 for job, hosts in targets.items()]}
    (workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    log = (workdir / "prometheus.log").open("w")
    proc = await asyncio.create_subprocess_exec(
        exe, f"--config.file={workdir / 'prometheus.yml'}", f"--storage.tsdb.path={workdir / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn", stdout=log, stderr=asyncio.subprocess.STDOUT)
    session = aiohttp.ClientSession()
    try:
        url = f"http://127.0.0.1:{port}"
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 30
        while True:
            if proc.returncode is not None:
                raise RuntimeError(f"prometheus exited ({proc.returncode}): "
                                   f"{(workdir / 'prometheus.log').read_text()[-2000:]}")
            with contextlib.suppress(aiohttp.ClientError, asyncio.TimeoutError):
                async with session.get(f"{url}/-/ready", timeout=aiohttp.ClientTimeout(total=2)) as resp:
                    if resp.status == 200:
                        break
            if loop.time() > deadline:
                raise TimeoutError("prometheus was not ready within 30s")
            await asyncio.sleep(0.2)
        yield Prometheus(url, session)
    finally:
        await session.close()
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), 15)
            except asyncio.TimeoutError:
                proc.kill()
                await proc.wait()
        log.close()
