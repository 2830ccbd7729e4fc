"""A quick suspend/resume finds the last attempt's SuperLink pod still terminating: the hub never
adopts it (keys registered with a dying SuperLink would be lost with its state, and the new one
would refuse the SuperNodes); it waits, then creates the new pod. Emulator (which defers the
deletion of a pod bound to a node, as the API server does)."""

from __future__ import annotations

from fedcare.api.validation import parse
from fedcare.hub import aggregator as agg
from fedcare.integrations.kube import Kube, Ref
from fedcare.sandbox.federation import round_manifest
from tests.integration.conftest import FAST


async def test_a_terminating_superlink_pod_is_not_adopted(emulator):
    api = Kube.from_url(str(emulator.url), policy=FAST)
    body = round_manifest("r1", sites=2, rounds=1)
    body = await api.create(Ref("fedcare.io/v1alpha1", "federatedrounds", "default"), body)
    spec, cfg = parse("FederatedRound", body), agg.AggregatorConfig(insecure=True)
    pod_manifest = dict(agg.manifests(body, spec, cfg))["pods"]
    pod_manifest["spec"]["nodeName"] = "gone-node"       # bound: its deletion waits for a kubelet
    old = await api.create(Ref("v1", "pods", "default"), pod_manifest)
    await api.delete(Ref("v1", "pods", "default", old["metadata"]["name"]))
    dying = await api.get(Ref("v1", "pods", "default", old["metadata"]["name"]))
    assert dying["metadata"].get("deletionTimestamp")

    state = await agg.ensure_aggregator(api, body, spec, cfg)
    assert not state.ready and not state.failed
    assert "still terminating" in state.message and state.pod_uid == ""
    still = await api.get(Ref("v1", "pods", "default", old["metadata"]["name"]))
    assert still["metadata"]["uid"] == old["metadata"]["uid"]      # not replaced under its feet

    # Gone: the next pass creates the new pod (a new uid: registrations start afresh).
    await api.request("DELETE", Ref("v1", "pods", "default", old["metadata"]["name"]).path,
                      body={"gracePeriodSeconds": 0})
    await agg.ensure_aggregator(api, body, spec, cfg)
    new = await api.get(Ref("v1", "pods", "default", old["metadata"]["name"]))
    assert new["metadata"]["uid"] != old["metadata"]["uid"] and not new["metadata"].get("deletionTimestamp")
