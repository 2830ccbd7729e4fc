"""The ServerApp does not trust self-reports: weights capped, update norms bounded,
site identity from the operator's node table, not from the reply."""

import hashlib
import json

import numpy as np
import pytest
from fedcare_workloads.artifacts import load_safetensors
from fedcare_workloads.hashing import arrays_sha256
from fedcare_workloads.server_app import run_federation
from fedcare_workloads.settings import ConfigError, RunSettings
from fedcare_workloads.trust import TrustPolicy, key_fingerprint
from flwr.app import Array, ArrayRecord
from wl_helpers import InProcessGrid, Node, NodeInfoStub, node_config, run_client, run_config

SITES = ("site-a", "site-b", "site-c")


def grid_for(federation, cfg):
    return InProcessGrid([Node(100 + i, node_config(federation, s), cfg) for i, s in enumerate(SITES)])


def read(out):
    return json.loads((out / "provenance.json").read_text()), json.loads((out / "model-card.json").read_text())


def round_models(out):
    prov = json.loads((out / "provenance.json").read_text())
    return [load_safetensors(out / r["global_model_file"])[0] for r in prov["rounds"]]


def rehash(reply, arrays):
    reply.content["arrays"] = ArrayRecord({k: Array(np.ascontiguousarray(v)) for k, v in arrays.items()})
    reply.content["site"]["update-sha256"] = arrays_sha256(arrays)


def test_a_site_reporting_a_billion_examples_is_capped_at_what_it_registered(federation, tmp_path):
    out = tmp_path / "out"
    cfg = run_config(out, **{"num-server-rounds": 1, "registered-examples": "site-a=40,site-b=40,site-c=40"})
    grid = grid_for(federation, cfg)
    sent = {}

    def inflate(msg, ctx):
        reply = run_client(msg, ctx)
        reply.content["metrics"]["num-examples"] = 10**9
        return reply

    def keep(node_id):
        def behaviour(msg, ctx):
            reply = run_client(msg, ctx)
            sent[node_id] = {k: v.numpy().copy() for k, v in reply.content["arrays"].items()}
            sent[f"n{node_id}"] = reply.content["metrics"]["num-examples"]
            return reply

        return behaviour

    grid.nodes[100].behaviour = keep(100)
    grid.nodes[101].behaviour = keep(101)

    def inflate_and_keep(msg, ctx):
        reply = inflate(msg, ctx)
        sent[102] = {k: v.numpy().copy() for k, v in reply.content["arrays"].items()}
        return reply

    grid.nodes[102].behaviour = inflate_and_keep
    run_federation(grid, RunSettings.from_run_config(cfg))
    prov, card = read(out)
    site_c = prov["rounds"][1]["sites"]["site-c"]
    assert site_c["num_examples_reported"] == 10**9 and site_c["num_examples"] == 40
    # The global model is the average with the capped weights, not one dominated by site-c.
    wa, wb, wc = min(sent["n100"], 40), min(sent["n101"], 40), 40
    final = round_models(out)[-1]
    for k, v in final.items():
        expected = (wa * sent[100][k] + wb * sent[101][k] + wc * sent[102][k]) / (wa + wb + wc)
        np.testing.assert_allclose(v, expected, rtol=1e-5, atol=1e-6)
    assert card["training"]["registered_examples"] == {"site-a": 40, "site-b": 40, "site-c": 40}


def test_hard_cap_applies_without_a_registered_size(federation, tmp_path):
    out = tmp_path / "out"
    cfg = run_config(out, **{"num-server-rounds": 1, "max-examples-per-site": 100})
    grid = grid_for(federation, cfg)

    def inflate(msg, ctx):
        reply = run_client(msg, ctx)
        reply.content["metrics"]["num-examples"] = 10**9
        return reply

    grid.nodes[101].behaviour = inflate
    run_federation(grid, RunSettings.from_run_config(cfg))
    prov, _ = read(out)
    assert prov["rounds"][1]["sites"]["site-b"]["num_examples"] == 100


