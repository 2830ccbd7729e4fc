"""Submit, follow and stop Flower runs on a round's SuperLink.

Submitting (``flwr run``: it packages the app into a FAB) and stopping (``flwr stop``) use
the flwr CLI with ``--format json``, Flower's supported client. Each call runs as a
subprocess with a timeout and a bounded retry with backoff; ``flwr run`` is never retried
blindly (a retry could submit a second run): the caller lists the SuperLink's runs first and
adopts the one it finds. Listing runs (what ``flwr ls`` asks) and registering SuperNode keys
are single Control API requests sent from the hub's process through Flower's own client
(``hub/flower_control.py``): a CLI start costs ~2.5 s of CPU each, which made the hub's
end-of-run check and an 18-site registration the slowest steps of a round's start and end.

Each SuperLink gets its own ``FLWR_HOME`` (a config.toml naming it), so calls for
different rounds never share state. Under TLS (the default; plaintext only behind the hub's
explicit development flag) the config names the round's CA (``trust``) as
``root-certificates``; the Control API calls verify against the same file.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import pathlib
import random
import shutil
import sys
from dataclasses import dataclass
from typing import Any

from . import flower_control as control

log = logging.getLogger(__name__)

FEDERATION = "round"
FINISHED = "finished:"
CA_FILE = "superlink-ca.pem"


class FlowerError(Exception):
    """A flwr call failed (after its retries) or answered something we cannot use."""


class RunUnknown(FlowerError):
    """The SuperLink answers but does not know the run (its state was lost)."""


class KeyRefused(FlowerError):
    """A SuperNode public key the SuperLink refuses (a 4xx, or not a key it accepts): no retry
    changes that; the site's published key has to be fixed."""


@dataclass(frozen=True)
class RunInfo:
    run_id: str
    status: str            # pending | starting | running | finished:completed|failed|stopped
    details: str = ""

    @property
    def finished(self) -> bool:
        return self.status.startswith(FINISHED)


