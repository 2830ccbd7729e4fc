"""A ModelRelease created by the round controller (pvc://<artifact claim>/…) is resolved in the
hub's artifact store, verified, signed, anchored on a real anvil, and passes `fedcare verify`."""

from __future__ import annotations

import asyncio
import copy
import json
import pathlib
import re

import yaml

from fedcare import cli
from fedcare.api.resources import API_VERSION
from fedcare.api.validation import parse
from fedcare.hub import round_progress as progress
from fedcare.hub.aggregator import AggregatorConfig
from fedcare.hub.flower_runs import FlowerCLI
from fedcare.hub.round_scheduler import Reconciler, RoundConfig
from fedcare.integrations.kube import Ref
from tests.integration.test_release_pipeline import condition, config
from tests.support.releases import make_model

ROOT = pathlib.Path(__file__).resolve().parents[2]
ROUND = yaml.safe_load((ROOT / "examples" / "federatedround-ultrasound.yaml").read_text())
ROUNDS = Ref(API_VERSION, "federatedrounds", "default")
CLAIM = "fedcare-artifacts"


def round_config(store: pathlib.Path) -> RoundConfig:
    return RoundConfig(flower=FlowerCLI(store.parent / "flwr-home"), app="",
                       aggregator=AggregatorConfig(artifact_dir=str(store), artifact_claim=CLAIM))


async def finished_round(api, store: pathlib.Path) -> tuple[dict, progress.Result]:
    """A round that succeeded, its model in the artifact store where its ServerApp writes it."""
    body = await api.create(ROUNDS, copy.deepcopy(ROUND))
    md = body["metadata"]
    folder = progress.out_dir(str(store), md["namespace"], md["name"], md["uid"], 1)
    make_model(folder)
    result = progress.read_result(folder, CLAIM, str(store))
    status = {"phase": "Succeeded", "attempt": 1, "cleanedUp": True,
              "result": {"storageUri": result.storage_uri, "digest": result.digest},
              "conditions": [{"type": "Complete", "status": "True", "reason": "RunSucceeded",
                              "message": "written by the test as the round controller does",
                              "lastTransitionTime": "2026-01-01T00:00:00Z"}]}
    body = await api.patch(Ref(API_VERSION, "federatedrounds", "default", md["name"]), {"status": status},
                           status=True)
    return body, result


async def test_round_created_release_resolves_pvc_and_verifies(hub, api, anvil, dev_key, registry, tmp_path,
                                                              capsys):
    store = tmp_path / "artifacts"
    rc = round_config(store)
    cfg = config(anvil, dev_key, chain_id=anvil.chain_id, contract_address=registry, confirmations=1)
    async with hub(release=cfg, round_config=rc):
        body, result = await finished_round(api, store)
        assert result.storage_uri.startswith(f"pvc://{CLAIM}/default/")
        sites = [{"site": s, "status": "ok"} for s in ("rouen", "lyon", "lille")]
        name = await Reconciler(api, rc).release(body, parse("FederatedRound", body), result,
                                                 {"participants": [], "serverRounds": [{"sites": sites}]})
        obj = await condition(api, name, "Anchored", timeout=60)
    st = obj["status"]
    assert obj["spec"]["artifact"]["storageUri"] == result.storage_uri
    assert st["phase"] == "Anchored" and st["anchor"]["txHash"].startswith("0x")
    model = store / result.storage_uri.removeprefix(f"pvc://{CLAIM}/")
    assert (model.parent / "release.json").is_file() and (model.parent / "provenance-proofs.json").is_file()
    code = await asyncio.to_thread(cli.main, ["verify", str(model), "--rpc", anvil.url, "--contract", registry])
    out = re.sub(r"\s+", " ", capsys.readouterr().out)
    assert code == 0, out
    assert "VERIFIED" in out


async def test_pvc_uris_that_escape_or_name_another_claim_are_refused(hub, api, anvil, dev_key, registry,
                                                                      tmp_path):
    from tests.support.releases import release
    store = tmp_path / "artifacts"
    path, digest = make_model(store / "default" / "m")
    (tmp_path / "outside").mkdir()
    (store / "default" / "link").symlink_to(tmp_path / "outside")
    cases = {"dots": (f"pvc://{CLAIM}/default/../../outside/model.safetensors", "contains '..'"),
             "other": ("pvc://someone-elses/default/m/model.safetensors", "does not mount claim 'someone-elses'"),
             "link": (f"pvc://{CLAIM}/default/link/model.safetensors", "leads out of the claim's mount"),
             "ok": (f"pvc://{CLAIM}/default/m/model.safetensors", "")}
    async with hub(release=config(anvil, dev_key), round_config=round_config(store)):
        for name, (uri, _) in cases.items():
            body = release(name, path, digest, anchor=(31337, registry, 1))
            body["spec"]["artifact"]["storageUri"] = uri
            await api.create(Ref(API_VERSION, "modelreleases", "default"), body)
        for name, (_, why) in cases.items():
            if not why:
                await condition(api, name, "Anchored")
                continue
            obj = await condition(api, name, "Verified", "False", reason="UnsupportedURI")
            msg = next(c for c in obj["status"]["conditions"] if c["type"] == "Verified")["message"]
            assert why in msg and "spec.artifact.storageUri" in msg, msg
            assert "anchor" not in obj["status"]
    assert json.loads((path.parent / "release.json").read_text())["chain"]["txHash"]
