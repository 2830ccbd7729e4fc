"""A small HTTP client for tests: status codes and bodies as the API server sent them.

Tests of the emulator need the raw status (201 vs 200, 409, 422) that kubernetes_asyncio
turns into objects or exceptions, so this client returns ``Reply(status, body)``;
``reply.ok()`` returns the body or raises :class:`ApiError` for a 4xx/5xx. Resources are a
fedcare ``Resource`` or ``'group/version/plural'`` (``'v1/namespaces'`` for the core group).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from types import TracebackType
from typing import Any, NamedTuple

import aiohttp

from fedcare.api.resources import Resource
from fedcare.sandbox.emulator import as_resource

MERGE = "application/merge-patch+json"
JSON_PATCH = "application/json-patch+json"
APPLY = "application/apply-patch+yaml"


class ApiError(Exception):
    def __init__(self, status: int, body: Any) -> None:
        self.status, self.body = status, body
        reason = body.get("reason") if isinstance(body, dict) else None
        super().__init__(f"{status} {reason}: {body.get('message') if isinstance(body, dict) else body}")


class Reply(NamedTuple):
    status: int
    body: Any

    def ok(self) -> Any:
        if self.status >= 400:
            raise ApiError(self.status, self.body)
        return self.body


def api_path(res: Resource | str, name: str | None = None, namespace: str | None = None,
             subresource: str | None = None) -> str:
    r = as_resource(res)
    path = "/api/v1" if not r.group else f"/apis/{r.group}/{r.version}"
    if namespace:
        path += f"/namespaces/{namespace}"
    path += f"/{r.plural}"
    if name:
        path += f"/{name}" + (f"/{subresource}" if subresource else "")
    return path


class KubeClient:
    def __init__(self, url: str, *, timeout: float = 10.0) -> None:
        self.url = url.rstrip("/")
        self.session = aiohttp.ClientSession(self.url, timeout=aiohttp.ClientTimeout(total=timeout))

    async def __aenter__(self) -> KubeClient:
        return self

    async def __aexit__(self, et: type[BaseException] | None, e: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.close()

    async def close(self) -> None:
        await self.session.close()

    async def request(self, method: str, path: str, *, body: Any = None, params: dict[str, str] | None = None,
                      content_type: str = "application/json") -> Reply:
        data = body if isinstance(body, (str, bytes)) or body is None else json.dumps(body)
        headers = {"Content-Type": content_type} if data is not None else {}
        async with self.session.request(method, path, data=data, params=params, headers=headers) as rsp:
            text = await rsp.text()
        try:
            return Reply(rsp.status, json.loads(text) if text else None)
        except ValueError:
            return Reply(rsp.status, text)

    async def get(self, res: Resource | str, name: str, namespace: str | None = None, *,
                  subresource: str | None = None) -> Reply:
        return await self.request("GET", api_path(res, name, namespace, subresource))

    async def list(self, res: Resource | str, namespace: str | None = None, *,
                   labels: str | None = None, fields: str | None = None) -> Reply:
        params = {k: v for k, v in (("labelSelector", labels), ("fieldSelector", fields)) if v}
        return await self.request("GET", api_path(res, None, namespace), params=params)

    async def create(self, res: Resource | str, body: dict[str, Any], namespace: str | None = None) -> Reply:
        if isinstance(res, Resource) and not res.namespaced:
            namespace = None
        else:
            namespace = namespace or (body.get("metadata") or {}).get("namespace")
        return await self.request("POST", api_path(res, None, namespace), body=body)

    async def patch(self, res: Resource | str, name: str, patch: Any, namespace: str | None = None, *,
                    subresource: str | None = None, content_type: str = MERGE) -> Reply:
        return await self.request("PATCH", api_path(res, name, namespace, subresource), body=patch,
                                  content_type=content_type)

    async def patch_status(self, res: Resource | str, name: str, patch: Any, namespace: str | None = None) -> Reply:
        return await self.patch(res, name, patch, namespace, subresource="status")

    async def replace(self, res: Resource | str, name: str, body: dict[str, Any], namespace: str | None = None, *,
                      subresource: str | None = None) -> Reply:
        return await self.request("PUT", api_path(res, name, namespace, subresource), body=body)

    async def delete(self, res: Resource | str, name: str, namespace: str | None = None, *,
                     preconditions: dict[str, str] | None = None) -> Reply:
        body = {"kind": "DeleteOptions", "apiVersion": "v1", "preconditions": preconditions} if preconditions else None
        return await self.request("DELETE", api_path(res, name, namespace), body=body)

    async def watch(self, res: Resource | str, namespace: str | None = None,
                    **params: str) -> AsyncIterator[dict[str, Any]]:
        """Watch events as dicts until the server ends the stream (wrap in ``asyncio.timeout``)."""
        query = {"watch": "true", **params}
        timeout = aiohttp.ClientTimeout(total=None, sock_read=None)
        async with self.session.get(api_path(res, None, namespace), params=query, timeout=timeout) as rsp:
            if rsp.status >= 400:
                raise ApiError(rsp.status, await rsp.text())
            async for line in rsp.content:
                if line.strip():
                    yield json.loads(line)
