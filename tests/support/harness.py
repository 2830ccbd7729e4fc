"""Run the real kopf operator in-process against the emulator, and wait for things.

``run_operator(k, registry)`` runs kopf (standalone; cluster-wide unless ``namespaces`` is
given) with a ``kopf.on.login`` handler pointing at ``k.url``, waits for kopf's ready flag
(and, with ``watching=``, for its watch streams to be open), yields a :class:`LogCollector`,
and stops kopf with its stop flag on exit. It can be entered again with the same registry
and emulator: a restart (new kopf memories, same cluster state). kopf runs through
``fedcare.kopf_runner.run_kopf``: ``kopf.operator()``'s exit would stall 5 s and
then cancel every other task of the loop (the emulator's handlers, other operators).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

import kopf

from fedcare.sandbox.emulator import RealisticEmulator, as_resource
from fedcare.kopf_runner import run_kopf
from fedcare.sandbox.kubeconfig import write_kubeconfig

__all__ = ["LogCollector", "Record", "eventually", "fast_settings", "run_operator", "write_kubeconfig"]

#: The URL each registry's login handler answers with (one handler per registry, reused).
_LOGIN_URLS: weakref.WeakKeyDictionary[kopf.OperatorRegistry, list[kopf.ConnectionInfo]] = weakref.WeakKeyDictionary()


@dataclass(frozen=True)
class Record:
    level: str
    logger: str
    message: str  # prefixed with "[namespace/name] " for kopf's per-object loggers
    created: float


class LogCollector(logging.Handler):
    """Every log record emitted while the operator runs (all loggers, DEBUG and up)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[Record] = []

    def emit(self, record: logging.LogRecord) -> None:
        try:
            ref = getattr(record, "k8s_ref", None) or {}
            prefix = f"[{ref.get('namespace')}/{ref.get('name')}] " if ref else ""
            self.records.append(Record(record.levelname, record.name, prefix + record.getMessage(), record.created))
        except Exception:  # a logging handler must never raise into the code that logs
            self.handleError(record)

    def grep(self, text: str, *, level: str | None = None, logger: str | None = None) -> list[Record]:
        """Records containing ``text``; ``level`` exact (``"ERROR"``), ``logger`` a prefix."""
        return [r for r in self.records if text in r.message
                and (level is None or r.level == level)
                and (logger is None or r.logger.startswith(logger))]

    def problems(self) -> list[Record]:
        """WARNING and worse: assert ``not logs.problems()`` for a clean run."""
        return [r for r in self.records if r.level in ("WARNING", "ERROR", "CRITICAL")]


async def eventually(check: Callable[[], Any] | Callable[[], Awaitable[Any]], timeout: float = 10.0,
                     interval: float = 0.05, message: str = "") -> Any:
    """Poll ``check`` (sync or async) until it returns something truthy; return that.

    An AssertionError raised by ``check`` counts as "not yet"; the last one is re-raised
    at the deadline, so ``eventually(lambda: ...)`` with asserts inside reports why.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    last_error: AssertionError | None = None
    while True:
        try:
            result = check()
            if inspect.isawaitable(result):
                result = await result
            if result:
                return result
            last_error = None
        except AssertionError as e:
            last_error = e
        if loop.time() >= deadline:
            if last_error is not None:
                raise last_error
            raise AssertionError(f"not true within {timeout}s: {message or check}")
        await asyncio.sleep(interval)


def _connection(k: Any) -> kopf.ConnectionInfo:
    """``k``: an emulator, or a tier (tests/support/cluster.py) that knows its credentials."""
    if hasattr(k, "connection_info"):
        return k.connection_info()
    return kopf.ConnectionInfo(server=k.url, insecure=True, default_namespace="default")


def _ensure_login(registry: kopf.OperatorRegistry, info: kopf.ConnectionInfo) -> None:
    if registry in _LOGIN_URLS:
        _LOGIN_URLS[registry][0] = info  # a later run may be against another API server
        return
    holder = [info]
    _LOGIN_URLS[registry] = holder

    @kopf.on.login(registry=registry, id="fedcare-test-emulator-login")
    def _login(**_: Any) -> kopf.ConnectionInfo:
        return holder[0]


def fast_settings(settings: kopf.OperatorSettings) -> None:
    """Short API retries and watch-error delays, so a failure-path test takes < 1 s.

    Applied before ``settings_hook``; a hook that sets production values (e.g. our
    ``fedcare.kopf_setup.configure``) should call this again after them.
    """
    settings.networking.error_backoffs = [0.1, 0.2, 0.5]
    settings.queueing.error_delays = [0.1, 0.2, 0.5]
    settings.watching.reconnect_backoff = 0.1
    settings.process.ultimate_exiting_timeout = None  # never SIGKILL the test process


@contextlib.asynccontextmanager
async def run_operator(k: RealisticEmulator | Any, registry: kopf.OperatorRegistry, *,
                       settings_hook: Callable[[kopf.OperatorSettings], None] | None = None,
                       namespaces: Iterable[str] | None = None, watching: Iterable[Any] = (),
                       ready_timeout: float = 10.0, stop_timeout: float = 10.0) -> AsyncIterator[LogCollector]:
    """Run kopf until the block exits. ``watching``: resources (fedcare ``Resource`` or
    ``'group/version/plural'``) whose watch streams must be open before the block starts.
    """
    _ensure_login(registry, _connection(k))
    settings = kopf.OperatorSettings()
    fast_settings(settings)
    if settings_hook is not None:
        settings_hook(settings)
    scope: dict[str, Any] = {"namespaces": list(namespaces)} if namespaces else {"clusterwide": True}
    logs = LogCollector()
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(logs)
    root.setLevel(logging.DEBUG)
    stop, ready = asyncio.Event(), asyncio.Event()
    # Not kopf.operator(): on exit it would cancel every task of this loop (see kopf_runner).
    task = asyncio.create_task(run_kopf(registry=registry, settings=settings, standalone=True,
                                        stop_flag=stop, ready_flag=ready, **scope))
    try:
        ready_wait = asyncio.create_task(ready.wait())
        await asyncio.wait({task, ready_wait}, timeout=ready_timeout, return_when=asyncio.FIRST_COMPLETED)
        ready_wait.cancel()
        if task.done():  # crashed during start-up: show why
            task.result()
            raise RuntimeError("kopf exited during start-up")
        if not ready.is_set():
            raise TimeoutError(f"kopf was not ready within {ready_timeout}s: {logs.problems()[-5:]}")
        resources = [as_resource(r) for r in watching]
        await eventually(lambda: all(k.watching(r) for r in resources), timeout=ready_timeout,
                         message=f"kopf watches {resources}")
        yield logs
    finally:
        stop.set()
        stuck = False
        try:
            await asyncio.wait_for(task, timeout=stop_timeout)  # cancels kopf on timeout
        except TimeoutError:
            stuck = True
        finally:
            root.removeHandler(logs)
            root.setLevel(old_level)
    if stuck:  # reached only when the block itself succeeded: do not hide its error
        raise RuntimeError(f"kopf did not stop within {stop_timeout}s of its stop flag; cancelled")
