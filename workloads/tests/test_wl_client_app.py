"""The ClientApp's Message contract, called directly as flwr-clientapp would."""

import numpy as np
import pytest
from fedcare_workloads import client_app
from fedcare_workloads.hashing import arrays_sha256
from fedcare_workloads.model import ModelSpec, build_model
from fedcare_workloads.records import arrays_to_record, record_views, state_to_arrays
from flwr.app import ConfigRecord, Context, Message, MessageType, RecordDict
from wl_helpers import InProcessGrid, node_config, run_config


@pytest.fixture
def initial():
    InProcessGrid([])  # sets flwr's TaskIdentity, which Message() needs
    return state_to_arrays(build_model(ModelSpec("small", 3, 32), seed=0))


def message(arrays, kind=MessageType.TRAIN, **config):
    content = RecordDict({"arrays": arrays_to_record(arrays), "config": ConfigRecord({"server-round": 1, **config})})
    msg = Message(content=content, dst_node_id=5, message_type=kind)
    msg.metadata.__dict__["_message_id"] = msg.object_id
    return msg


def context(federation, site="site-a", **node_over):
    return Context(
        run_id=1,
        node_id=5,
        node_config=node_config(federation, site, **node_over),
        state=RecordDict(),
        run_config=run_config(),
    )


def test_train_reply_carries_weights_metrics_and_a_verifiable_hash(federation, initial):
    reply = client_app.app(message(initial, **{"global-arrays-sha256": arrays_sha256(initial)}), context(federation))
    site = reply.content["site"]
    metrics = reply.content["metrics"]
    views = record_views(reply.content["arrays"])
    assert site["site"] == "site-a" and site["hash-format"] == "fedcare-arrays/v1"
    assert site["update-sha256"] == arrays_sha256(views) and site["base-sha256"] == arrays_sha256(initial)
    assert metrics["num-examples"] == 42  # 70 % of 60 images
    assert {"train-loss", "val-loss", "val-accuracy", "val-auroc"} <= set(metrics)
    assert "dp-epsilon" not in metrics
    assert views.keys() == initial.keys() and any(not np.array_equal(views[k], initial[k]) for k in initial)


def test_evaluate_reply(federation, initial):
    reply = client_app.app(message(initial, MessageType.EVALUATE), context(federation, "site-b"))
    m = reply.content["metrics"]
    assert m["num-examples"] == 9 and set(m) == {"num-examples", "loss", "accuracy", "auroc"}
    assert reply.content["site"]["site"] == "site-b"


def test_model_not_matching_the_announced_hash_is_refused(federation, initial):
    with pytest.raises(client_app.SiteFailure, match=r"site=site-a: ModelIntegrityError: .*refusing to train"):
        client_app.app(message(initial, **{"global-arrays-sha256": "0" * 64}), context(federation))


def test_data_path_outside_the_mount_is_refused_with_site_name(federation, initial, tmp_path):
    ctx = context(federation, "site-a", **{"data-root": str(tmp_path)})
    with pytest.raises(client_app.SiteFailure, match=r"site=site-a: DatasetError: data-path .* outside the data mount"):
        client_app.app(message(initial), ctx)


def test_wrong_model_shape_is_refused(federation, initial):
    bad = {**initial, "head.weight": np.zeros((3, 7), np.float32)}
    with pytest.raises(client_app.SiteFailure, match="array 'head.weight' is float32\\[3, 7\\]"):
        client_app.app(message(bad), context(federation))
