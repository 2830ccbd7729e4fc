"""Which sites can run a round, and why the others cannot."""

from __future__ import annotations

from fedcare.api.base import LabelSelector
from fedcare.hub.selection import eligible_sites, judge


def node(name, *, ready="True", available="True", cordoned=False, free=2, product="H100", labels=None,
         deleting=False):
    md = {"name": name, "labels": labels if labels is not None else {"fedcare.io/modality": "ultrasound"}}
    if deleting:
        md["deletionTimestamp"] = "2026-11-28T00:00:00Z"
    return {"metadata": md, "spec": {"cordoned": cordoned},
            "status": {"conditions": [{"type": "Ready", "status": ready, "reason": "X"},
                                      {"type": "Available", "status": available, "reason": "LeaseRenewed"}],
                       "capacity": {"gpusFree": free, "byProduct": [{"product": product, "healthy": free}]}}}


SEL = LabelSelector.model_validate({"matchLabels": {"fedcare.io/modality": "ultrasound"}})


def test_eligible_and_reasons():
    nodes = [node("a"), node("b", cordoned=True), node("c", available="Unknown"), node("d", free=0),
             node("e", ready="False"), node("f", labels={}), node("g", deleting=True)]
    eligible, verdicts = eligible_sites(nodes, SEL, gpus=1)
    assert eligible == ["a"]
    reasons = {v.site: v.reason for v in verdicts}
    assert "f" not in reasons                       # did not match the selector at all
    assert reasons["b"] == "cordoned"
    assert reasons["c"].startswith("not heartbeating")
    assert reasons["d"] == "0 healthy free GPUs, 1 needed"
    assert reasons["e"].startswith("not Ready")
    assert reasons["g"] == "being deleted"


def test_product_constraint():
    assert judge(node("a", product="A100"), SEL, gpus=1, product="H100").reason == \
        "0 healthy free H100 GPUs, 1 needed"
    assert judge(node("a"), SEL, gpus=2, product="H100").eligible


def test_cpu_rounds_need_no_gpus():
    assert judge(node("a", free=0), SEL, gpus=0).eligible


def test_match_expressions():
    sel = LabelSelector.model_validate({"matchExpressions": [
        {"key": "region", "operator": "In", "values": ["eu"]}, {"key": "hold", "operator": "DoesNotExist"}]})
    assert sel.matches({"region": "eu"})
    assert not sel.matches({"region": "us"})
    assert not sel.matches({"region": "eu", "hold": "ethics"})
