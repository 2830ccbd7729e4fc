"""The site's privacy settings reach its training pods (never from the round), the ClientApp's
reports are read back aggregate-safe only, and the hub passes registered examples per site."""

from __future__ import annotations

import pytest

from fedcare.hub import run_trust
from fedcare.hub.round_scheduler import Reconciler
from fedcare.site import site_reports
from fedcare.site import training_pod as tp
from fedcare.site.privacy import LEDGER_MOUNT, PrivacyConfigError, SitePrivacy
from fedcare_workloads import site_report
from tests.unit.test_round_execution_units import NODE, assignment


def test_the_site_budget_and_ledger_reach_the_pod_and_the_round_cannot_override_them():
    ra = assignment()
    ra["spec"]["nodeConfig"] = {"privacy-budget-epsilon": "1e9", "privacy-ledger": "/tmp/elsewhere",
                                "dataset-id": "other", "extra": "kept"}
    privacy = SitePrivacy(2.5, 1e-6, "ledger-rouen", "us-2024")
    pod = tp.pod_manifest(ra, NODE, site="rouen", namespace="fl", retry=0, insecure=True, privacy=privacy)
    args = pod["spec"]["containers"][0]["args"]
    cfg = args[args.index("--node-config") + 1]
    assert f'privacy-ledger="{LEDGER_MOUNT}"' in cfg and "privacy-budget-epsilon=2.5" in cfg
    assert "privacy-budget-delta=1e-06" in cfg and 'dataset-id="us-2024"' in cfg and 'extra="kept"' in cfg
    # what the ClientApp reads from it (flwr parses --node-config as TOML): typed, as it expects
    from flwr.common.config import parse_config_args
    from fedcare_workloads.settings import NodeSettings
    node = NodeSettings.from_node_config(parse_config_args([cfg]))
    assert (node.privacy_ledger, node.privacy_budget_epsilon, node.privacy_budget_delta, node.dataset_id) == \
        (LEDGER_MOUNT, 2.5, 1e-06, "us-2024")
    assert "1e9" not in cfg and "/tmp/elsewhere" not in cfg and '"other"' not in cfg
    vols = {v["name"]: v for v in pod["spec"]["volumes"]}
    assert vols["privacy-ledger"]["persistentVolumeClaim"] == {"claimName": "ledger-rouen"}   # read-write
    assert {"name": "privacy-ledger", "mountPath": LEDGER_MOUNT} in pod["spec"]["containers"][0]["volumeMounts"]
    # no ledger configured: nothing mounted, no privacy keys (a DP round is then refused by the ClientApp)
    bare = tp.pod_manifest(ra, NODE, site="rouen", namespace="fl", retry=0, insecure=True, privacy=SitePrivacy())
    assert "privacy-ledger" not in str(bare)


@pytest.mark.parametrize("kwargs, field", [
    ({"budget_epsilon": -1.0, "ledger_claim": "l"}, "--privacy-budget-epsilon"),
    ({"budget_epsilon": float("nan"), "ledger_claim": "l"}, "--privacy-budget-epsilon"),
    ({"budget_delta": 1.5}, "--privacy-budget-delta"),
    ({"ledger_claim": "Not_A_Claim"}, "--privacy-ledger-claim"),
    ({"ledger_claim": "l", "dataset_id": "../x"}, "--dataset-id"),
    ({"budget_epsilon": 3.0}, "needs --privacy-ledger-claim"),
])
def test_bad_site_privacy_settings_name_the_flag(kwargs, field):
    with pytest.raises(PrivacyConfigError, match=field.replace("-", r"\-")):
        SitePrivacy(**kwargs)


