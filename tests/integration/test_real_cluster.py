"""The install path and the API's semantics, proven on the real control plane (fedcare-kube).

Everything here talks to a real kube-apiserver (with etcd, controller-manager and scheduler)
built from the Kubernetes Go modules: CRDs the real YAML parser and structural-schema checks
accept, CEL rules the server itself enforces, kubectl and Helm end to end, and the site
agent's real identity (a TokenRequest token) with RBAC and the admission policy answering 403.
"""

from __future__ import annotations

import asyncio
import copy
import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time

import pytest
import yaml

from fedcare.api.kinds import KINDS
from fedcare.sandbox.cluster import RealCluster, find_binary
from tests.support.bad_manifests import cases, load
from tests.support.cluster import Cluster
from tests.support.harness import eventually

pytestmark = pytest.mark.cluster
ROOT = pathlib.Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))


def _apply(cluster: Cluster, doc: dict, *flags: str) -> subprocess.CompletedProcess[str]:
    # JSON, not yaml.safe_dump: PyYAML writes the string "1e-5" unquoted and Go reads a number.
    return cluster.kubectl("apply", *flags, "-f", "-", input=json.dumps(doc), check=False)


def _delete(cluster: Cluster, doc: dict) -> None:
    cluster.kubectl("delete", "--ignore-not-found", "--wait=false", "-f", "-", input=json.dumps(doc),
                    check=False)


