"""The agent's side of the hub credential: read it from Vault with the site's own identity and
swap it into the hub API client before it expires (the hub side is ``hub/hub_credential.py``).

:class:`HubCredential` keeps the current token; :meth:`HubCredential.connect` builds the hub API
client from it; :meth:`HubCredential.keep_fresh` re-reads the path when a third of the token's
life is left and, when the hub has stored a newer token, replaces the bearer token of that
client in place (kubernetes_asyncio reads ``configuration.api_key`` on every request). kopf's
own connection uses :meth:`login` as its login handler: on a 401 kopf calls it again and gets
the current token.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import logging
import tempfile
from dataclasses import dataclass, field
from typing import Any

from kubernetes_asyncio import client as k8s

from ..integrations.kube import Kube, RetryPolicy
from ..integrations.vault import VaultClient, VaultError

log = logging.getLogger(__name__)

KEY = "hub-credential"


@dataclass
class HubCredential:
    vault: VaultClient
    site: str
    prefix: str = ""
    margin: float = 1 / 3                  # swap when this fraction of the token's life is left
    token: str = field(default="", repr=False)
    expires: dt.datetime | None = None
    server: str = ""
    ca_data: str = ""
    _configs: list[k8s.Configuration] = field(default_factory=list, repr=False)
    _issued: dt.datetime | None = None

    @property
    def path(self) -> str:
        return f"{self.prefix or f'sites/{self.site}'}/{KEY}"

    def refresh(self, *, fresh: bool = True) -> bool:
        """Read the stored credential; True if it is a new token (then swapped everywhere)."""
        data = self.vault.read(self.path, fresh=fresh)
        token = str(data.get("token") or "")
        if not token:
            raise VaultError("the hub credential in Vault has no token yet: is the site enrolled and "
                             "CredentialsReady on the hub?", path=self.path)
        expires = dt.datetime.fromisoformat(str(data["expirationTimestamp"]).replace("Z", "+00:00"))
        changed = token != self.token
        if changed:
            self.token, self._issued = token, dt.datetime.now(dt.UTC)
            for cfg in self._configs:
                cfg.api_key["BearerToken"] = token
            log.info("Hub credential %s (expires %s)", "swapped" if self.expires else "loaded",
                     data["expirationTimestamp"])
        self.expires = expires
        self.server = str(data.get("server") or self.server)
        self.ca_data = str(data.get("certificate-authority-data") or self.ca_data)
        return changed

    def _configuration(self, server: str = "") -> k8s.Configuration:
        cfg = k8s.Configuration(host=(server or self.server).rstrip("/"))
        # kubernetes_asyncio sends api_key["BearerToken"] with this prefix on every request.
        cfg.api_key = {"BearerToken": self.token}
        cfg.api_key_prefix = {"BearerToken": "Bearer"}
        if self.ca_data:
            ca = tempfile.NamedTemporaryFile("wb", prefix="hub-ca-", suffix=".pem", delete=False)
            ca.write(base64.b64decode(self.ca_data))
            ca.close()
            cfg.ssl_ca_cert = ca.name
        self._configs.append(cfg)
        return cfg

    def connect(self, *, server: str = "", policy: RetryPolicy | None = None) -> Kube:
        """A hub API client that always uses the current token."""
        if not self.token:
            self.refresh()
        return Kube(k8s.ApiClient(self._configuration(server)), policy)

    def login(self, **_: Any) -> Any:
        """kopf login handler: the current token (kopf calls it again after a 401)."""
        import kopf

        if not self.token:
            self.refresh()
        return kopf.ConnectionInfo(server=self.server, token=self.token,
                                   ca_data=base64.b64decode(self.ca_data) if self.ca_data else None)

    def next_check_in(self, now: dt.datetime | None = None) -> float:
        """Seconds until the token has ``margin`` of its life left (at least 1 s)."""
        if self.expires is None:
            return 1.0
        now = now or dt.datetime.now(dt.UTC)
        issued = self._issued or now
        life = max(1.0, (self.expires - issued).total_seconds())
        return max(1.0, (self.expires - now).total_seconds() - life * self.margin)

    async def keep_fresh(self, stop: asyncio.Event, *, retry: float = 5.0) -> None:
        """Until ``stop``: re-read the credential when it is due and swap it in. Vault failures are
        retried every ``retry`` seconds (doubling, capped at a minute) while the old token lives."""
        delay = retry
        while not stop.is_set():
            wait = self.next_check_in()
            try:
                await asyncio.wait_for(stop.wait(), timeout=wait)
                return
            except TimeoutError:
                pass
            try:
                if await asyncio.to_thread(self.refresh) or self.next_check_in() > 1.0:
                    delay = retry
                    continue
                # Due, but the hub has not stored a newer token yet: ask again with backoff.
                log.info("The hub has not rotated the credential yet; checking again in %.0fs", delay)
                try:
                    await asyncio.wait_for(stop.wait(), timeout=delay)
                    return
                except TimeoutError:
                    delay = min(60.0, delay * 2)
            except VaultError as err:
                log.warning("Could not refresh the hub credential (%s); retrying in %.0fs", err.reason, delay)
                try:
                    await asyncio.wait_for(stop.wait(), timeout=delay)
                    return
                except TimeoutError:
                    delay = min(60.0, delay * 2)
