"""Process kubelet pieces without processes: image table, translation, expansion, fit, networks."""

from __future__ import annotations

import pytest

from fedcare.sandbox.kubelet import fits
from fedcare.sandbox.kubelet_cli import parse_label, parse_taint
from fedcare.sandbox.kubelet_images import ImageNotFound, repository_of, resolve_image
from fedcare.sandbox.kubelet_translate import (PodNetwork, ServiceTarget, Translator, expand, resolve_target,
                                               service_names)


@pytest.mark.parametrize("image, repo", [
    ("fedcare", "fedcare"), ("fedcare:0.3.0", "fedcare"), ("fedcare@sha256:" + "a" * 64, "fedcare"),
    ("ghcr.io/fedcare/ultrasound-train:1.0@sha256:" + "b" * 64, "ghcr.io/fedcare/ultrasound-train"),
    ("localhost:5000/fedcare:dev", "localhost:5000/fedcare"),
])
def test_repository_of_drops_tag_and_digest(image, repo):
    assert repository_of(image) == repo


def test_known_images_resolve_and_unknown_ones_fail_clearly():
    assert resolve_image("fedcare:dev").entrypoint == ("fedcare",)
    assert resolve_image("ghcr.io/fedcare/ultrasound-train@sha256:" + "c" * 64).entrypoint == ()
    for bad in ("busybox", "ghcr.io/fedcare/other:1", "registry.example/fedcare:1", ""):
        with pytest.raises(ImageNotFound) as exc:
            resolve_image(bad)
        assert "image" in str(exc.value)


@pytest.mark.parametrize("text, out", [
    ("$(A)-$(B)", "1-two"), ("$$(A)", "$(A)"), ("$(MISSING)", "$(MISSING)"), ("$A", "$A"),
    ("cost: $5", "cost: $5"), ("$(A", "$(A"), ("end$", "end$"), ("$$$(A)", "$1"),
])
def test_kubernetes_variable_expansion(text, out):
    assert expand(text, {"A": "1", "B": "two"}) == out


def test_bind_addresses_service_names_and_mount_paths_are_translated():
    tr = Translator("127.3.0.7", {("ns", "superlink"): ServiceTarget("127.2.0.5", {9092: 19092})},
                    {"/data": "/tmp/k/vol/data", "/data/models": "/tmp/k/models", "/out": "/tmp/k/out"})
    assert tr("0.0.0.0:9092") == "127.3.0.7:9092"
    assert tr("--addr=[::]:8080") == "--addr=127.3.0.7:8080"
    assert tr("10.0.0.0:1") == "10.0.0.0:1" and tr("1.0.0.0.0:9") == "1.0.0.0.0:9"
    assert [tr(x) for x in ("0.0.0.0", "--host=0.0.0.0", "::", "--bind=::", "[::]", "0.0.0.0/0", "a::b")] == [
        "127.3.0.7", "--host=127.3.0.7", "127.3.0.7", "--bind=127.3.0.7", "127.3.0.7", "0.0.0.0/0", "a::b"]
    assert tr("superlink.ns.svc.cluster.local:9092") == "127.2.0.5:19092"
    assert tr("grpc://superlink.ns.svc:9093") == "grpc://127.2.0.5:9093"     # unlisted port: kept
    assert tr("superlink.ns.svc") == "127.2.0.5"
    assert tr("other.ns.svc:1") == "other.ns.svc:1"                          # not resolved: left alone
    assert tr("superlink.ns.svc.example.com") == "superlink.ns.svc.example.com"
    assert tr("--data=/data/x --models /data/models/m.pt") == "--data=/tmp/k/vol/data/x --models /tmp/k/models/m.pt"
    assert tr("out-dir='/out'") == "out-dir='/tmp/k/out'"
    assert tr("/database /mnt/data /data2") == "/database /mnt/data /data2"


def test_service_names_found():
    assert service_names(["a.b.svc:1 c.d.svc.cluster.local", "x.y.z"]) == {("b", "a"), ("d", "c")}