def test_crds_are_established_and_read_as_the_models_mean(real_cluster):
    for kind in KINDS:
        served = real_cluster.kubectl_json("get", "crd", kind.resource.crd_name)
        conds = {c["type"]: c["status"] for c in served["status"]["conditions"]}
        assert conds.get("Established") == "True" and conds.get("NamesAccepted") == "True", conds
    rounds = real_cluster.kubectl_json("get", "crd", "federatedrounds.fedcare.io")
    spec = rounds["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    delta = spec["properties"]["privacy"]["properties"]["differentialPrivacy"]["properties"]["delta"]
    assert delta["default"] == "1e-5"          # a string, as the model means, not the number 1e-05


def test_examples_apply_with_validation_and_kubectl_works(real_cluster):
    """`kubectl apply` with client-side validation on (the server serves OpenAPI), get, explain."""
    try:
        for path in EXAMPLES:
            real_cluster.kubectl("apply", "-f", str(path))
        names = real_cluster.kubectl("get", "fedcare", "-A", "-o", "name").stdout.split()
        assert "hospitalnode.fedcare.io/rouen" in names
        assert "federatedround.fedcare.io/ultrasound-2026-11" in names
        assert any(n.startswith("modelrelease.fedcare.io/") for n in names)
        explained = real_cluster.kubectl("explain", "federatedround.spec").stdout
        for field in ("participants", "rounds", "strategy", "privacy", "activeDeadlineSeconds"):
            assert field in explained
        assert "minAvailable" in real_cluster.kubectl("explain", "federatedround.spec.participants").stdout
        table = real_cluster.kubectl("get", "hospitalnodes").stdout
        assert table.split("\n")[0].split()[:4] == ["NAME", "PHASE", "READY", "AVAILABLE"]
    finally:
        for path in EXAMPLES:
            real_cluster.kubectl("delete", "--ignore-not-found", "--wait=false", "-f", str(path), check=False)
        asyncio.run(_no_finalizers(real_cluster))


async def _no_finalizers(cluster: Cluster) -> None:
    from tests.support.cluster import RealTier

    await RealTier(cluster).reset()


@pytest.mark.parametrize("case", cases(), ids=lambda c: c.id)
def test_the_server_enforces_each_cel_rule(real_cluster, case):
    """The bad manifests of the cel-python tests, refused by the API server with the same words."""
    try:
        if case.old is not None:
            created = _apply(real_cluster, case.old, "--server-side", "--field-manager=tests")
            assert created.returncode == 0, created.stderr
        refused = _apply(real_cluster, case.new, "--server-side", "--field-manager=tests")
        assert refused.returncode != 0, f"the server accepted {case.id}"
        assert case.message in refused.stderr, refused.stderr
    finally:
        _delete(real_cluster, case.new)
        asyncio.run(_no_finalizers(real_cluster))


def test_unknown_field_is_rejected_under_strict_validation_and_pruned_otherwise(real_cluster):
    doc = load("hospitalnode-rouen.yaml")
    doc["metadata"]["name"] = "strict"
    doc["spec"]["gpuu"] = {"count": 1}
    try:
        strict = _apply(real_cluster, doc, "--validate=strict")
        assert strict.returncode != 0 and 'unknown field "spec.gpuu"' in strict.stderr, strict.stderr
        lax = _apply(real_cluster, doc, "--validate=false")
        assert lax.returncode == 0, lax.stderr
        stored = real_cluster.kubectl_json("get", "hospitalnode", "strict")
        assert "gpuu" not in stored["spec"]          # pruned: structural schema, no preserve-unknown
    finally:
        _delete(real_cluster, doc)
        asyncio.run(_no_finalizers(real_cluster))


def test_wrong_type_is_rejected(real_cluster):
    doc = load("federatedround-ultrasound.yaml")
    doc["spec"]["rounds"] = "five"
    refused = _apply(real_cluster, doc, "--validate=false")
    assert refused.returncode != 0 and "spec.rounds" in refused.stderr, refused.stderr


def test_defaulted_parents_are_filled_by_the_server(real_cluster):
    """A HospitalNode without a gpu block gets spec.gpu with its defaults (default: {})."""
    doc = load("hospitalnode-rouen.yaml")
    doc["metadata"]["name"] = "nogpu"
    doc["spec"].pop("gpu", None)
    try:
        assert _apply(real_cluster, doc).returncode == 0
        stored = real_cluster.kubectl_json("get", "hospitalnode", "nogpu")
        assert stored["spec"]["gpu"]["count"] == 0
    finally:
        _delete(real_cluster, doc)
        asyncio.run(_no_finalizers(real_cluster))


def test_a_string_default_that_parses_as_a_number_is_refused(real_cluster, tmp_path):
    """Why CRD generation quotes: the old unquoted `default: 1e-5` kills the whole CRD."""
    crd = (ROOT / "crds" / "federatedrounds.fedcare.io.yaml").read_text()
    crd = crd.replace("federatedrounds.fedcare.io", "federatedrounds.probe.fedcare.io")
    crd = crd.replace("group: fedcare.io", "group: probe.fedcare.io")
    assert 'default: "1e-5"' in crd
    path = tmp_path / "bad.yaml"
    path.write_text(crd.replace('default: "1e-5"', "default: 1e-5"))
    refused = real_cluster.kubectl("apply", "--server-side", "-f", str(path), check=False)
    assert refused.returncode != 0
    assert "properties[delta].default" in refused.stderr and "must be of type string" in refused.stderr, \
        refused.stderr


# --- the processes, with the agent's real identity -------------------------------------------

def _spawn(args: list[str], log: pathlib.Path, home: pathlib.Path) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k not in ("KUBECONFIG",)}
    env["HOME"] = str(home)   # never a developer's ~/.kube/config
    # An in-cluster environment (a pod's) must not divert the agent's login. The token file kopf
    # would also need cannot be faked here without writing /var/run/secrets on the machine:
    # tests/unit/test_kopf_setup.py proves the ServiceAccount login is never even tried.
    env["KUBERNETES_SERVICE_HOST"], env["KUBERNETES_SERVICE_PORT"] = "127.0.0.1", "1"
    return subprocess.Popen([sys.executable, "-m", "fedcare.cli", *args], env=env, stdout=log.open("w"),
                            stderr=subprocess.STDOUT, start_new_session=True)


def _stop(proc: subprocess.Popen, timeout: float = 20) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        return proc.wait(5)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cond(obj: dict, ctype: str) -> dict:
    return next((c for c in (obj.get("status") or {}).get("conditions") or [] if c["type"] == ctype), {})