def test_an_update_with_a_huge_norm_is_clipped_and_recorded(federation, tmp_path):
    out = tmp_path / "out"
    cfg = run_config(out, **{"num-server-rounds": 1, "max-update-norm": 5.0})
    grid = grid_for(federation, cfg)

    def poison(msg, ctx):
        reply = run_client(msg, ctx)
        rehash(reply, {k: v.numpy() + np.float32(1e4) for k, v in reply.content["arrays"].items()})
        return reply

    grid.nodes[102].behaviour = poison
    run_federation(grid, RunSettings.from_run_config(cfg))
    prov, card = read(out)
    c = prov["rounds"][1]["sites"]["site-c"]
    assert c["status"] == "ok" and c["update_clipped"] is True and c["update_norm"] > 1e6
    assert all(prov["rounds"][1]["sites"][s]["update_norm"] < 5.0 for s in ("site-a", "site-b"))
    g0, g1 = round_models(out)
    moved = np.sqrt(sum(float(np.sum((g1[k].astype(np.float64) - g0[k]) ** 2)) for k in g0))
    assert moved <= 5.0 + 1e-3  # an average of updates each within 5 of the global model
    assert card["training"]["max_update_norm"] == 5.0
    assert card["privacy"]["released_metrics"]["decimals"] == 2  # the model card says how metrics left sites


def test_site_identity_comes_from_the_operator_table_not_the_payload(federation, tmp_path):
    out = tmp_path / "out"
    cfg = run_config(
        out,
        **{"num-server-rounds": 1, "min-train-nodes": 1, "site-identities": "site-a=node:100,site-b=node:101"},
    )
    grid = grid_for(federation, cfg)

    def impersonate(msg, ctx):  # node 101 (site-b) says it is site-a
        reply = run_client(msg, ctx)
        reply.content["site"]["site"] = "site-a"
        return reply

    grid.nodes[101].behaviour = impersonate
    run_federation(grid, RunSettings.from_run_config(cfg))
    prov, card = read(out)
    sites = prov["rounds"][1]["sites"]
    assert sites["site-a"]["status"] == "ok" and sites["site-a"]["node_id"] == "100"
    assert sites["site-a"]["identity"] == "site-identities"
    assert sites["site-b"]["status"] == "failed" and "names another site" in sites["site-b"]["error"]
    # Node 102 is in nobody's table: its update is not used whatever it calls itself.
    assert sites["node-102"]["error"] == "rejected: node 102 is not in run-config site-identities"
    assert card["sites"] == ["site-a"]


def test_error_text_cannot_name_a_site_when_the_table_is_set(federation, tmp_path):
    out = tmp_path / "out"
    cfg = run_config(
        out, **{"num-server-rounds": 1, "min-train-nodes": 1, "site-identities": "site-a=node:100,site-b=node:101"}
    )
    grid = grid_for(federation, cfg)
    from flwr.app import Error, Message

    grid.nodes[101].behaviour = lambda msg, ctx: Message(Error(code=2, reason="site=site-a: Boom: x"), reply_to=msg)
    run_federation(grid, RunSettings.from_run_config(cfg))
    prov, _ = read(out)
    sites = prov["rounds"][1]["sites"]
    assert sites["site-b"]["status"] == "failed" and sites["site-b"]["reason"] == "Boom"
    assert sites["site-a"]["status"] == "ok"


def test_registered_public_keys_map_to_sites():
    key_a, key_b = b"-----public key A-----", b"-----public key B-----"
    fp = key_fingerprint(key_a)
    assert fp == "key:" + hashlib.sha256(key_a).hexdigest()
    run = RunSettings.from_run_config(run_config(**{"site-identities": f"site-a={fp},site-c=node:7"}))
    policy = TrustPolicy(run.site_identities)
    info_a, info_b = NodeInfoStub(11), NodeInfoStub(12)
    info_a.public_key, info_b.public_key = key_a, key_b
    assert policy.names_from_grid([info_a, info_b, NodeInfoStub(7)]) == {11: "site-a", 7: "site-c"}


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("site-identities", "site-a=10", "must be node:<node id> or key:"),
        ("site-identities", "site-a=node:1,site-a=node:2", "listed twice"),
        ("registered-examples", "site-a=-3", "must be a positive integer"),
        ("registered-examples", "site-a", "must look like site=value"),
        ("max-update-norm", 0.0, "max-update-norm"),
    ],
)
def test_trust_settings_are_validated(key, value, message):
    with pytest.raises(ConfigError, match=message):
        RunSettings.from_run_config(run_config(**{key: value}))
