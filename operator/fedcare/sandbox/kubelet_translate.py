"""The ONE place where the sandbox translates a pod's manifest for a machine without containers.

The hub and the site agent write the same manifests for the sandbox as for a real cluster.
A process has no network namespace, no cluster DNS and no mount namespace, so the process
kubelet rewrites exactly these things, in the container's ``command``, ``args``, ``env``
values and ``workingDir`` (nothing else: files in volumes are not rewritten), at each
container start:

1. **Bind addresses.** Every pod gets its own loopback IP (``127.N.x.y``; ``N`` is unique
   per kubelet, see :class:`PodNetwork`), reported as ``status.podIP``. ``0.0.0.0:PORT`` and
   ``[::]:PORT`` become ``<podIP>:PORT``, so two pods can listen on the same port. Anything
   on this machine reaches a pod at its podIP (all of 127/8 is loopback).
2. **Service DNS names.** ``<svc>.<ns>.svc.cluster.local`` and ``<svc>.<ns>.svc`` (with an
   optional ``:PORT``) become the podIP of a Running pod selected by that Service (the
   oldest Ready one), and a Service ``port`` becomes its ``targetPort`` (a named target port
   is looked up in that pod's container ports). Until such a pod exists the container
   waits (``ContainerCreating``, the message names the Service). The name is resolved once
   per container start: if the backing pod is replaced, a restart picks the new IP.
3. **Mount paths.** A volume mounted at ``/data`` is a local folder; ``/data`` (and
   ``/data/…``) in the strings above becomes that folder (the longest mount path wins).

Kubernetes' ``$(VAR)`` references are expanded first (:func:`expand`), as a kubelet does.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["PodNetwork", "ServiceTarget", "Translator", "expand", "service_names"]

_BIND_RE = re.compile(r"(?<![\w.:])(?:0\.0\.0\.0|\[::\]):(\d{1,5})\b")
_LABEL = r"[a-z0-9](?:[-a-z0-9]{0,61}[a-z0-9])?"
_SVC_RE = re.compile(rf"(?<![\w.-])({_LABEL})\.({_LABEL})\.svc(?:\.cluster\.local)?(?![\w-]|\.[\w-])(?::(\d{{1,5}}))?")


def expand(text: str, env: Mapping[str, str]) -> str:
    """Kubernetes ``$(VAR)`` expansion: defined names are replaced, ``$$`` is a literal ``$``,
    an undefined ``$(NAME)`` stays as written (k8s.io/kubernetes third_party expansion)."""
    out, i, n = [], 0, len(text)
    while i < n:
        ch = text[i]
        if ch != "$" or i + 1 >= n:
            out.append(ch)
            i += 1
            continue
        nxt = text[i + 1]
        if nxt == "$":
            out.append("$")
            i += 2
        elif nxt == "(":
            end = text.find(")", i + 2)
            if end == -1:
                out.append(text[i:])
                break
            name = text[i + 2:end]
            out.append(env[name] if name in env else text[i:end + 1])
            i = end + 1
        else:
            out.append(ch)
            i += 1
    return "".join(out)


def service_names(strings: Iterable[str]) -> set[tuple[str, str]]:
    """The (namespace, service) pairs named in ``strings``."""
    return {(m.group(2), m.group(1)) for s in strings for m in _SVC_RE.finditer(s)}


@dataclass(frozen=True)
class ServiceTarget:
    """A Service resolved to one pod: its IP and ``service port → target port``."""

    ip: str
    ports: Mapping[int, int] = field(default_factory=dict)


def resolve_target(service: dict[str, Any], pods: list[dict[str, Any]]) -> ServiceTarget | None:
    """Pick the pod (Running with an IP; Ready first, then oldest, then by name) and map ports."""
    def ready(pod: dict[str, Any]) -> bool:
        return any(c.get("type") == "Ready" and c.get("status") == "True"
                   for c in (pod.get("status") or {}).get("conditions") or [])

    live = [p for p in pods if (p.get("status") or {}).get("phase") == "Running"
            and (p.get("status") or {}).get("podIP") and not p["metadata"].get("deletionTimestamp")]
    if not live:
        return None
    live.sort(key=lambda p: (not ready(p), p["metadata"].get("creationTimestamp", ""), p["metadata"]["name"]))
    pod = live[0]
    named = {port["name"]: port["containerPort"] for c in (pod.get("spec") or {}).get("containers") or []
             for port in c.get("ports") or [] if port.get("name")}
    ports: dict[int, int] = {}
    for sp in (service.get("spec") or {}).get("ports") or []:
        target = sp.get("targetPort", sp.get("port"))
        if isinstance(target, str) and not target.isdigit():
            if target not in named:
                continue
            target = named[target]
        ports[int(sp["port"])] = int(target)
    return ServiceTarget(pod["status"]["podIP"], ports)


@dataclass
class Translator:
    """Rewrites one container's strings (see the module docstring for what and why)."""

    pod_ip: str
    services: Mapping[tuple[str, str], ServiceTarget] = field(default_factory=dict)
    mounts: Mapping[str, str] = field(default_factory=dict)   # mountPath → local folder

    def __post_init__(self) -> None:
        paths = sorted((p.rstrip("/") or "/" for p in self.mounts), key=len, reverse=True)
        local = {p.rstrip("/") or "/": v for p, v in self.mounts.items()}
        self._mounts = [(p, local[p]) for p in paths if p != "/"]
        self._mount_re = (re.compile("(?<![\\w.~/-])(" + "|".join(re.escape(p) for p, _ in self._mounts)
                                     + r")(?=/|$|[^\w.-])") if self._mounts else None)
        self._local = dict(self._mounts)

    def __call__(self, text: str) -> str:
        text = _BIND_RE.sub(lambda m: f"{self.pod_ip}:{m.group(1)}", text)
        text = _SVC_RE.sub(self._service, text)
        if self._mount_re is not None:
            text = self._mount_re.sub(lambda m: self._local[m.group(1)], text)
        return text

    def _service(self, m: re.Match[str]) -> str:
        target = self.services.get((m.group(2), m.group(1)))
        if target is None:
            return m.group(0)
        if m.group(3) is None:
            return target.ip
        port = int(m.group(3))
        return f"{target.ip}:{target.ports.get(port, port)}"