def test_reports_are_read_back_from_the_log_with_only_aggregate_safe_values(capsys):
    site_report.train(1, 40, {"train-loss": 0.91, "val-accuracy": 0.5, "train-seconds": 3.0})
    site_report.train(2, 40, {"train-loss": 0.8123456, "val-accuracy": 0.625, "val-auroc": float("nan"),
                              "dp-epsilon-total": 1.23456})
    printed = capsys.readouterr().out
    # what else a log may hold (paths, names, forged lines) never makes it into a report
    noise = ("INFO : loading /data/rouen/patient-DOE^JOHN/1.png\n"
             'FEDCARE-SITE-REPORT {"v": 1, "kind": "train", "round": 1, "examples": 5, '
             '"metrics": {"patient": "DOE^JOHN", "train-loss": "x"}, "path": "/data/x"}\n'
             'FEDCARE-SITE-REPORT {"v": 1, "kind": "refused", "round": 1, "reason": "DOE^JOHN"}\n'
             "FEDCARE-SITE-REPORT not json\n")
    report = site_reports.parse(noise + printed)
    assert report.last_round == 2 and report.examples == 40 and not report.refused
    assert report.metrics == [{"name": "train-loss", "value": "0.8123"}, {"name": "val-accuracy", "value": "0.625"},
                              {"name": "dp-epsilon-total", "value": "1.235"}]
    assert "DOE" not in str(report.status_fields()) and "/data" not in str(report.status_fields())
    assert report.status_fields() == {"lastServerRound": 2, "numExamples": 40, "metrics": report.metrics}
    assert site_reports.parse(noise).last_round == 1 and site_reports.parse(noise).metrics == []


def test_a_refusal_in_the_log_fails_the_assignment_with_its_reason(capsys):
    site_report.refused(3, "PrivacyBudgetExhausted")
    report = site_reports.parse(capsys.readouterr().out)
    assert report.refused == "PrivacyBudgetExhausted" and report.refused_round == 3
    assert report.refusal_message().startswith("the site refused server round 3: its privacy budget would be "
                                               "exceeded (PrivacyBudgetExhausted)")


def test_registered_examples_come_from_every_participants_dataset_size():
    nodes = [{"metadata": {"name": "rouen"}, "spec": {"dataset": {"claimName": "d", "size": 120}}},
             {"metadata": {"name": "lyon"}, "spec": {"dataset": {"claimName": "d", "size": 80}}},
             {"metadata": {"name": "nice"}, "spec": {"dataset": {"claimName": "d"}}}]
    assert run_trust.registered_examples(nodes, ["rouen", "lyon"]) == ("rouen=120,lyon=80", [])
    # one participant without a size: the key is left out (the ServerApp would refuse to weight it)
    assert run_trust.registered_examples(nodes, ["rouen", "nice"]) == ("", ["nice"])


def test_the_hub_keeps_the_sites_reason_code_for_a_lost_participant():
    p = {"node": "rouen", "state": "Running", "reason": ""}
    ra = {"spec": {"attempt": 1}, "status": {"phase": "Failed", "attempt": 1, "message": "the site refused ...",
                                             "conditions": [{"type": "Ready", "status": "False",
                                                             "reason": "PrivacyBudgetExhausted"}]}}
    Reconciler._merge_assignment(p, ra)
    assert p["state"] == "Failed" and p["reason"] == "PrivacyBudgetExhausted: the site refused ..."


def test_a_refusing_sites_pod_drains_briefly_then_goes():
    import datetime as dt

    from fedcare.site.work import REFUSAL_DRAIN_SECONDS, draining
    now = dt.datetime(2026, 12, 1, 8, 0, tzinfo=dt.UTC)
    ra = {"metadata": {"name": "a"}, "status": {"phase": "Failed", "conditions": [
        {"type": "Ready", "status": "False", "reason": "PrivacyBudgetExhausted",
         "lastTransitionTime": "2026-12-01T07:59:55Z"}]}}
    assert draining(ra, now)
    assert not draining(ra, now + dt.timedelta(seconds=REFUSAL_DRAIN_SECONDS))
    ra["status"]["conditions"][0]["reason"] = "PodFailed"
    assert not draining(ra, now)
