"""The hub's own least privilege and the agent's limits, proven on the real control plane.

The chart's hub RBAC (templates/rbac-hub.yaml) and admission policies
(templates/admission-policy.yaml) are installed as they render; enrollment then runs as the
hub's ServiceAccount (a TokenRequest token, no admin rights anywhere), and that identity is
refused everything outside fedcare-site-*: kube-system, other namespaces, Leases elsewhere,
binding cluster-admin, ClusterRoles of any other shape. The site agent's token, minted by the
hub, works for its own job and is refused on every field of the status the hub owns.
"""

from __future__ import annotations

import asyncio
import json
import logging
import pathlib
import re
import subprocess

import pytest

from fedcare.hub import enrollment as e
from fedcare.hub import hospital_node_service as nodes
from fedcare.integrations.kube import Kube
from tests.support.bad_manifests import load
from tests.integration.test_real_cluster import _free_port, _spawn, _stop
from tests.support.cluster import HELM, Cluster, RealTier

pytestmark = pytest.mark.cluster
ROOT = pathlib.Path(__file__).resolve().parents[2]
RELEASE, NS = "rbacprobe", "fedcare-rbacprobe"
HUB_SA = f"{RELEASE}-fedcare"
log = logging.getLogger(__name__)


def _render() -> list[dict]:
    import yaml

    out = subprocess.run([str(HELM), "template", RELEASE, str(ROOT / "charts/fedcare"), "-n", NS,
                          "--set", "mode=hub", "--show-only", "templates/rbac-hub.yaml",
                          "--show-only", "templates/admission-policy.yaml",
                          "--show-only", "templates/serviceaccount.yaml"],
                         capture_output=True, text=True, timeout=60, check=True).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def _as(k: Cluster, kubeconfig: str, *args: str, input: str | None = None) -> subprocess.CompletedProcess[str]:
    return k.kubectl(*args, check=False, kubeconfig=kubeconfig, input=input)


def _refused(proc: subprocess.CompletedProcess[str], *words: str) -> str:
    assert proc.returncode != 0, f"allowed although it must be refused: {proc.stdout}"
    assert "Forbidden" in proc.stderr or "forbidden" in proc.stderr, proc.stderr
    for word in words:
        assert word in proc.stderr, proc.stderr
    return proc.stderr


