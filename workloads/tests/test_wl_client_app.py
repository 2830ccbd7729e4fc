"""The ClientApp's Message contract, called directly as flwr-clientapp would."""

import re

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


def test_data_path_outside_the_mount_is_refused_with_site_name(federation, initial, tmp_path, caplog):
    ctx = context(federation, "site-a", **{"data-root": str(tmp_path)})
    with pytest.raises(client_app.SiteFailure, match=r"site=site-a: DatasetError: .*outside the data mount") as err:
        client_app.app(message(initial), ctx)
    # What leaves the site names the problem and a site-local reference, no path;
    # the site's own log has the full detail under the same reference.
    msg = str(err.value)
    assert str(tmp_path) not in msg and str(federation) not in msg
    ref = re.search(r"\[ref=([0-9a-f]{8}), see the site log\]", msg).group(1)
    assert f"ref={ref}" in caplog.text and str(tmp_path) in caplog.text


def test_dataset_errors_leaving_the_site_carry_no_paths_listings_or_row_ids(tmp_path, initial, caplog):
    root = tmp_path / "data"
    site = root / "site-a"
    (site / "images").mkdir(parents=True)
    (site / "images" / "MRN-0042.png").write_bytes(b"not a png")
    (site / "labels.csv").write_text("id,label,split\nMRN-0042,normal,train\nMRN-0043,normal,train\nMRN-0044,sick,val\n")
    ctx = context(root, "site-a")
    with pytest.raises(client_app.SiteFailure) as err:
        client_app.app(message(initial), ctx)
    msg = str(err.value)
    assert "MRN" not in msg and str(tmp_path) not in msg and "images/" not in msg
    assert "labels.csv line 4: unknown label" in msg and "labels.csv line 3: image not found" in msg
    assert "MRN-0043" in caplog.text  # the hospital's own log keeps the detail
    # No listing either when labels.csv is missing.
    (site / "labels.csv").unlink()
    with pytest.raises(client_app.SiteFailure) as err:
        client_app.app(message(initial), ctx)
    assert "labels.csv is missing" in str(err.value) and "images" not in str(err.value)


def test_wrong_model_shape_is_refused(federation, initial):
    bad = {**initial, "head.weight": np.zeros((3, 7), np.float32)}
    with pytest.raises(client_app.SiteFailure, match="array 'head.weight' is float32\\[3, 7\\]"):
        client_app.app(message(bad), context(federation))


def test_metrics_leave_the_site_coarsened(federation, initial):
    reply = client_app.app(message(initial), context(federation))
    m = reply.content["metrics"]
    for key in ("train-loss", "val-loss", "val-accuracy", "val-auroc"):
        value = m[key]
        assert value == round(value, 2), (key, value)  # metric-decimals = 2
    assert 0 <= m["val-accuracy"] <= 1 and 0 <= m["val-auroc"] <= 1
    assert m["train-seconds"] == int(m["train-seconds"])
    reply = client_app.app(message(initial, MessageType.EVALUATE), context(federation, "site-b"))
    assert all(v == round(v, 2) for k, v in reply.content["metrics"].items() if k != "num-examples")


def test_coarsen_clips_and_rounds():
    from fedcare_workloads.release import coarsen

    out = coarsen(
        {"num-examples": 137, "val-accuracy": 1.2345, "val-loss": 1e9, "val-auroc": float("nan"),
         "train-images-per-second": 1234.5, "train-seconds": 12.6, "dp-epsilon": 1.23456789},
        2,
    )
    assert out["num-examples"] == 137 and out["val-accuracy"] == 1.0 and out["val-loss"] == 100.0
    assert out["train-images-per-second"] == 1200.0 and out["train-seconds"] == 13.0
    assert out["dp-epsilon"] == 1.23456789 and out["val-auroc"] != out["val-auroc"]
