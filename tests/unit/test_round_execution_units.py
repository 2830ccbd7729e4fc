"""Round execution pieces without processes: training pod manifests, GPU reservations,
progress from provenance, phase/Ready derivation, flwr CLI failures."""

from __future__ import annotations

import datetime as dt
import json
import stat

import pytest

from fedcare.api import conditions as c
from fedcare.hub import round_progress as rp
from fedcare.hub.flower_runs import FlowerCLI, FlowerError
from fedcare.hub.round_scheduler import derive_phase, derive_ready
from fedcare.site import training_pod as tp
from fedcare.site.assignments import reserved_gpus
from fedcare.site.work import past_deadline

IMAGE = "ghcr.io/fedcare/ultrasound-train@sha256:" + "a" * 64


def assignment(name="r1-abc-a1", site="rouen", gpus=0, deadline=None, phase="Accepted",
               address="r1-superlink.default.svc.cluster.local:9092"):
    return {"metadata": {"name": name, "namespace": f"fedcare-site-{site}", "generation": 1},
            "spec": {"roundRef": {"namespace": "default", "name": "r1"}, "nodeName": site, "attempt": 1,
                     "superLink": {"address": address, "insecure": True},
                     "training": {"image": IMAGE, "gpusPerSite": gpus}, "deadline": deadline},
            "status": {"phase": phase, "attempt": 1}}


NODE = {"spec": {"dataset": {"claimName": "ultrasound-deid"},
                 "scheduling": {"nodeSelector": {"gpu": "h100"},
                                "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "fl",
                                                 "effect": "NoSchedule", "tolerationSeconds": None}]}}}


def test_training_pod_without_gpus_requests_none_and_is_hardened():
    pod = tp.pod_manifest(assignment(), NODE, site="rouen", namespace="fl", retry=0, insecure=True)
    box = pod["spec"]["containers"][0]
    assert "nvidia.com/gpu" not in box["resources"]["limits"] and "nvidia.com/gpu" not in box["resources"]["requests"]
    assert box["securityContext"] == {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                                      "privileged": False, "capabilities": {"drop": ["ALL"]}}
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
    assert pod["spec"]["automountServiceAccountToken"] is False
    assert pod["spec"]["nodeSelector"] == {"gpu": "h100"}
    assert pod["spec"]["tolerations"] == [{"key": "dedicated", "operator": "Equal", "value": "fl",
                                           "effect": "NoSchedule"}]
    data = next(v for v in pod["spec"]["volumes"] if v["name"] == "dataset")
    assert data["persistentVolumeClaim"] == {"claimName": "ultrasound-deid", "readOnly": True}
    assert {"name": "dataset", "mountPath": "/data", "readOnly": True} in box["volumeMounts"]
    labels = pod["metadata"]["labels"]
    assert labels["fedcare.io/round"] == "r1" and labels["fedcare.io/site"] == "rouen"
    assert labels["fedcare.io/attempt"] == "1"
    assert "--insecure" in box["args"] and 'site="rouen"' in box["args"][box["args"].index("--node-config") + 1]
    assert pod["metadata"]["name"] == "rouen-r1-abc-a1-r0"


def test_training_pod_with_gpus_and_tls_requests_them_and_no_insecure_flag():
    pod = tp.pod_manifest(assignment(gpus=2), NODE, site="rouen", namespace="fl", retry=1, insecure=False)
    box = pod["spec"]["containers"][0]
    assert box["resources"]["limits"]["nvidia.com/gpu"] == "2" and "--insecure" not in box["args"]
    assert pod["metadata"]["name"].endswith("-r1")


def test_network_policy_allows_only_the_superlink_and_dns():
    np = tp.network_policy(assignment(address="10.0.0.7:9092"), site="rouen", namespace="fl")
    assert np["spec"]["policyTypes"] == ["Ingress", "Egress"] and np["spec"]["ingress"] == []
    first, dns = np["spec"]["egress"]
    assert first == {"ports": [{"protocol": "TCP", "port": 9092}], "to": [{"ipBlock": {"cidr": "10.0.0.7/32"}}]}
    assert {p["port"] for p in dns["ports"]} == {53}


def test_gpus_are_released_past_the_deadline_and_when_ended():
    past = (dt.datetime.now(dt.UTC) - dt.timedelta(seconds=5)).isoformat()
    future = (dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)).isoformat()
    held = assignment("a", gpus=2, deadline=future)
    expired = assignment("b", gpus=3, deadline=past)
    ended = assignment("c", gpus=4, deadline=future, phase="Succeeded")
    assert reserved_gpus([held, expired, ended], besides="x") == 2
    assert past_deadline(expired) and not past_deadline(held)


