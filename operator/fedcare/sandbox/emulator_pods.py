"""Graceful pod deletion, as the API server does it (the emulator's pod strategy).

Deleting a pod that is bound to a node (``spec.nodeName``) and not finished does not remove
it: the API server sets ``deletionTimestamp`` (now + the grace period) and
``deletionGracePeriodSeconds`` (the DELETE's ``gracePeriodSeconds``, else the pod's
``terminationGracePeriodSeconds``, else 30), and the node's kubelet stops the containers
and then deletes the object with ``gracePeriodSeconds=0``. An unbound or finished pod, or a
grace period of 0, goes at once. A second DELETE can only shorten the grace period.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import kmock

PODS = kmock.resource("v1/pods")
DEFAULT_GRACE = 30


def requested_grace(opts: dict[str, Any], query: Any = None) -> int | None:
    """``gracePeriodSeconds`` from DeleteOptions (body) or the query string."""
    value = opts.get("gracePeriodSeconds")
    if value is None and query is not None:
        value = query.get("gracePeriodSeconds")
    return None if value is None else max(0, int(value))


def graceful_delete(res: Any, pod: dict[str, Any], grace: int | None) -> int | None:
    """The grace period to wait for the kubelet, or None when the pod is deleted at once."""
    if res != PODS:
        return None
    spec, md = pod.get("spec") or {}, pod["metadata"]
    if not spec.get("nodeName") or (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
        return None
    if grace is None:
        grace = int(spec.get("terminationGracePeriodSeconds", DEFAULT_GRACE))
    current = md.get("deletionGracePeriodSeconds")
    if current is not None and md.get("deletionTimestamp"):
        grace = min(grace, int(current))
    return grace or None


def mark_deleting(md: dict[str, Any], grace: int) -> None:
    when = dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=grace)
    md.update(deletionTimestamp=when.strftime("%Y-%m-%dT%H:%M:%SZ"), deletionGracePeriodSeconds=grace)


async def pod_log(pod: dict[str, Any], node: dict[str, Any] | None, query: Any, error: Any) -> Any:
    """``GET pods/NAME/log`` as the API server serves it: proxied to the pod's node's kubelet
    (``https://<InternalIP>:<kubeletEndpoint.Port>/containerLogs/...``, certificate not
    verified, as an API server without ``--kubelet-certificate-authority``). Returns an async
    generator streaming the body; ``error(code, reason, message)`` builds failures."""
    import aiohttp

    md, spec = pod["metadata"], pod.get("spec") or {}
    containers = [c["name"] for c in [*(spec.get("initContainers") or []), *(spec.get("containers") or [])]]
    container = query.get("container") or (containers[0] if len(containers) == 1 else "")
    if not container:
        raise error(400, "BadRequest", f"a container name must be specified for pod {md['name']}, choose one of: "
                                       f"[{' '.join(containers)}]")
    if not spec.get("nodeName") or node is None:
        raise error(400, "BadRequest", f'pod "{md["name"]}" has no node, or its node is gone: no logs')
    port = (((node.get("status") or {}).get("daemonEndpoints") or {}).get("kubeletEndpoint") or {}).get("Port")
    address = next((a["address"] for a in (node.get("status") or {}).get("addresses") or []
                    if a.get("type") == "InternalIP"), None)
    if not port or not address:
        raise error(400, "BadRequest", f'node "{spec["nodeName"]}" serves no kubelet endpoint')
    params = {k: query[k] for k in ("follow", "previous", "tailLines", "limitBytes", "timestamps") if k in query}
    session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None, sock_connect=5))
    try:
        response = await session.get(f"https://{address}:{port}/containerLogs/{md['namespace']}/{md['name']}/"
                                     f"{container}", params=params, ssl=False)
    except aiohttp.ClientError as exc:
        await session.close()
        raise error(503, "ServiceUnavailable", f"the kubelet of node {spec['nodeName']} did not answer: {exc}") from None
    if response.status != 200:
        text = await response.text()
        response.release()
        await session.close()
        raise error(response.status, "BadRequest", text)

    async def body() -> Any:
        try:
            yield b""
            async for chunk in response.content.iter_any():
                yield chunk
        finally:
            response.release()
            await session.close()

    # A bare stream (application/octet-stream): a kmock.Response with headers would stick them
    # onto the shared GET reaction, and every later GET would claim text/plain.
    return body()