def _lease(namespace: str, name: str) -> dict:
    return {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": name, "namespace": namespace}, "spec": {}}


def _doc(obj: dict) -> str:
    return json.dumps(obj)


async def _wait_until_policy_answers(k: Cluster, hub_kc: str) -> None:
    """Admission policies take effect once the API server has loaded them (about a second)."""
    for _ in range(120):
        probe = _as(k, hub_kc, "create", "namespace", "rbac-probe-not-a-site", "--dry-run=server")
        if probe.returncode != 0 and "fedcare-site-<site>" in probe.stderr:
            return
        await asyncio.sleep(0.5)
    raise AssertionError(f"the hub-scope policy never refused the probe: {probe.stderr}{probe.stdout}")


async def test_the_hub_enrolls_with_its_chart_rbac_and_nothing_more(real_cluster, tmp_path):
    k = real_cluster
    docs = _render()
    k.kubectl("create", "namespace", NS)
    applied = [d for d in docs if d["metadata"]["name"] != e.SITE_AGENT_CLUSTER_ROLE]   # the session's own
    k.kubectl("apply", "-f", "-", input="\n---\n".join(_doc(d) for d in docs))
    hub_kube = hub = agent = None
    codes: list[int] = []
    try:
        hub_kc = k.kubeconfig_for_token(tmp_path / "hub.kubeconfig", k.token(NS, HUB_SA, 3600), NS)
        await _wait_until_policy_answers(k, hub_kc)
        k.kubectl("create", "namespace", "hospital-data")        # a user's namespace, not a site's

        # (a) enrollment as the hub's identity, end to end: `fedcare hub` with only the hub's
        # token, `fedcare agent` with only the token the hub mints for the site
        hub = _spawn(["hub", "--kubeconfig", hub_kc, "--liveness", f"http://127.0.0.1:{_free_port()}/healthz"],
                     tmp_path / "hub.log", tmp_path)
        doc = load("hospitalnode-rouen.yaml")
        doc["spec"].pop("gpu")
        doc["spec"]["leaseDurationSeconds"] = 10
        k.kubectl("apply", "-f", "-", input=_doc(doc))
        k.kubectl("wait", "--for=condition=Enrolled", "hospitalnode/rouen", "--timeout=90s")
        binding = k.kubectl_json("get", "rolebinding", "fedcare-site", "-n", "fedcare-site-rouen")
        assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                                      "name": e.SITE_AGENT_CLUSTER_ROLE}
        assert k.kubectl_json("get", "clusterrolebinding", "fedcare-site-rouen")["subjects"][0]["namespace"] == \
            "fedcare-site-rouen"
        hub_kube = await Kube.from_kubeconfig(hub_kc)
        await nodes.reconcile(hub_kube, k.kubectl_json("get", "hospitalnode", "rouen"), log)   # idempotent

        # The agent's token, minted by the hub's identity (as hub_credential does), does the agent's job.
        minted = _as(k, hub_kc, "create", "token", "fedcare-agent", "-n", "fedcare-site-rouen")
        assert minted.returncode == 0, minted.stderr
        agent_kc = k.kubeconfig_for_token(tmp_path / "agent.kubeconfig", minted.stdout.strip(), "fedcare-site-rouen")
        agent = _spawn(["agent", "--site", "rouen", "--hub-kubeconfig", agent_kc, "--site-kubeconfig", "",
                        "--liveness", f"http://127.0.0.1:{_free_port()}/healthz"], tmp_path / "agent.log", tmp_path)
        k.kubectl("wait", "--for=condition=Ready", "hospitalnode/rouen", "--timeout=90s")
        assert _as(k, agent_kc, "get", "roundassignments", "-n", "fedcare-site-rouen").returncode == 0
        own = _as(k, agent_kc, "patch", "hospitalnode", "rouen", "--subresource=status", "--type=merge",
                  "-p", '{"status":{"gpuSummary":"0/0"}}')
        assert own.returncode == 0, own.stderr
        _refused(_as(k, agent_kc, "create", "-f", "-", input=_doc(_lease("fedcare-site-rouen", "other"))))

        # (b) the hub's identity, outside fedcare-site-*
        _refused(_as(k, hub_kc, "delete", "namespace", "kube-system", "--dry-run=server"))
        _refused(_as(k, hub_kc, "delete", "namespace", "hospital-data", "--dry-run=server"), "fedcare-site-<site>")
        _refused(_as(k, hub_kc, "label", "namespace", "kube-system", "owned=yes", "--dry-run=server"),
                 "fedcare-site-<site>")
        _refused(_as(k, hub_kc, "create", "namespace", "not-a-site"), "fedcare-site-<site>")
        _refused(_as(k, hub_kc, "create", "-f", "-", input=_doc(_lease("default", "fedcare-agent"))),
                 "fedcare-site-* namespaces")
        _refused(_as(k, hub_kc, "create", "-f", "-", input=_doc(_lease("fedcare-site-rouen", "leader"))),
                 "named fedcare-agent")
        _refused(_as(k, hub_kc, "create", "serviceaccount", "fedcare-agent", "-n", "kube-system"))
        _refused(_as(k, hub_kc, "create", "token", "default", "-n", "kube-system"))
        _refused(_as(k, hub_kc, "create", "token", "default", "-n", "fedcare-site-rouen"), "named fedcare-agent")
        # binding cluster-admin: RBAC's escalation check (the hub may bind only fedcare:site-agent)
        _refused(_as(k, hub_kc, "create", "clusterrolebinding", "fedcare-site-evil", "--clusterrole=cluster-admin",
                     f"--serviceaccount={NS}:{HUB_SA}"))
        _refused(_as(k, hub_kc, "create", "rolebinding", "evil", "-n", "fedcare-site-rouen",
                     "--clusterrole=cluster-admin", "--serviceaccount=fedcare-site-rouen:fedcare-agent"))
        # the one role it may bind, but for somebody else or somewhere else: the policy
        _refused(_as(k, hub_kc, "create", "rolebinding", "x", "-n", "fedcare-site-rouen",
                     f"--clusterrole={e.SITE_AGENT_CLUSTER_ROLE}", f"--serviceaccount={NS}:{HUB_SA}"),
                 "namespace's own fedcare-agent")
        _refused(_as(k, hub_kc, "create", "rolebinding", "x", "-n", "hospital-data",
                     f"--clusterrole={e.SITE_AGENT_CLUSTER_ROLE}", "--serviceaccount=hospital-data:default"))
        # arbitrary ClusterRoles: with rights the hub does not hold (RBAC), or holds (the policy)
        _refused(_as(k, hub_kc, "create", "clusterrole", "evil", "--verb=*", "--resource=*"))
        _refused(_as(k, hub_kc, "create", "clusterrole", "evil", "--verb=create", "--resource=pods"),
                 "named fedcare-site-<site>")
        _refused(_as(k, hub_kc, "create", "clusterrole", "fedcare-site-evil", "--verb=create", "--resource=pods"),
                 "may only grant read/patch/update on the HospitalNode")
        _refused(_as(k, hub_kc, "create", "clusterrole", "fedcare-site-evil", "--verb=patch",
                     "--resource=hospitalnodes.fedcare.io", "--resource-name=rouen"),
                 "may only grant read/patch/update on the HospitalNode")
        _refused(_as(k, hub_kc, "create", "clusterrolebinding", "fedcare-site-rouen-2",
                     "--clusterrole=fedcare-site-rouen", "--serviceaccount=fedcare-site-rouen:fedcare-agent"),
                 "may only bind fedcare-site-<site>")

        # The agent on every field of the status the hub owns: the site-status policy.
        await _agent_cannot_forge_the_hub_view(k, agent_kc)

        # deletion, by the hub process's finalizer, still as the hub
        codes.append(_stop(agent))
        agent = None
        k.kubectl("delete", "hospitalnode", "rouen", "--timeout=90s")
        assert _as(k, k.kubeconfig, "get", "clusterrole", "fedcare-site-rouen").returncode != 0
        assert _as(k, k.kubeconfig, "get", "clusterrolebinding", "fedcare-site-rouen").returncode != 0
        ns = _as(k, k.kubeconfig, "get", "namespace", "fedcare-site-rouen", "-o", "json")
        assert ns.returncode != 0 or json.loads(ns.stdout)["metadata"].get("deletionTimestamp"), ns.stdout
        codes.append(_stop(hub))
        hub = None
        hub_log = (tmp_path / "hub.log").read_text()
        # the chart's RBAC covers everything the hub did: not one request refused
        # (a bare "403" also matched a log line's milliseconds, "01:16:00,403": not after , . : or a digit)
        assert "Forbidden" not in hub_log and not re.search(r"(?<![,.:\d])403(?!\d)", hub_log), hub_log[-4000:]
        assert codes == [0, 0], (tmp_path / "agent.log").read_text()[-3000:] + hub_log[-3000:]
    finally:
        for proc in (agent, hub):
            if proc is not None:
                _stop(proc)
        if hub_kube is not None:
            await hub_kube.close()
        k.kubectl("delete", "--ignore-not-found", "-f", "-", input="\n---\n".join(_doc(d) for d in applied),
                  check=False)
        k.kubectl("delete", "namespace", "--ignore-not-found", "--wait=false", NS, "hospital-data", "not-a-site",
                  check=False)
        await RealTier(k).reset()


