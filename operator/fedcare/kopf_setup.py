"""What the hub and the site agent share about running kopf: settings and login.

Both processes import this module; the agent imports nothing from ``hub/``.

Login is explicit per process, because each talks to a different cluster:
- the hub logs in to the hub cluster: its ``--kubeconfig`` if given, else its pod's
  ServiceAccount, else ``KUBECONFIG``/``~/.kube/config``;
- the agent logs in to the *hub* with the kubeconfig it was given (its enrolled
  ServiceAccount on the hub), never with its pod's own ServiceAccount: that one belongs to
  the site cluster, which serves no fedcare API (a separate cluster answers 404, a shared
  one 403).
A registry of our own gets none of kopf's default login handlers (those are registered on
kopf's global registry only), so production registries add these; tests and the sandbox add
their own instead, so they can never reach a developer's real cluster.
"""

from __future__ import annotations

from typing import Any

import kopf

from .api.resources import ANNOTATION_PREFIX, FINALIZER


def configure(settings: kopf.OperatorSettings) -> None:
    """Our own names for kopf's state, and bounded retries (hub and agent alike)."""
    settings.persistence.finalizer = FINALIZER
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=ANNOTATION_PREFIX)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=ANNOTATION_PREFIX, key="last-handled-configuration")
    settings.posting.level = 30                 # post WARNING and above as Events
    settings.posting.reporting_component = "fedcare"
    settings.posting.event_name_prefix = "fedcare-"
    settings.watching.server_timeout = 300      # re-list at least every 5 minutes
    settings.watching.client_timeout = 330
    settings.watching.connect_timeout = 10
    settings.networking.request_timeout = 30
    settings.networking.connect_timeout = 10
    settings.networking.error_backoffs = [1, 2, 5, 10, 20]   # bounded API retry inside kopf
    settings.queueing.error_delays = [1, 2, 5, 10, 30, 60]   # bounded back-off for watch errors


def _from_kubeconfig(path: str, **kwargs: Any) -> kopf.ConnectionInfo:
    """The current context of exactly ``path``, as kopf's own kubeconfig login reads one.

    Written here because kopf's ``login_with_kubeconfig`` reads only ``$KUBECONFIG``: swapping
    a process-wide variable from a login handler (which kopf runs on a worker thread) would race
    with anything else reading it. Same fields as kopf's: server, CA, client certificate/key,
    token, basic auth, default namespace.
    """
    import yaml

    try:
        with open(path, encoding="utf-8") as f:
            config = yaml.safe_load(f) or {}
    except OSError as err:
        raise kopf.LoginError(f"kubeconfig {path} cannot be read: {err.strerror}") from None
    except yaml.YAMLError:
        raise kopf.LoginError(f"kubeconfig {path} is not valid YAML") from None

    def named(section: str, name: str | None) -> dict[str, Any]:
        for item in config.get(section) or []:
            if item.get("name") == name:
                return item.get(section[:-1]) or {}
        raise kopf.LoginError(f"kubeconfig {path}: no {section[:-1]} named {name!r}")

    context = named("contexts", config.get("current-context"))
    cluster, user = named("clusters", context.get("cluster")), named("users", context.get("user"))
    settings = kwargs.get("settings")
    return kopf.ConnectionInfo(
        server=cluster.get("server"),
        ca_path=cluster.get("certificate-authority"),
        ca_data=cluster.get("certificate-authority-data"),
        insecure=cluster.get("insecure-skip-tls-verify"),
        certificate_path=user.get("client-certificate"),
        certificate_data=user.get("client-certificate-data"),
        private_key_path=user.get("client-key"),
        private_key_data=user.get("client-key-data"),
        username=user.get("username"),
        password=user.get("password"),
        token=user.get("token"),
        default_namespace=context.get("namespace"),
        trust_env=settings.networking.trust_env if settings is not None else False,
    )


def add_hub_login(registry: kopf.OperatorRegistry, kubeconfig: str | None = None) -> None:
    """The hub: ``kubeconfig`` if given, else the pod's ServiceAccount, else KUBECONFIG/~/.kube/config."""
    @kopf.on.login(registry=registry)
    def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
        if kubeconfig:
            return _from_kubeconfig(kubeconfig, **kwargs)
        return kopf.login_with_service_account(**kwargs) or kopf.login_with_kubeconfig(**kwargs)


def add_agent_login(registry: kopf.OperatorRegistry, hub_kubeconfig: str) -> None:
    """The agent: the hub kubeconfig it was given, and nothing else."""
    @kopf.on.login(registry=registry)
    def login(**kwargs: Any) -> kopf.ConnectionInfo:
        return _from_kubeconfig(hub_kubeconfig, **kwargs)
