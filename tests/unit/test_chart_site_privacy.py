"""The chart passes the hospital's privacy settings to its agent, and refuses bad ones."""

from __future__ import annotations

from fedcare.cli import build_parser
from tests.unit.test_chart import SITE, helm, only, render, render_error  # noqa: F401


def agent_args(docs):
    return only(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]["args"]


def test_privacy_settings_become_agent_flags_the_agent_accepts(helm):  # noqa: F811
    args = agent_args(render(helm, {**SITE, "site.privacy.ledgerClaim": "privacy-ledger",
                                    "site.privacy.budgetEpsilon": "8", "site.privacy.datasetId": "us-2024"}))
    i = args.index("--privacy-ledger-claim")
    assert args[i:i + 6] == ["--privacy-ledger-claim", "privacy-ledger", "--privacy-budget-epsilon", "8",
                             "--privacy-budget-delta", "1e-05"]
    assert args[args.index("--dataset-id") + 1] == "us-2024"
    parsed = build_parser().parse_args(args[args.index("agent"):])
    assert (parsed.privacy_ledger_claim, parsed.privacy_budget_epsilon, parsed.privacy_budget_delta) == \
        ("privacy-ledger", 8.0, 1e-05)
    assert "--privacy-ledger-claim" not in agent_args(render(helm, SITE))


def test_bad_privacy_values_are_refused_by_the_schema(helm):  # noqa: F811
    assert "ledgerClaim" in render_error(helm, {**SITE, "site.privacy.ledgerClaim": "Bad_Claim"})
    assert "budgetDelta" in render_error(helm, {**SITE, "site.privacy.budgetDelta": "2"})
