"""Register SuperNode public keys with a SuperLink over its Control API, in the hub's process.

``flwr supernode register`` costs a Python start-up of the flwr CLI (~2.5 s of CPU, more on a
loaded machine) per key: 18 sites took ~50 s of a round's start before any assignment went out
(measured with ``benchmarks/round_pods.py``). The CLI itself sends one ``RegisterNode`` request
through ``flwr.supercore.control.ControlHttpClient`` (protobuf over HTTPS); the hub sends the
same request with the same client (~60 ms), so the wire format stays Flower's own. That client
is internal to Flower (shared/FLOWER.md §3): the rest of the hub keeps the CLI for ``run``,
``ls`` and ``stop``, whose JSON output is the supported contract; a Flower upgrade that changes
this call fails the registration test in ``tests/vault/test_flower_control.py``.

Each request has a timeout; connection errors, timeouts and 5xx answers are retried a bounded
number of times with jittered backoff; a key the SuperLink already has (HTTP 412, Flower API
error 23) is success (a restarted hub registers again).
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
from dataclasses import dataclass

log = logging.getLogger(__name__)

#: flwr's ApiErrorCode.PUBLIC_KEY_ALREADY_IN_USE.
ALREADY_IN_USE = 23


class ControlError(Exception):
    """The SuperLink refused or did not answer (after the retries)."""


def public_key_pem(openssh: str) -> bytes:
    """An OpenSSH EC public key (what a site's agent publishes in Vault) as the PEM
    SubjectPublicKeyInfo bytes ``RegisterNodeRequest`` carries (what the CLI sends)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    try:
        key = serialization.load_ssh_public_key(openssh.strip().encode())
    except (ValueError, TypeError) as err:
        raise ControlError(f"not an OpenSSH public key ({err})") from None
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise ControlError(f"not an EC public key (got {type(key).__name__}); SuperNode keys are NIST P-curve keys")
    return key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


@dataclass(frozen=True)
class ControlPolicy:
    timeout: float = 15.0          # one request, connect to answer
    attempts: int = 3
    base_delay: float = 0.5
    max_delay: float = 4.0


def _register_once(address: str, ca_pem: bytes, pem: bytes, name: str, timeout: float) -> str:
    import httpx
    from flwr.proto.control_pb2 import RegisterNodeRequest  # pylint: disable=no-name-in-module
    from flwr.supercore.control.control_http_client import ControlHttpClient

    client = ControlHttpClient.from_server_address(address, insecure=False, root_certificates=ca_pem,
                                                   interceptors=[])
    client._client.timeout = httpx.Timeout(timeout)     # the default is 30 s for every phase
    try:
        return str(client.RegisterNode(RegisterNodeRequest(public_key=pem, name=name)).node_id or "")
    finally:
        client._client.close()


def _error_code(response) -> tuple[int | None, str]:
    try:
        doc = json.loads(response.text)
    except ValueError:
        return None, response.text[:300]
    return doc.get("code"), str(doc.get("detail") or "")[:300]


async def register(address: str, ca_pem: str, openssh_key: str, name: str,
                   policy: ControlPolicy = ControlPolicy()) -> str:
    """Register ``openssh_key`` for SuperNode ``name``; the node id, or '' when the SuperLink
    already has this key. Raises ControlError with what the SuperLink said."""
    import httpx

    pem = public_key_pem(openssh_key)
    last = ""
    for attempt in range(policy.attempts):
        try:
            async with asyncio.timeout(policy.timeout + 5):   # the thread's own timeout bounds it too
                return await asyncio.to_thread(_register_once, address, ca_pem.encode(), pem, name, policy.timeout)
        except httpx.HTTPStatusError as err:
            code, detail = _error_code(err.response)
            if code == ALREADY_IN_USE:
                return ""
            last = f"HTTP {err.response.status_code}: {detail or 'no detail'}"
            if err.response.status_code < 500:
                break                       # a refusal no retry changes
        except (httpx.TransportError, TimeoutError) as err:
            last = f"{type(err).__name__}: {err or 'no answer'}"
        if attempt + 1 < policy.attempts:
            delay = min(policy.max_delay, policy.base_delay * 2 ** attempt) * random.uniform(0.5, 1.0)
            log.debug("RegisterNode at %s failed (%s); retrying in %.1fs", address, last, delay)
            await asyncio.sleep(delay)
    raise ControlError(f"the SuperLink at {address} did not register the key: {last}")