def _pod(name, ip, phase="Running", ready=True, created="2026-01-01T00:00:00Z"):
    return {"metadata": {"name": name, "creationTimestamp": created},
            "spec": {"containers": [{"ports": [{"name": "http", "containerPort": 8080}]}]},
            "status": {"phase": phase, "podIP": ip,
                       "conditions": [{"type": "Ready", "status": "True" if ready else "False"}]}}


def test_service_resolution_picks_the_oldest_ready_pod_and_maps_ports():
    svc = {"spec": {"ports": [{"port": 80, "targetPort": "http"}, {"port": 81, "targetPort": 9000},
                              {"port": 82}, {"port": 83, "targetPort": "nope"}]}}
    assert resolve_target(svc, []) is None
    assert resolve_target(svc, [_pod("p", "127.2.0.1", phase="Pending")]) is None
    t = resolve_target(svc, [_pod("new", "127.2.0.3", created="2026-02-01T00:00:00Z"),
                             _pod("old", "127.2.0.2"), _pod("unready", "127.2.0.4", ready=False,
                                                            created="2025-01-01T00:00:00Z")])
    assert t.ip == "127.2.0.2" and dict(t.ports) == {80: 8080, 81: 9000, 82: 82}
    assert resolve_target(svc, [_pod("unready", "127.2.0.4", ready=False)]) is None
    publish = {"spec": {**svc["spec"], "publishNotReadyAddresses": True}}
    assert resolve_target(publish, [_pod("unready", "127.2.0.4", ready=False)]).ip == "127.2.0.4"


def test_pod_network_hands_out_unique_loopback_addresses():
    net = PodNetwork(7)
    net.claim("127.7.0.1")
    ips = [net.allocate() for _ in range(600)]
    assert len(set(ips)) == 600 and "127.7.0.1" not in ips
    assert all(net.owns(ip) and ip.split(".")[3] not in ("0", "255") for ip in ips)
    assert not net.owns("127.8.0.1") and not net.owns("nonsense")
    with pytest.raises(ValueError):
        PodNetwork(1)


NODE = {"metadata": {"labels": {"site": "a", "zone": "z1"}},
        "spec": {"taints": [{"key": "dedicated", "value": "a", "effect": "NoSchedule"},
                            {"key": "soft", "effect": "PreferNoSchedule"}]}}
TOL = [{"key": "dedicated", "operator": "Equal", "value": "a", "effect": "NoSchedule"}]


@pytest.mark.parametrize("spec, ok", [
    ({"tolerations": TOL}, True),
    ({}, False),
    ({"tolerations": [{"operator": "Exists"}]}, True),
    ({"tolerations": [{"key": "dedicated", "operator": "Exists"}]}, True),
    ({"tolerations": [{"key": "dedicated", "value": "b"}]}, False),
    ({"tolerations": TOL, "nodeSelector": {"site": "a"}}, True),
    ({"tolerations": TOL, "nodeSelector": {"site": "b"}}, False),
    ({"tolerations": TOL, "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
        "nodeSelectorTerms": [{"matchExpressions": [{"key": "zone", "operator": "In", "values": ["z1"]}]}]}}}}, True),
    ({"tolerations": TOL, "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
        "nodeSelectorTerms": [{"matchExpressions": [{"key": "gpu", "operator": "Exists"}]}]}}}}, False),
    ({"tolerations": TOL, "containers": [{"resources": {"limits": {"nvidia.com/gpu": "2"}}}]}, False),
    ({"tolerations": TOL, "containers": [{"resources": {"limits": {"nvidia.com/gpu": "1"}}}]}, True),
])
def test_the_emulator_scheduler_stand_in_fit(spec, ok):
    assert fits({"spec": {"containers": [], **spec}}, NODE, gpus_free=1)[0] is ok


def test_cli_label_and_taint_parsing():
    assert parse_label("a=b") == ("a", "b")
    assert parse_taint("k=v:NoSchedule") == {"key": "k", "value": "v", "effect": "NoSchedule"}
    assert parse_taint("k:NoExecute") == {"key": "k", "effect": "NoExecute"}
    import argparse
    for bad in ("k=v", "k=v:Sometimes"):
        with pytest.raises(argparse.ArgumentTypeError):
            parse_taint(bad)
    with pytest.raises(argparse.ArgumentTypeError):
        parse_label("novalue")