async def test_hub_and_agent_processes_with_the_agents_real_identity(real_cluster, tmp_path):
    """`fedcare hub` and `fedcare agent` as processes; the agent holds only a TokenRequest token
    for its enrolled ServiceAccount. Heartbeats and answers work; another site's objects and
    the hub's conditions answer 403 (RBAC) or are refused (the chart's admission policy)."""
    k = real_cluster
    policy = subprocess.run([str(ROOT / ".tools" / "bin" / "helm"), "template", "fedcare", str(ROOT / "charts/fedcare"),
                             "--set", "mode=hub", "--show-only", "templates/admission-policy.yaml"],
                            capture_output=True, text=True, timeout=60, check=True).stdout
    k.kubectl("apply", "-f", "-", input=policy)
    hub = _spawn(["hub", "--kubeconfig", k.kubeconfig, "--liveness", f"http://127.0.0.1:{_free_port()}/healthz"],
                 tmp_path / "hub.log", tmp_path)
    agent = None
    try:
        for name in ("rouen", "lyon"):
            doc = load("hospitalnode-rouen.yaml")
            doc["metadata"]["name"] = name
            doc["spec"].pop("gpu")                   # no gpu block: the server defaults it (count 0, CPU-only)
            doc["spec"]["leaseDurationSeconds"] = 10
            assert _apply(k, doc).returncode == 0
        for name in ("rouen", "lyon"):
            k.kubectl("wait", "--for=condition=Enrolled", f"hospitalnode/{name}", "--timeout=90s")
        token = k.token("fedcare-site-rouen", "fedcare-agent", 3600)
        agent_kc = k.kubeconfig_for_token(tmp_path / "rouen.kubeconfig", token, "fedcare-site-rouen")
        agent = _spawn(["agent", "--site", "rouen", "--hub-kubeconfig", agent_kc, "--site-kubeconfig", "",
                        "--liveness", f"http://127.0.0.1:{_free_port()}/healthz"], tmp_path / "agent.log", tmp_path)
        # kubectl wait on Ready: the heartbeat arrived through the agent's own identity
        k.kubectl("wait", "--for=condition=Ready", "hospitalnode/rouen", "--timeout=90s")
        # an assignment is answered (CPU-only work)
        ra = {"apiVersion": "fedcare.io/v1alpha1", "kind": "RoundAssignment",
              "metadata": {"name": "r1-rouen", "namespace": "fedcare-site-rouen"},
              "spec": {"roundRef": {"namespace": "default", "name": "r1"}, "nodeName": "rouen",
                       "training": {"image": "ghcr.io/fedcare/train@sha256:" + "b" * 64, "gpusPerSite": 0}}}
        assert _apply(k, ra).returncode == 0

        def answered():
            obj = k.kubectl_json("get", "roundassignment", "r1-rouen", "-n", "fedcare-site-rouen")
            return obj if (obj.get("status") or {}).get("phase") else None

        obj = await eventually(answered, timeout=60, interval=0.5)
        assert obj["status"]["phase"] == "Accepted", obj["status"]

        # The same token, elsewhere: 403 from RBAC.
        as_agent = {"kubeconfig": agent_kc}
        other_ns = k.kubectl("get", "roundassignments", "-n", "fedcare-site-lyon", check=False, **as_agent)
        assert other_ns.returncode != 0 and "Forbidden" in other_ns.stderr, other_ns.stderr
        other_node = k.kubectl("get", "hospitalnode", "lyon", check=False, **as_agent)
        assert other_node.returncode != 0 and "Forbidden" in other_node.stderr, other_node.stderr
        other_status = k.kubectl("patch", "hospitalnode", "lyon", "--subresource=status", "--type=merge",
                                 "-p", '{"status":{"gpuSummary":"9/9"}}', check=False, **as_agent)
        assert other_status.returncode != 0 and "Forbidden" in other_status.stderr, other_status.stderr
        # Its own node's status, but the hub's condition: refused by the admission policy.
        own = k.kubectl_json("get", "hospitalnode", "rouen", **as_agent)
        conds = own["status"]["conditions"]
        for c in conds:
            if c["type"] == "Available":
                c["status"], c["reason"], c["message"] = "True", "Forged", "forged by the site"
        forged = k.kubectl("patch", "hospitalnode", "rouen", "--subresource=status", "--type=merge",
                           "-p", json.dumps({"status": {"conditions": conds}}), check=False, **as_agent)
        assert forged.returncode != 0, "the agent could forge the hub's Available condition"
        assert "may not change the hub's conditions" in forged.stderr, forged.stderr
        heartbeat = k.kubectl("patch", "hospitalnode", "rouen", "--subresource=status", "--type=merge", "-p",
                              '{"status":{"lastHeartbeatTime":"2030-01-01T00:00:00Z"}}', check=False, **as_agent)
        assert heartbeat.returncode != 0 and "hub's status fields" in heartbeat.stderr, heartbeat.stderr
        # ...while its own fields remain writable (the agent's normal job).
        fine = k.kubectl("patch", "hospitalnode", "rouen", "--subresource=status", "--type=merge",
                         "-p", '{"status":{"gpuSummary":"0/0"}}', check=False, **as_agent)
        assert fine.returncode == 0, fine.stderr
        log = (tmp_path / "agent.log").read_text()
        assert token not in log and token not in (tmp_path / "hub.log").read_text()
        # Its identity may not list namespaces or CRDs: kopf runs in its declared restricted mode
        # (exactly the site's namespace). Scanning instead had kopf retry both lists on 403 for
        # ~40 s (ERROR lines) before falling back, and answers waited for that.
        assert "Forbidden" not in log and "Not enough permissions" not in log, log[-3000:]
    finally:
        codes = [_stop(agent) if agent else 0, _stop(hub)]
        k.kubectl("delete", "-f", "-", input=policy, check=False)
        await _async_reset(k)
    assert codes == [0, 0], (tmp_path / "agent.log").read_text()[-3000:] + (tmp_path / "hub.log").read_text()[-3000:]


