"""The chart's observability parts: the metrics port and flag, the PodMonitor, the Grafana
dashboard ConfigMap (sidecar label, the same JSON as charts/fedcare/dashboards), --log-format."""

from __future__ import annotations

import json

import pytest

from fedcare.cli import build_parser
from tests.unit.test_chart import CHART, SITE, container_of, helm, of_kind, only, render  # noqa: F401


def test_metrics_port_and_flag_by_default(helm):
    for values in ({}, SITE):
        pod, container = container_of(render(helm, values))
        assert container["args"][-2:] == ["--metrics", "0.0.0.0:9102"]
        assert {"name": "metrics", "containerPort": 9102, "protocol": "TCP"} in container["ports"]
        # what the chart passes, the command accepts
        build_parser().parse_args(container["args"])


def test_metrics_can_be_turned_off_and_moved(helm):
    _, container = container_of(render(helm, {"metrics.enabled": "false"}))
    assert container["args"][-2:] == ["--metrics", ""]
    assert [p["name"] for p in container["ports"]] == ["health"]
    _, container = container_of(render(helm, {"metrics.port": "9300"}))
    assert container["args"][-1] == "0.0.0.0:9300"
    assert not of_kind(render(helm), "PodMonitor")


def test_pod_monitor_selects_the_pod_and_its_metrics_port(helm):
    docs = render(helm, {"metrics.podMonitor.enabled": "true", "metrics.podMonitor.labels.release": "kps"})
    monitor = only(docs, "PodMonitor")
    deployment = only(docs, "Deployment")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["labels"]["release"] == "kps"
    selector = monitor["spec"]["selector"]["matchLabels"]
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert selector and all(pod_labels.get(k) == v for k, v in selector.items())
    assert monitor["spec"]["podMetricsEndpoints"] == [
        {"port": "metrics", "path": "/metrics", "interval": "30s", "scrapeTimeout": "10s"}]


def test_dashboard_configmap_carries_the_sidecar_label_and_the_dashboard(helm):
    assert not of_kind(render(helm), "ConfigMap")
    docs = render(helm, {"grafanaDashboard.enabled": "true"})
    cm = only(docs, "ConfigMap")
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    shipped = json.loads(cm["data"]["fedcare.json"])
    assert shipped == json.loads((CHART / "dashboards" / "fedcare.json").read_text())
    assert shipped["uid"] == "fedcare-federation"
    # site mode has no hub metrics: no dashboard there
    assert not of_kind(render(helm, {**SITE, "grafanaDashboard.enabled": "true"}), "ConfigMap")


@pytest.mark.parametrize(("values", "args"), [({}, []), ({"logFormat": "json"}, ["--log-format", "json"])])
def test_log_format(helm, values, args):
    _, container = container_of(render(helm, values))
    assert container["args"][:len(args)] == args
    assert build_parser().parse_args(container["args"]).log_format == (values.get("logFormat") or "text")
