"""Login per process: the agent reaches the hub only with the kubeconfig it was given."""

from __future__ import annotations

import json

import kopf
import pytest

from fedcare import kopf_setup


def _kubeconfig(path, server):
    path.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "c",
        "clusters": [{"name": "c", "cluster": {"server": server}}],
        "users": [{"name": "u", "user": {"token": "t0ken"}}],
        "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u", "namespace": "fedcare-site-rouen"}}]}))
    return str(path)


def _login_handler(registry):
    handlers = registry._activities.get_handlers(activity=kopf._core.intents.causes.Activity.AUTHENTICATION)
    assert len(handlers) == 1
    return handlers[0].fn


def test_agent_logs_in_with_the_hub_kubeconfig_even_inside_a_pod(tmp_path, monkeypatch):
    hub = _kubeconfig(tmp_path / "hub", "https://hub.example:6443")
    other = _kubeconfig(tmp_path / "other", "https://site-cluster.example:6443")
    # everything that would point kopf elsewhere: an in-cluster environment and $KUBECONFIG
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.0.0.1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", "443")
    monkeypatch.setenv("KUBECONFIG", other)
    called = []
    monkeypatch.setattr(kopf, "login_with_service_account", lambda **_: called.append(1))
    registry = kopf.OperatorRegistry()
    kopf_setup.add_agent_login(registry, hub)
    info = _login_handler(registry)(settings=kopf.OperatorSettings(), logger=None)
    assert info.server == "https://hub.example:6443" and info.default_namespace == "fedcare-site-rouen"
    assert called == []                         # the pod's ServiceAccount is never tried
    assert __import__("os").environ["KUBECONFIG"] == other    # restored


def test_agent_login_names_a_missing_kubeconfig(tmp_path):
    registry = kopf.OperatorRegistry()
    kopf_setup.add_agent_login(registry, str(tmp_path / "nope"))
    with pytest.raises(kopf.LoginError, match="cannot be read"):
        _login_handler(registry)(settings=kopf.OperatorSettings(), logger=None)


def test_hub_prefers_an_explicit_kubeconfig(tmp_path, monkeypatch):
    hub = _kubeconfig(tmp_path / "hub", "https://hub.example:6443")
    monkeypatch.setattr(kopf, "login_with_service_account", lambda **_: pytest.fail("tried the ServiceAccount"))
    registry = kopf.OperatorRegistry()
    kopf_setup.add_hub_login(registry, hub)
    assert _login_handler(registry)(settings=kopf.OperatorSettings(), logger=None).server == "https://hub.example:6443"


def test_the_agents_kopf_runs_in_restricted_mode():
    """The agent serves exactly its site namespace and lists no namespaces or CRDs: its hub
    identity may not (kopf retried on 403 for ~40 s), and kopf's namespace scan missed a
    namespace created between its listing and its watch's re-listing."""
    from fedcare.site.agent import SiteAgent

    agent = SiteAgent("rouen", None, None, agent_id="rouen/a")     # type: ignore[arg-type]
    startup = agent.registry()._activities.get_handlers(activity=kopf._core.intents.causes.Activity.STARTUP)
    settings = kopf.OperatorSettings()
    assert settings.scanning.disabled is False                      # kopf's default
    for handler in startup:
        handler.fn(settings=settings, logger=None)
    assert settings.scanning.disabled is True