@dataclass
class FlowerCLI:
    """The flwr CLI for one hub. ``home``: where per-SuperLink FLWR_HOME folders live."""

    home: pathlib.Path
    flwr: str = ""
    timeout: float = 60.0
    attempts: int = 3
    base_delay: float = 1.0

    def __post_init__(self) -> None:
        self.home = pathlib.Path(self.home)
        if not self.flwr:
            beside = pathlib.Path(sys.executable).parent / "flwr"     # the hub's own virtualenv first
            self.flwr = str(beside) if beside.is_file() else (shutil.which("flwr") or "flwr")

    # -- configuration ---------------------------------------------------------------------
    def _config(self, key: str, address: str, *, insecure: bool, root_certificates: str = "") -> dict[str, str]:
        home = self.home / key
        home.mkdir(parents=True, exist_ok=True)
        lines = ["[superlink]", f'default = "{FEDERATION}"', "", f"[superlink.{FEDERATION}]", f'address = "{address}"']
        if insecure:
            lines.append("insecure = true")
        else:
            ca = pathlib.Path(root_certificates) if root_certificates else home / CA_FILE
            if not ca.is_file():
                raise FlowerError("no CA certificate for this SuperLink yet (the hub writes it from Vault "
                                  "before calling it)")
            lines.append(f'root-certificates = "{ca}"')
        (home / "config.toml").write_text("\n".join(lines) + "\n")
        return {**os.environ, "FLWR_HOME": str(home), "NO_COLOR": "1", "TERM": "dumb"}

    def trust(self, key: str, ca_pem: str) -> None:
        """The CA (public) that signed this SuperLink's certificate, for ``root-certificates``."""
        home = self.home / key
        home.mkdir(parents=True, exist_ok=True)
        path = home / CA_FILE
        if not path.is_file() or path.read_text() != ca_pem:
            path.write_text(ca_pem)

    async def _call(self, args: list[str], env: dict[str, str], *, retry: bool = True) -> dict[str, Any]:
        attempts = self.attempts if retry else 1
        last = ""
        for attempt in range(attempts):
            try:
                proc = await asyncio.create_subprocess_exec(
                    self.flwr, *args, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
                    stdin=asyncio.subprocess.DEVNULL)
            except OSError as err:
                raise FlowerError(f"cannot start the flwr CLI ({self.flwr}): {err}") from None
            try:
                async with asyncio.timeout(self.timeout):   # (wait_for can swallow a cancel on 3.11)
                    out, err = await proc.communicate()
            except asyncio.TimeoutError:
                proc.kill()
                await proc.wait()
                last = f"flwr {args[0]} did not answer within {self.timeout:.0f}s"
            except asyncio.CancelledError:     # the hub is stopping or the round going: leave no child
                proc.kill()
                raise
            else:
                doc = _last_json(out.decode(errors="replace"))
                if doc is not None and doc.get("success", True) is not False:
                    return doc
                last = (doc or {}).get("error-message") or (err.decode(errors="replace").strip()[-400:]
                                                            or f"flwr {args[0]} exited {proc.returncode}")
            if attempt + 1 < attempts:
                delay = self.base_delay * 2 ** attempt * random.uniform(0.5, 1.0)
                log.debug("flwr %s failed (%s); retrying in %.1fs", args[0], last, delay)
                await asyncio.sleep(delay)
        raise FlowerError(last)

    # -- verbs -----------------------------------------------------------------------------
    async def submit(self, key: str, address: str, app: str, config: dict[str, Any], *,
                     insecure: bool) -> str:
        """``flwr run APP --format json -c …``; returns the run id. Not retried (see module doc)."""
        env = self._config(key, address, insecure=insecure)
        overrides = " ".join(f"{k}={_toml(v)}" for k, v in config.items())
        doc = await self._call(["run", app, FEDERATION, "--format", "json", "--run-config", overrides], env,
                               retry=False)
        run_id = str(doc.get("run-id") or "")
        if not run_id:
            raise FlowerError(f"flwr run answered no run id: {str(doc)[:300]}")
        return run_id

    def _policy(self) -> control.ControlPolicy:
        return control.ControlPolicy(timeout=min(self.timeout, 15.0), attempts=self.attempts,
                                     base_delay=self.base_delay / 2)

    def _ca(self, key: str, insecure: bool) -> str | None:
        if insecure:
            return None
        ca = self.home / key / CA_FILE
        if not ca.is_file():
            raise FlowerError("no CA certificate for this SuperLink yet (the hub writes it from Vault "
                              "before calling it)")
        return ca.read_text()

    async def runs(self, key: str, address: str, *, insecure: bool) -> list[RunInfo]:
        """The SuperLink's runs (``ListRuns`` over the Control API, what ``flwr ls`` asks)."""
        try:
            found = await control.list_runs(address, self._ca(key, insecure), policy=self._policy())
        except control.ControlError as err:
            raise FlowerError(str(err)) from None
        return [RunInfo(*run) for run in found]

    async def run(self, key: str, address: str, run_id: str, *, insecure: bool) -> RunInfo:
        try:
            found = await control.list_runs(address, self._ca(key, insecure), run_id, policy=self._policy())
        except control.ControlError as err:
            raise FlowerError(str(err)) from None
        if not found:
            raise RunUnknown(f"the SuperLink does not know run {run_id} (its state was lost: a new or emptied "
                             "state volume)")
        return RunInfo(*found[0])

    async def stop(self, key: str, address: str, run_id: str, *, insecure: bool) -> None:
        env = self._config(key, address, insecure=insecure)
        await self._call(["stop", run_id, FEDERATION, "--format", "json"], env)

    async def register(self, key: str, address: str, name: str, public_key: str) -> str:
        """Register a site's public key (OpenSSH) with this SuperLink; the node id, or '' when
        it already has the key (a restarted hub registers again: idempotent). In the hub's
        process over the Control API (hub/flower_control.py), not a CLI start per key."""
        try:
            return await control.register(address, self._ca(key, False) or "", public_key, name, self._policy())
        except control.ControlError as err:
            raise (KeyRefused if err.refused else FlowerError)(
                f"registering the SuperNode key of {name}: {err}") from None

    def forget(self, key: str) -> None:
        shutil.rmtree(self.home / key, ignore_errors=True)


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    return json.dumps(str(value))      # a TOML basic string is a JSON string


def _last_json(text: str) -> dict[str, Any] | None:
    """flwr prints its JSON document last (warnings may come first)."""
    start = text.find("{")
    while start != -1:
        try:
            doc = json.loads(text[start:])
            return doc if isinstance(doc, dict) else None
        except ValueError:
            start = text.find("{", start + 1)
    return None
