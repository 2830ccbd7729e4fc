"""A kubeconfig for the sandbox API: kubectl, kubernetes_asyncio, kopf and our agents read it."""

from __future__ import annotations

import os
import pathlib
import tempfile

import yaml

CONTEXT = "fedcare-sandbox"


def kubeconfig_dict(url: str, *, namespace: str = "default", context: str = CONTEXT) -> dict[str, object]:
    """Plain HTTP server, no TLS to verify, a dummy token (the emulator does no auth)."""
    return {
        "apiVersion": "v1", "kind": "Config", "preferences": {}, "current-context": context,
        "clusters": [{"name": context, "cluster": {"server": url.rstrip("/"), "insecure-skip-tls-verify": True}}],
        "users": [{"name": context, "user": {"token": "sandbox"}}],
        "contexts": [{"name": context, "context": {"cluster": context, "user": context, "namespace": namespace}}],
    }


def write_kubeconfig(url: str, path: str | os.PathLike[str] | None = None, *,
                     namespace: str = "default", context: str = CONTEXT) -> pathlib.Path:
    """Write it to ``path`` (a new temporary file if None) and return the path.

    Written atomically (temp file + rename): a client polling for the file never reads half.
    """
    if path is None:
        fd, name = tempfile.mkstemp(prefix="kubeconfig-", suffix=".yaml")
        os.close(fd)
        path = name
    target = pathlib.Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp")
    tmp.write_text(yaml.safe_dump(kubeconfig_dict(url, namespace=namespace, context=context)))
    tmp.chmod(0o600)
    tmp.replace(target)
    return target
