"""The sandbox API server, standalone: ``python -m fedcare.sandbox.server --kubeconfig PATH``.

``serve()`` runs :func:`~.emulator.fedcare_emulator` until cancelled, writes a kubeconfig
pointing at it (context ``fedcare-sandbox``) and logs the URL. State lives in memory only.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import pathlib
import signal
from collections.abc import Callable, Coroutine
from typing import Any

from .emulator import RealisticEmulator, fedcare_emulator
from .kubeconfig import write_kubeconfig

log = logging.getLogger(__name__)


async def serve(host: str = "127.0.0.1", port: int = 0, *,
                kubeconfig_path: str | os.PathLike[str] = "sandbox.kubeconfig",
                on_ready: Callable[[RealisticEmulator], Any] | None = None,
                **emulator_kwargs: Any) -> None:
    """Serve until cancelled. ``port=0`` picks a free port (read it from the kubeconfig).

    ``on_ready(k)`` runs once the server listens and the kubeconfig is written. The
    kubeconfig is removed on exit: a stale one would point clients at a dead port.
    """
    path = pathlib.Path(kubeconfig_path)
    # A long-running sandbox: bound the request log and per-object histories (memory).
    emulator_kwargs.setdefault("max_history", 1000)
    async with fedcare_emulator(host=host, port=port or None, **emulator_kwargs) as k:
        write_kubeconfig(k.url, path)
        log.info("sandbox Kubernetes API at %s; kubeconfig: %s", k.url, path.resolve())
        try:
            if on_ready is not None:
                on_ready(k)
            await asyncio.Event().wait()  # until cancelled
        finally:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fedcare.sandbox.server", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0: any free port")
    parser.add_argument("--kubeconfig", default="sandbox.kubeconfig", help="where to write the kubeconfig")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)  # one line per request otherwise
    asyncio.run(_until_signalled(serve(args.host, args.port, kubeconfig_path=args.kubeconfig)))
    return 0


async def _until_signalled(coro: Coroutine[Any, Any, None]) -> None:
    """SIGINT/SIGTERM cancel ``coro`` (so its clean-up runs: the kubeconfig is removed)."""
    task = asyncio.ensure_future(coro)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, task.cancel)
    with contextlib.suppress(asyncio.CancelledError):
        await task


if __name__ == "__main__":
    raise SystemExit(main())
