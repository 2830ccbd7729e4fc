"""One full FederatedRound through pods on the real control plane (issue 8 item 7): the hub, two
site agents and three process kubelets against ``fedcare-kube`` (etcd, kube-apiserver,
controller-manager, scheduler). The real scheduler places the SuperLink and the SuperNode
pods, the real PV controller binds the volumes; the round runs 2 server rounds across 2 sites
with real Flower processes, succeeds, records its artifact and sha256, and leaves no pod.

Marked ``cluster`` (by the ``real_cluster`` fixture); skipped with the build command when
``fedcare-kube`` is not built (``make kube``).
"""

from __future__ import annotations

import hashlib
import importlib.util

import pytest

from fedcare.api.resources import API_VERSION
from fedcare.integrations.kube import Kube, Ref
from fedcare.sandbox.federation import WORK_NAMESPACE, federation, round_manifest
from tests.support.cluster import RealTier
from tests.support.harness import eventually

pytestmark = pytest.mark.skipif(importlib.util.find_spec("fedcare_workloads") is None,
                                reason="needs the workloads package: pip install -c constraints.txt -e ./workloads")

PVS = ("fedcare-artifacts", "dataset-rouen", "dataset-lyon", "ledger-rouen", "ledger-lyon", "real1-superlink-state")
NODES = ("hub", "node-rouen", "node-lyon")


async def _cleanup(kube: Kube, tier: RealTier) -> None:
    await tier.reset()
    for pvc in await kube.list(Ref("v1", "persistentvolumeclaims", "default")):
        if pvc["metadata"]["name"] in ("fedcare-artifacts", "real1-superlink-state"):
            await kube.delete(Ref("v1", "persistentvolumeclaims", "default", pvc["metadata"]["name"]))
    for pv in PVS:
        ref = Ref("v1", "persistentvolumes", None, pv)
        if await kube.get_or_none(ref) is not None:
            await kube.patch(ref, {"metadata": {"finalizers": None}})
            await kube.delete(ref)
    for node in NODES:      # a stopped kubelet's Node must not attract later tests' pods
        await kube.delete(Ref("v1", "nodes", None, node))
    await kube.delete(Ref("v1", "namespaces", None, WORK_NAMESPACE))


@pytest.mark.timeout(1500)
async def test_a_two_site_two_round_round_succeeds_through_pods_on_the_real_control_plane(real_cluster, tmp_path):
    tier = RealTier(real_cluster)
    kube = await Kube.from_kubeconfig(real_cluster.kubeconfig)
    await _cleanup(kube, tier)
    # The SuperLink's state volume, pre-provisioned: this control plane has no storage provisioner
    # (the hub creates the claim; the real PV controller binds it to this volume).
    state = tmp_path / "superlink-state"
    state.mkdir()
    await kube.create(Ref("v1", "persistentvolumes"), {
        "apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": "real1-superlink-state"},
        "spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteOnce"], "hostPath": {"path": str(state)},
                 "claimRef": {"namespace": "default", "name": "real1-superlink-state"},
                 "persistentVolumeReclaimPolicy": "Retain"}})
    try:
        # Plaintext Flower here: with TLS the hub dials the SuperLink Service's ClusterIP (the address
        # its certificate names, issued before the pod exists), and this control plane runs no
        # kube-proxy, so ClusterIPs route nowhere. TLS rounds are tested on the emulator
        # (tests/vault/test_tls_rounds.py), where the kubelet maps the Service to the pod.
        async with federation(real_cluster.server, tmp_path / "fed", ["rouen", "lyon"], images=40, tls=False,
                              kubeconfig=real_cluster.kubeconfig, login=tier.connection_info()) as fed:
            api = fed.api
            await api.create(Ref(API_VERSION, "federatedrounds", "default"),
                             round_manifest("real1", sites=2, rounds=2))

            async def ended():
                obj = await api.get(Ref(API_VERSION, "federatedrounds", "default", "real1"))
                return obj if obj.get("status", {}).get("phase") in ("Succeeded", "Failed") else None

            done = await eventually(ended, timeout=1200, interval=1.0)
            st = done["status"]
            assert st["phase"] == "Succeeded", st
            assert [r["round"] for r in st["serverRounds"]] == [1, 2] and st["serverRound"] == "2/2"
            assert all({s["site"] for s in r["sites"] if s["status"] == "ok"} == {"rouen", "lyon"}
                       for r in st["serverRounds"])
            uri, digest = st["result"]["storageUri"], st["result"]["digest"]
            model = fed.artifact_dir / uri.removeprefix("pvc://fedcare-artifacts/")
            assert digest == "sha256:" + hashlib.sha256(model.read_bytes()).hexdigest()
            # the real scheduler placed the pods on the kubelets' Nodes (no kubelet bound anything)
            assert fed.hub_kubelet.bind is False and all(h.kubelet.bind is False for h in fed.handles.values())

            async def no_pods():
                left = [p["metadata"]["name"] for ns in ("default", WORK_NAMESPACE)
                        for p in await api.list(Ref("v1", "pods", ns))]
                return not left and not fed.processes()
            await eventually(no_pods, timeout=120, interval=1.0)
            assert await api.list(Ref(API_VERSION, "roundassignments")) == []
    finally:
        await _cleanup(kube, tier)
        await kube.close()
