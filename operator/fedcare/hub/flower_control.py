"""Calls to a SuperLink's Control API from the hub's process: registering SuperNode keys,
listing runs.

``flwr supernode register`` costs a Python start-up of the flwr CLI (~2.5 s of CPU, more on a
loaded machine) per key: 18 sites took ~50 s of a round's start before any assignment went out
(measured with ``benchmarks/round_pods.py``). The CLI itself sends one ``RegisterNode`` request
through ``flwr.supercore.control.ControlHttpClient`` (protobuf over HTTPS); the hub sends the
same request with the same client (~60 ms), so the wire format stays Flower's own. That client
is internal to Flower (shared/FLOWER.md §3); a Flower upgrade that changes these calls fails
``tests/integration/test_flower_control.py``. ``ListRuns`` replaces ``flwr ls`` the same way
(the hub follows a run's end with it). Submitting (``flwr run``: it packages the app) and
stopping stay with the CLI.

Each request has a timeout; connection errors, timeouts and 5xx answers are retried a bounded
number of times with jittered backoff; a key the SuperLink already has (HTTP 412, Flower API
error 23) is success (a restarted hub registers again).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import json
import logging
import random
import ssl
import threading
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

#: flwr's ApiErrorCode.PUBLIC_KEY_ALREADY_IN_USE.
ALREADY_IN_USE = 23
#: flwr's ApiErrorCode.PUBLIC_KEY_NOT_VALID and RUN_ID_NOT_FOUND.
KEY_NOT_VALID, RUN_NOT_FOUND = 22, 16


class ControlError(Exception):
    """The SuperLink refused or did not answer (after the retries). ``status``: the HTTP status
    of a refusal (0 when there was no answer); ``code``: Flower's API error code, when its answer
    carried one. ``refused``: the key itself is refused, which no retry changes (Flower's
    PUBLIC_KEY_NOT_VALID, or the hub's own check of it). Any other 4xx (a 401/403 of a proxy, a
    404 of a wrong route, a 429) is not about the key: the round says so and tries again."""

    def __init__(self, message: str, status: int = 0, *, refused: bool | None = None, code: int | None = None):
        super().__init__(message)
        self.status, self.code = status, code
        self.refused = code == KEY_NOT_VALID if refused is None else refused


#: Control API calls run in their own threads (Flower's client is synchronous): the default
#: executor is shared with Vault reads and may be busy; a call's timeout must not be spent
#: waiting for a thread. More than the scheduler's registration concurrency (6) plus a listing.
_POOL = concurrent.futures.ThreadPoolExecutor(max_workers=8, thread_name_prefix="flower-control")


def public_key_pem(openssh: str) -> bytes:
    """An OpenSSH EC public key (what a site's agent publishes in Vault) as the PEM
    SubjectPublicKeyInfo bytes ``RegisterNodeRequest`` carries (what the CLI sends)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    try:
        key = serialization.load_ssh_public_key(openssh.strip().encode())
    except (ValueError, TypeError) as err:
        raise ControlError(f"not an OpenSSH public key ({err})", refused=True) from None
    if not isinstance(key, ec.EllipticCurvePublicKey):
        # the SuperLink's own check (flwr's uses_nist_ec_curve; OpenSSH EC keys are all NIST curves):
        # refused here, without a call
        raise ControlError(f"not an EC public key (got {type(key).__name__}); SuperNode keys are NIST P-curve keys",
                           refused=True)
    return key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def preload() -> None:
    """Import Flower's Control API client (~1 s: it pulls much of flwr) ahead of a round's
    first call; a hub with TLS rounds calls it at start, in a worker thread."""
    try:
        import flwr.proto.control_pb2  # noqa: F401  pylint: disable=no-name-in-module,unused-import
        import flwr.supercore.control.control_http_client  # noqa: F401  pylint: disable=unused-import
    except Exception as err:        # ImportError or a broken install: the first call says it again
        log.warning("Flower's Control API client cannot be imported (%s); TLS rounds will fail to "
                    "register SuperNode keys", err)


@dataclass(frozen=True)
class ControlPolicy:
    timeout: float = 15.0          # one request, connect to answer
    attempts: int = 3
    base_delay: float = 0.5
    max_delay: float = 4.0


def _client(address: str, ca_pem: str | None, timeout: float):
    from flwr.supercore.control.control_http_client import ControlHttpClient

    if ca_pem is None:          # plaintext: the hub's explicit development flag only
        return ControlHttpClient(f"http://{address}", timeout=timeout)
    return ControlHttpClient(f"https://{address}", verify=ssl.create_default_context(cadata=ca_pem),
                             timeout=timeout)


class _Clients:
    """One client per (SuperLink, CA, timeout), kept for a burst of registrations: its connection
    pool (httpx, thread-safe) saves a TLS handshake and a CA load per call — a round's 18
    registrations went from ~0.6 s to ~0.3 s. :meth:`release` closes them after the burst: an
    idle pooled connection is not closed by httpx until its next use, and a SuperLink being
    deleted waits for open connections until its grace period ends (30 s per round, measured)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._clients: dict[tuple[str, str | None, float], Any] = {}

    def get(self, address: str, ca_pem: str | None, timeout: float):
        with self._lock:
            key = (address, ca_pem, timeout)
            if key not in self._clients:
                self._clients[key] = _client(address, ca_pem, timeout)
            return self._clients[key]

    def drop(self, address: str, ca_pem: str | None, timeout: float) -> None:
        """Forget a client whose call failed at the transport (a SuperLink restarted, say); not
        closed: another thread may be sending with it (its sockets close when it is collected)."""
        with self._lock:
            self._clients.pop((address, ca_pem, timeout), None)

    def release(self, address: str) -> None:
        with self._lock:
            clients = [self._clients.pop(key) for key in [k for k in self._clients if k[0] == address]]
        for client in clients:
            client.close()


_CLIENTS = _Clients()
#: Close a SuperLink's kept clients once its registrations are done (see :class:`_Clients`).
release = _CLIENTS.release


def _once(address: str, ca_pem: str | None, timeout: float, method: str, request_of, pooled: bool = False):
    import httpx

    if not pooled:      # one call, one connection, closed after it (a run listing every 10 s)
        client = _client(address, ca_pem, timeout)
        try:
            return getattr(client, method)(request_of())
        finally:
            client.close()
    client = _CLIENTS.get(address, ca_pem, timeout)
    try:
        return getattr(client, method)(request_of())
    except httpx.TransportError:
        _CLIENTS.drop(address, ca_pem, timeout)
        raise


def _error_code(response) -> tuple[int | None, str]:
    try:
        doc = json.loads(response.text)
    except ValueError:
        return None, response.text[:300]
    if not isinstance(doc, dict):       # e.g. a proxy in front of the SuperLink
        return None, response.text[:300]
    return doc.get("code"), str(doc.get("detail") or "")[:300]


async def _call(address: str, ca_pem: str | None, method: str, request_of, policy: ControlPolicy,
                accept: tuple[int, ...] = (), pooled: bool = False):
    """One Control API call in a worker thread (Flower's client is synchronous), retried on
    connection errors, timeouts and 5xx. Returns the response, or None for an error whose
    Flower API code is in ``accept``."""
    import httpx

    last = ""
    loop = asyncio.get_running_loop()
    for attempt in range(policy.attempts):
        try:
            async with asyncio.timeout(policy.timeout + 5):   # the thread's own timeout bounds it too
                return await loop.run_in_executor(
                    _POOL, functools.partial(_once, address, ca_pem, policy.timeout, method, request_of, pooled))
        except httpx.HTTPStatusError as err:
            code, detail = _error_code(err.response)
            if code in accept:
                return None
            status = err.response.status_code
            if status < 500:                # a refusal no retry changes
                raise ControlError(f"the SuperLink at {address} refused {method}: HTTP {status}: "
                                   f"{detail or 'no detail'}", status, code=code) from None
            last = f"HTTP {status}: {detail or 'no detail'}"
        except (httpx.TransportError, TimeoutError) as err:
            last = f"{type(err).__name__}: {str(err) or 'no answer within the timeout'}"
        except (ValueError, ssl.SSLError) as err:   # an unreadable CA or answer: no retry helps
            raise ControlError(f"{method} at {address}: {type(err).__name__}: {err}") from None
        except ImportError as err:      # the hub's image lacks flwr: no retry changes that
            raise ControlError(f"Flower's Control API client cannot be imported ({err}); the hub "
                               "image needs flwr") from None
        if attempt + 1 < policy.attempts:
            delay = min(policy.max_delay, policy.base_delay * 2 ** attempt) * random.uniform(0.5, 1.0)
            log.debug("%s at %s failed (%s); retrying in %.1fs", method, address, last, delay)
            await asyncio.sleep(delay)
    raise ControlError(f"the SuperLink at {address} did not answer {method}: {last}")


async def register(address: str, ca_pem: str, openssh_key: str, name: str,
                   policy: ControlPolicy = ControlPolicy()) -> str:
    """Register ``openssh_key`` for SuperNode ``name``; the node id, or '' when the SuperLink
    already has this key. Raises ControlError with what the SuperLink said."""
    pem = public_key_pem(openssh_key)

    def request():
        from flwr.proto.control_pb2 import RegisterNodeRequest  # pylint: disable=no-name-in-module
        return RegisterNodeRequest(public_key=pem, name=name)

    response = await _call(address, ca_pem, "RegisterNode", request, policy, accept=(ALREADY_IN_USE,), pooled=True)
    return "" if response is None else str(response.node_id or "")


async def list_runs(address: str, ca_pem: str | None, run_id: str = "",
                    policy: ControlPolicy = ControlPolicy()) -> list[tuple[str, str, str]]:
    """``ListRuns`` (all, or one ``run_id``): [(run id, status, details)], the status as
    ``flwr ls`` prints it (``finished:completed`` …). ``ca_pem`` None: plaintext (development)."""
    def request():
        from flwr.proto.control_pb2 import ListRunsRequest  # pylint: disable=no-name-in-module
        return ListRunsRequest(run_id=int(run_id)) if run_id else ListRunsRequest()

    try:
        response = await _call(address, ca_pem, "ListRuns", request, policy)
    except ControlError as err:
        if run_id and err.status == 404 and err.code == RUN_NOT_FOUND:   # an answer, not a failure
            return []           # (a 404 without Flower's code is a wrong route or a proxy: not "run lost")
        raise
    runs = []
    for run in response.run_dict.values():
        st = run.status
        runs.append((str(run.run_id), f"{st.status}:{st.sub_status}" if st.sub_status else st.status,
                     st.details or ""))
    return runs
