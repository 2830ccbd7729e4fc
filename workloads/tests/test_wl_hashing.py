"""fedcare-arrays/v1 digest, zero-copy record views, safetensors artifacts."""

import hashlib
import json

import numpy as np
from fedcare_workloads.artifacts import load_safetensors, safetensors_bytes, write_atomic
from fedcare_workloads.hashing import arrays_sha256, file_sha256, header_bytes
from fedcare_workloads.records import arrays_to_record, npy_view, record_views
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp


def sample():
    return {"w": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.array([1.5, -2.0], dtype=np.float32)}


def test_digest_matches_its_written_definition():
    arrays = sample()
    head = json.dumps(
        {"arrays": [["b", "<f4", [2]], ["w", "<f4", [2, 3]]], "format": "fedcare-arrays/v1"},
        sort_keys=True,
        separators=(",", ":"),
    ).encode()
    assert header_bytes(arrays) == head
    expected = hashlib.sha256(
        len(head).to_bytes(8, "little") + head + arrays["b"].tobytes() + arrays["w"].tobytes()
    ).hexdigest()
    assert arrays_sha256(arrays) == expected


def test_digest_ignores_insertion_order_and_byte_order_but_not_content():
    a = sample()
    reordered = {"w": a["w"], "b": a["b"]}
    big_endian = {k: v.astype(">f4") for k, v in a.items()}
    assert arrays_sha256(a) == arrays_sha256(reordered) == arrays_sha256(big_endian)
    changed_value = {**a, "b": np.array([1.5, -2.0001], np.float32)}
    changed_shape = {**a, "w": a["w"].reshape(3, 2)}
    changed_dtype = {**a, "b": a["b"].astype(np.float64)}
    renamed = {"w": a["w"], "bias": a["b"]}
    digests = {arrays_sha256(x) for x in (a, changed_value, changed_shape, changed_dtype, renamed)}
    assert len(digests) == 5


@settings(max_examples=40, deadline=None)
@given(
    st.dictionaries(
        st.text("abcdefgh._", min_size=1, max_size=8),
        hnp.arrays(
            st.sampled_from([np.float32, np.float64, np.float16]), hnp.array_shapes(min_dims=0, max_dims=3, max_side=5)
        ),
        min_size=1,
        max_size=4,
    )
)
def test_digest_survives_arrayrecord_and_safetensors_roundtrips(arrays):
    views = record_views(arrays_to_record(arrays))
    for name, view in views.items():
        assert not view.flags.writeable
        np.testing.assert_array_equal(view, arrays[name])
    reloaded, _ = load_safetensors_bytes(safetensors_bytes(arrays))
    assert arrays_sha256(views) == arrays_sha256(arrays) == arrays_sha256(reloaded)


def load_safetensors_bytes(data: bytes):
    from safetensors.numpy import load

    return load(data), None


def test_npy_view_is_zero_copy():
    record = arrays_to_record({"x": np.ones(1000, np.float32)})
    arr = record["x"]
    view = npy_view(arr)
    assert view.base is not None and np.shares_memory(view, np.frombuffer(arr.data, np.uint8))


def test_safetensors_bytes_are_reproducible_and_carry_metadata(tmp_path):
    meta = {"z": 1, "a": [1, 2], "m": {"k": "v"}, "q": "x", "c": 3.5}
    data = safetensors_bytes(sample(), meta)
    assert data == safetensors_bytes(sample(), dict(reversed(list(meta.items()))))
    sha = write_atomic(tmp_path / "m.safetensors", data)
    assert sha == file_sha256(tmp_path / "m.safetensors") == hashlib.sha256(data).hexdigest()
    arrays, got = load_safetensors(tmp_path / "m.safetensors")
    assert got == meta and arrays_sha256(arrays) == arrays_sha256(sample())
    assert not list(tmp_path.glob(".m.safetensors.*"))  # no temp file left behind