def test_progress_names_ok_failed_and_dropped_sites(tmp_path):
    doc = {"status": "running", "rounds": [
        {"round": 0, "global_model_sha256": "x"},
        {"round": 1, "sites": {"rouen": {"status": "ok", "num_examples": 40, "metrics": {"dp-epsilon-total": 1.5}},
                               "lyon": {"status": "failed", "error": "no reply before round-timeout"},
                               "lille": {"status": "failed", "error": "site=lille: ValueError"}},
         "server_evaluation": {"loss": 0.9, "accuracy": 0.61, "auroc": 0.8}, "global_model_sha256": "y"}]}
    (tmp_path / "provenance.json").write_text(json.dumps(doc))
    prog = rp.read_progress(tmp_path, ["rouen", "lyon", "lille", "brest"])
    (r1,) = prog.rounds
    states = {s["site"]: s["status"] for s in r1["sites"]}
    assert states == {"rouen": "ok", "lyon": "dropped", "lille": "failed", "brest": "dropped"}
    assert r1["accuracy"] == "0.61" and r1["examples"] == 40 and prog.completed == 1
    assert prog.epsilon == {"rouen": "1.5"} and prog.last_round == {"rouen": 1}


def test_result_refuses_a_model_that_changed_after_the_run(tmp_path):
    folder = tmp_path / "default" / "r1-abcdefgh" / "attempt-1"
    folder.mkdir(parents=True)
    (folder / "model.safetensors").write_bytes(b"weights")
    (folder / "model.safetensors.sha256").write_text("0" * 64 + "  model.safetensors\n")
    with pytest.raises(rp.ArtifactError, match="does not match its recorded sha256"):
        rp.read_result(folder, "fedcare-artifacts", str(tmp_path))
    (folder / "model.safetensors.sha256").write_text(rp.sha256_file(folder / "model.safetensors") + "\n")
    result = rp.read_result(folder, "fedcare-artifacts", str(tmp_path))
    assert result.storage_uri == "pvc://fedcare-artifacts/default/r1-abcdefgh/attempt-1/model.safetensors"


def test_phase_and_ready_follow_the_conditions():
    T = c.ConditionType
    conds = [c.make(T.VALID, True, c.Reason.RECONCILED), c.make(T.PARTICIPANTS_SELECTED, False,
                                                                c.Reason.QUORUM_NOT_MET, "1 of 2")]
    (ready,) = derive_ready(conds)
    assert (ready.status.value, ready.reason) == ("False", "QuorumNotMet")
    assert derive_phase(conds, {}) == {"phase": "Pending"}
    done = conds[:1] + [c.make(T.COMPLETE, True, c.Reason.RUN_SUCCEEDED, "ok")]
    assert derive_ready(done)[0].status.value == "True" and derive_phase(done, {})["phase"] == "Succeeded"
    failed = done[:1] + [c.make(T.FAILED, True, c.Reason.DEADLINE_EXCEEDED, "late")]
    assert derive_ready(failed)[0].reason == "DeadlineExceeded" and derive_phase(failed, {})["phase"] == "Failed"


async def test_flwr_cli_missing_or_hanging_is_a_clear_error(tmp_path):
    missing = FlowerCLI(tmp_path / "home", flwr=str(tmp_path / "no-flwr"), attempts=2, base_delay=0.01)
    with pytest.raises(FlowerError, match="cannot start the flwr CLI"):
        await missing.stop("k", "127.0.0.1:9", "1", insecure=True)
    slow = tmp_path / "slow-flwr"
    slow.write_text("#!/bin/sh\nsleep 30\n")
    slow.chmod(slow.stat().st_mode | stat.S_IEXEC)
    hanging = FlowerCLI(tmp_path / "home", flwr=str(slow), timeout=0.5, attempts=2, base_delay=0.01)
    with pytest.raises(FlowerError, match="did not answer within"):
        await hanging.stop("k", "127.0.0.1:9", "1", insecure=True)
    failing = tmp_path / "failing-flwr"
    failing.write_text("#!/bin/sh\necho '{\"success\": false, "
                       "\"error-message\": \"[code: 15] Invalid run configuration.\"}'\n")
    failing.chmod(failing.stat().st_mode | stat.S_IEXEC)
    cli = FlowerCLI(tmp_path / "home", flwr=str(failing), attempts=1)
    with pytest.raises(FlowerError, match="Invalid run configuration"):
        await cli.submit("k", "127.0.0.1:9", "app", {"num-server-rounds": 1}, insecure=True)
    assert 'insecure = true' in (tmp_path / "home" / "k" / "config.toml").read_text()