def _status_patch(k: Cluster, kubeconfig: str, status: dict) -> subprocess.CompletedProcess[str]:
    return _as(k, kubeconfig, "patch", "hospitalnode", "rouen", "--subresource=status", "--type=merge",
               "-p", json.dumps({"status": status}))


async def _agent_cannot_forge_the_hub_view(k: Cluster, agent_kc: str) -> None:
    node = k.kubectl_json("get", "hospitalnode", "rouen")
    conds = node["status"]["conditions"]
    present = {c["type"] for c in conds}
    assert present >= {"Enrolled", "Available", "Ready"}, conds
    hub_types = [t for t in ("Enrolled", "Available", "Ready", "CredentialsReady") if t in present]
    for ctype in hub_types:
        forged = [dict(c, status="True" if c["status"] != "True" else "False", reason="Forged",
                       message="forged by the site") if c["type"] == ctype else c for c in conds]
        _refused(_status_patch(k, agent_kc, {"conditions": forged}), "may not change the hub's conditions")
        dropped = [c for c in conds if c["type"] != ctype]
        _refused(_status_patch(k, agent_kc, {"conditions": dropped}), "may not change the hub's conditions")
    # a hub condition the hub has not written (yet) may not be added either
    absent = "CredentialsReady" if "CredentialsReady" not in present else None
    dropped_cr = [c for c in conds if c["type"] != "CredentialsReady"]
    if absent is None:     # drop it as admin, then try to add it as the agent
        _status_patch(k, k.kubeconfig, {"conditions": dropped_cr})
    added = dropped_cr + [{"type": "CredentialsReady", "status": "True", "reason": "Forged", "message": "",
                           "lastTransitionTime": "2026-01-01T00:00:00Z"}]
    _refused(_status_patch(k, agent_kc, {"conditions": added}), "may not change the hub's conditions")
    conds = k.kubectl_json("get", "hospitalnode", "rouen")["status"]["conditions"]
    for field, value in (("siteNamespace", "fedcare-site-lyon"), ("lastHeartbeatTime", "2030-01-01T00:00:00Z"),
                         ("phase", "Invalid")):
        _refused(_status_patch(k, agent_kc, {field: value}), "may not change the hub's status fields")
    _refused(_status_patch(k, agent_kc, {"observedGeneration": 99}), "observedGeneration")
    # its own fields stay writable, hub conditions untouched, and the spec is not its to change
    assert _status_patch(k, agent_kc, {"gpuSummary": "1/1"}).returncode == 0
    _refused(_as(k, agent_kc, "patch", "hospitalnode", "rouen", "--type=merge", "-p", '{"spec":{"cordoned":true}}'))
    after = k.kubectl_json("get", "hospitalnode", "rouen")

    def view(cs: list[dict]) -> list[tuple[str, str, str]]:
        return sorted((c["type"], c["status"], c["reason"]) for c in cs if c["type"] in ("Enrolled", "Available", "Ready"))

    assert view(after["status"]["conditions"]) == view(conds)