async def _async_reset(cluster: Cluster) -> None:
    from tests.support.cluster import RealTier

    await RealTier(cluster).reset()


# --- Helm, on a second control plane beside the first -----------------------------------------

def test_helm_install_upgrade_uninstall_on_a_second_control_plane(real_cluster, tmp_path):
    """A second instance runs beside the session's; helm installs the hub (CRDs included), then a
    site agent, upgrades and uninstalls both. (No kubelet runs pods: this proves the install path.)"""
    with RealCluster(tmp_path / "second") as second:
        assert second.server != real_cluster.server
        c = Cluster(second)
        c.kubectl("create", "namespace", "fedcare")
        c.helm("install", "hub", str(ROOT / "charts/fedcare"), "-n", "fedcare", "--set", "mode=hub", "--wait=false")
        c.kubectl("wait", "--for=condition=Established", "--timeout=60s",
                  *[f"crd/{k.resource.crd_name}" for k in KINDS])
        assert c.kubectl("get", "deployment", "-n", "fedcare", "-o", "name").stdout.strip()
        assert "hub-fedcare-site-status" in c.kubectl("get", "validatingadmissionpolicy", "-o", "name").stdout
        c.kubectl("apply", "-f", str(ROOT / "examples" / "hospitalnode-rouen.yaml"))
        c.kubectl("create", "namespace", "fedcare-agent")
        c.kubectl("create", "secret", "generic", "hub-kubeconfig", "-n", "fedcare-agent",
                  f"--from-file=kubeconfig={second.kubeconfig}")
        c.helm("install", "site", str(ROOT / "charts/fedcare"), "-n", "fedcare-agent", "--set", "mode=site",
               "--set", "site.name=rouen", "--set", "site.hubKubeconfigSecret=hub-kubeconfig", "--set", "crds.install=false")
        c.helm("upgrade", "hub", str(ROOT / "charts/fedcare"), "-n", "fedcare", "--set", "mode=hub",
               "--set", "verbose=true")
        deployment = c.kubectl_json("get", "deployment", "-n", "fedcare")["items"][0]
        assert "--verbose" in deployment["spec"]["template"]["spec"]["containers"][0]["args"]
        c.helm("uninstall", "site", "-n", "fedcare-agent")
        c.helm("uninstall", "hub", "-n", "fedcare")
        # crds.keep: the CRDs (and every FederatedRound/ModelRelease) survive an uninstall
        assert c.kubectl("get", "crd", "hospitalnodes.fedcare.io", check=False).returncode == 0
        assert not c.kubectl("get", "deployment", "-n", "fedcare", "-o", "name").stdout.strip()


# --- the control plane's own failures --------------------------------------------------------

def test_port_taken_is_a_clear_error(tmp_path):
    binary = find_binary()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        began = time.monotonic()
        proc = subprocess.run([binary, "cluster", "--dir", str(tmp_path), "--port", str(port)],
                              capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert f"port {port} on 127.0.0.1 is taken" in proc.stderr and "--port" in proc.stderr, proc.stderr
    assert time.monotonic() - began < 30


def test_sigterm_stops_every_child(tmp_path):
    real = RealCluster(tmp_path / "c").start()
    pid = real.process.pid
    kids = open(f"/proc/{pid}/task/{pid}/children").read().split()
    assert len(kids) == 3          # kube-apiserver, kube-controller-manager, kube-scheduler
    assert real.stop() == 0
    assert all(not os.path.exists(f"/proc/{k}") or open(f"/proc/{k}/stat").read().split()[2] == "Z"
               for k in kids)
