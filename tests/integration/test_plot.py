"""`fedcare plot ROUND` against the emulated API: a PNG from the round's and its assignments' status."""

from __future__ import annotations

import pytest
from PIL import Image

from fedcare import plot
from fedcare.api.resources import API_VERSION, site_namespace
from fedcare.cli import main
from fedcare.integrations.kube import Ref
from fedcare.sandbox.kubeconfig import write_kubeconfig
from tests.integration.test_metrics import example

pytest.importorskip("matplotlib", reason="pip install -c constraints.txt 'fedcare[plot]'")


async def _round_with_sites(api):
    rnd = await api.create(Ref(API_VERSION, "federatedrounds", "default"), example("federatedround-ultrasound.yaml"))
    name = rnd["metadata"]["name"]
    for site in ("rouen", "lyon"):
        await api.create(Ref("v1", "namespaces"), {"apiVersion": "v1", "kind": "Namespace",
                                                   "metadata": {"name": site_namespace(site)}})
        ra = await api.create(Ref(API_VERSION, "roundassignments", site_namespace(site)), {
            "apiVersion": API_VERSION, "kind": "RoundAssignment", "metadata": {"name": f"{name}-{site}"},
            "spec": {"roundRef": {"namespace": "default", "name": name}, "nodeName": site,
                     "training": {"image": rnd["spec"]["training"]["image"], "gpusPerSite": 1}}})
        # the status a site's agent writes after training server round 2 (as the execution issue will)
        await api.patch(Ref(API_VERSION, "roundassignments", site_namespace(site), ra["metadata"]["name"]),
                        {"status": {"phase": "Running", "lastServerRound": 2, "numExamples": 120 if site == "rouen"
                                    else 80, "metrics": [{"name": "loss", "value": "0.41" if site == "rouen"
                                                          else "0.52"}, {"name": "accuracy", "value": "0.83"}]}},
                        status=True)
    return rnd


def test_rows_come_from_the_assignments():
    rnd = {"metadata": {"name": "r", "namespace": "default"}, "status": {"participants": [
        {"node": "lille", "state": "Selected", "lastRound": 0}]}}
    ra = {"spec": {"roundRef": {"name": "r"}, "nodeName": "rouen"}, "metadata": {"namespace": "fedcare-site-rouen"},
          "status": {"phase": "Running", "lastServerRound": 3, "numExamples": 10,
                     "metrics": [{"name": "loss", "value": "0.5"}, {"name": "bad", "value": "n/a"}]}}
    other = {"spec": {"roundRef": {"name": "other"}, "nodeName": "lyon"}, "status": {}}
    rows = plot.per_site(rnd, [ra, other])
    assert [r["site"] for r in rows] == ["lille", "rouen"]
    assert rows[1] == {"site": "rouen", "state": "Running", "lastRound": 3, "examples": 10, "metrics": {"loss": 0.5}}


async def test_plot_writes_a_png_of_the_round(emulator, api, tmp_path, capsys):
    rnd = await _round_with_sites(api)
    kubeconfig = write_kubeconfig(emulator.url, tmp_path / "kubeconfig")
    out = tmp_path / "round.png"
    code = await plot.run(round_name=rnd["metadata"]["name"], namespace="default", output=str(out),
                          kubeconfig=str(kubeconfig), context=None)
    assert code == 0 and f"wrote {out}" in capsys.readouterr().out
    with Image.open(out) as img:
        assert img.format == "PNG"
        assert img.size[0] >= 4 * 420 - 10       # progress, examples, and one panel per metric (loss, accuracy)


async def test_plot_of_an_unknown_round_says_so(emulator, tmp_path, capsys):
    kubeconfig = write_kubeconfig(emulator.url, tmp_path / "kubeconfig")
    code = await plot.run(round_name="nope", namespace="default", output=str(tmp_path / "x.png"),
                          kubeconfig=str(kubeconfig), context=None)
    assert code == 1 and "FederatedRound default/nope not found" in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists()


def test_cli_parses_plot():
    from fedcare.cli import build_parser

    args = build_parser().parse_args(["plot", "r1", "-n", "ns", "-o", "x.png"])
    assert (args.round, args.namespace, args.output) == ("r1", "ns", "x.png")
    assert callable(main)