class PodNetwork:
    """Loopback pod IPs from one /16 (``127.N.0.0/16``), unique per kubelet.

    ``N`` is claimed through the API (a Lease per network, see ``kubelet_node.py``) so two
    kubelets on one machine never share it. Addresses are handed out in order, skipping
    ``.0`` and ``.255``; an address is reused only after all 64k have been used once.
    """

    def __init__(self, octet: int):
        if not 2 <= octet <= 254:
            raise ValueError(f"the pod network octet must be in 2..254, not {octet}")
        self.octet = octet
        self.cidr = f"127.{octet}.0.0/16"
        self._next = 0
        self._used: set[str] = set()

    def owns(self, ip: str) -> bool:
        try:
            return ipaddress.ip_address(ip) in ipaddress.ip_network(self.cidr)
        except ValueError:
            return False

    def claim(self, ip: str) -> None:
        """Mark an address taken (a pod that already had it, e.g. before a kubelet restart)."""
        self._used.add(ip)

    def release(self, ip: str) -> None:
        self._used.discard(ip)

    def allocate(self) -> str:
        for _ in range(65536):
            self._next = (self._next + 1) % 65536
            hi, lo = divmod(self._next, 256)
            ip = f"127.{self.octet}.{hi}.{lo}"
            if lo in (0, 255) or ip in self._used:
                continue
            self._used.add(ip)
            return ip
        raise RuntimeError(f"the pod network {self.cidr} is full")
