"""In-place weighted averaging: correctness against float64, memory, errors."""

import numpy as np
import pytest
from fedcare_workloads.aggregation import AggregationError, WeightedAverager
from fedcare_workloads.records import arrays_to_record, record_views
from flwr.app import MetricRecord, RecordDict
from flwr.serverapp.strategy.strategy_utils import aggregate_arrayrecords
from hypothesis import given, settings
from hypothesis import strategies as st


def reference(updates, weights):
    w = np.asarray(weights, np.float64) / np.sum(weights)
    return {k: sum(wi * u[k].astype(np.float64) for wi, u in zip(w, updates, strict=True)) for k in updates[0]}


@settings(max_examples=30, deadline=None)
@given(
    n_sites=st.integers(1, 6),
    sizes=st.lists(st.integers(1, 300), min_size=1, max_size=4),
    block=st.sampled_from([7, 64, 1 << 18]),
    seed=st.integers(0, 2**16),
)
def test_matches_float64_reference(n_sites, sizes, block, seed):
    rng = np.random.default_rng(seed)
    updates = [
        {f"a{i}": rng.standard_normal(s).astype(np.float32) for i, s in enumerate(sizes)} for _ in range(n_sites)
    ]
    weights = list(rng.integers(1, 500, size=n_sites))
    out = WeightedAverager(updates[0], block_elems=block).average(updates, weights)
    ref = reference(updates, weights)
    for k in ref:
        assert out[k].dtype == np.float32
        np.testing.assert_allclose(out[k], ref[k], rtol=1e-5, atol=1e-6)


def test_agrees_with_flwr_fedavg_on_message_views():
    rng = np.random.default_rng(0)
    updates = [
        {"w": rng.standard_normal((4, 5)).astype(np.float32), "b": rng.standard_normal(5).astype(np.float32)}
        for _ in range(3)
    ]
    weights = [10, 30, 60]
    records = [
        RecordDict({"arrays": arrays_to_record(u), "metrics": MetricRecord({"num-examples": w})})
        for u, w in zip(updates, weights, strict=True)
    ]
    flwr_out = aggregate_arrayrecords(records, "num-examples")
    ours = WeightedAverager(updates[0]).average([record_views(r["arrays"]) for r in records], weights)
    for k in ours:
        np.testing.assert_allclose(ours[k], flwr_out[k].numpy(), rtol=1e-6)


def test_results_live_in_one_preallocated_buffer_reused_across_rounds():
    ref = {"w": np.zeros((100, 10), np.float32), "b": np.zeros(10, np.float32)}
    agg = WeightedAverager(ref)
    assert agg.nbytes == (1000 + 10) * 4  # one model, whatever the number of sites
    ups = [{k: np.full_like(v, i) for k, v in ref.items()} for i in range(1, 4)]
    first = agg.average(ups, [1, 1, 1])
    assert np.all(first["w"] == 2.0)
    buffer_ids = {id(agg._buffer)}
    second = agg.average(ups, [0, 0, 1])
    assert np.all(second["w"] == 3.0) and {id(agg._buffer)} == buffer_ids
    assert np.shares_memory(first["w"], second["w"])


@pytest.mark.parametrize(
    ("updates", "weights", "message"),
    [
        ([], [], "no updates"),
        ([{"w": np.zeros(3, np.float32)}], [1, 2], "1 updates but 2 weights"),
        ([{"w": np.zeros(3, np.float32)}], [-1], "weights must be"),
        ([{"w": np.zeros(3, np.float32)}], [0], "weights must be"),
        ([{"v": np.zeros(3, np.float32)}], [1], "different array names"),
        ([{"w": np.zeros(4, np.float32)}], [1], "has shape"),
    ],
)
def test_errors(updates, weights, message):
    agg = WeightedAverager({"w": np.zeros(3, np.float32)})
    with pytest.raises(AggregationError, match=message):
        agg.average(updates, weights)


def test_integer_arrays_are_refused():
    with pytest.raises(AggregationError, match="only floating-point"):
        WeightedAverager({"steps": np.zeros(1, np.int64)})
