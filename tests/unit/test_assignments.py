"""The site's answer to a RoundAssignment."""

from __future__ import annotations

import copy

from fedcare.site.assignments import decide, needs_answer

DIGEST = "a" * 64
RA = {"apiVersion": "fedcare.io/v1alpha1", "kind": "RoundAssignment",
      "metadata": {"name": "r1-rouen", "namespace": "fedcare-site-rouen", "generation": 1},
      "spec": {"roundRef": {"namespace": "default", "name": "r1"}, "nodeName": "rouen", "attempt": 1,
               "training": {"image": f"ghcr.io/fedcare/train@sha256:{DIGEST}", "gpusPerSite": 2}}}


def test_accepts_when_enough_gpus():
    assert decide("rouen", RA, free_gpus=2)[0] is True


def test_rejects_without_enough_gpus():
    ok, reason, msg = decide("rouen", RA, free_gpus=1)
    assert not ok and getattr(reason, "value", reason) == "InsufficientGPU" and msg == "2 GPU(s) needed, 1 healthy and free"


def test_rejects_when_gpus_unknown():
    ok, reason, msg = decide("rouen", RA, free_gpus=None)
    assert not ok and "NVML unavailable" in msg


def test_rejects_another_sites_work_and_invalid_specs():
    assert decide("lyon", RA, free_gpus=4)[1] == "WrongSite"
    bad = copy.deepcopy(RA)
    bad["spec"]["training"]["image"] = "train:latest"
    ok, reason, msg = decide("rouen", bad, free_gpus=4)
    assert not ok and "spec.training.image" in msg


def test_answer_is_idempotent_per_attempt():
    answered = copy.deepcopy(RA)
    answered["status"] = {"phase": "Accepted", "attempt": 1, "observedGeneration": 1}
    assert needs_answer(RA) and not needs_answer(answered)
    retried = copy.deepcopy(answered)
    retried["spec"]["attempt"] = 2
    assert needs_answer(retried)


def test_reservations_by_other_accepted_assignments():
    from fedcare.site.assignments import reserved_gpus

    others = []
    for name, phase, need in (("a", "Accepted", 1), ("b", "Running", 2), ("c", "Rejected", 8), ("d", None, 8)):
        ra = copy.deepcopy(RA)
        ra["metadata"]["name"] = name
        ra["spec"]["training"]["gpusPerSite"] = need
        if phase:
            ra["status"] = {"phase": phase}
        others.append(ra)
    assert reserved_gpus(others, besides="r1-rouen") == 3
    assert reserved_gpus(others, besides="b") == 1
    ok, reason, msg = decide("rouen", RA, free_gpus=4, reserved=3)
    assert not ok and msg == "2 GPU(s) needed, 1 healthy and free (3 reserved by accepted assignments)"
    assert decide("rouen", RA, free_gpus=5, reserved=3)[0] is True


def test_rejects_when_gpu_ready_is_unknown_even_with_free_gpus():
    ok, reason, msg = decide("rouen", RA, free_gpus=4, gpu_ready="Unknown")
    assert not ok and getattr(reason, "value", reason) == "InsufficientGPU" and "GPUReady is Unknown" in msg
    cpu = copy.deepcopy(RA)
    cpu["spec"]["training"]["gpusPerSite"] = 0
    assert decide("rouen", cpu, free_gpus=None, gpu_ready="Unknown")[0] is True   # CPU work needs no GPU
