"""Model state <-> flwr ArrayRecord, without needless copies.

An `flwr.app.Array` holds its tensor as `np.save` bytes. `Array.numpy()` runs
`np.load` on a BytesIO, which copies the whole tensor. On the server, every
update is only read (hashed, checked, accumulated), so `npy_view` parses the
.npy header and returns a read-only `np.frombuffer` view over the message's own
bytes instead: zero copies per update.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Mapping

import numpy as np
from flwr.app import Array, ArrayRecord

_NPY_MAGIC = b"\x93NUMPY"


class ArrayFormatError(ValueError):
    """An update's arrays do not have the expected names, shapes or dtypes."""


_HEADER = re.compile(
    r"^\{'descr': '(?P<descr>[^']+)', 'fortran_order': (?P<fortran>True|False), "
    r"'shape': \((?P<shape>[0-9, ]*)\), \}\s*$"
)


def _parse_header(text: str) -> tuple[str, bool, tuple[int, ...]]:
    """The .npy header dict. np.save writes it in one fixed form, which a regex
    reads ~20x faster than ast.literal_eval (it matters for models with hundreds
    of arrays); anything else falls back to the literal parser."""
    m = _HEADER.match(text)
    if m:
        shape = tuple(int(x) for x in m["shape"].replace(" ", "").split(",") if x)
        return m["descr"], m["fortran"] == "True", shape
    header = ast.literal_eval(text)
    if not isinstance(header.get("descr"), str):
        raise ArrayFormatError("structured dtypes are not accepted")
    return header["descr"], bool(header["fortran_order"]), tuple(header["shape"])


def npy_view(array: Array) -> np.ndarray:
    """Read-only ndarray over `array.data` (no copy) for C-ordered .npy payloads."""
    data = array.data
    if array.stype != "numpy.ndarray" or not data.startswith(_NPY_MAGIC):
        raise ArrayFormatError(f"unsupported array serialization {array.stype!r}")
    major = data[6]
    if major == 1:
        hlen, start = int.from_bytes(data[8:10], "little"), 10
    elif major in (2, 3):
        hlen, start = int.from_bytes(data[8:12], "little"), 12
    else:
        raise ArrayFormatError(f"unsupported .npy version {major}")
    descr, fortran, shape = _parse_header(data[start : start + hlen].decode("latin1"))
    dtype = np.dtype(descr)
    if fortran or dtype.hasobject:
        raise ArrayFormatError("Fortran-ordered or object arrays are not accepted")
    count = int(np.prod(shape, dtype=np.int64))
    offset = start + hlen
    if len(data) - offset != count * dtype.itemsize:
        raise ArrayFormatError(f"payload holds {len(data) - offset} bytes, header announces {count * dtype.itemsize}")
    return np.frombuffer(data, dtype=dtype, count=count, offset=offset).reshape(shape)


def record_views(record: ArrayRecord) -> dict[str, np.ndarray]:
    return {name: npy_view(arr) for name, arr in record.items()}


def arrays_to_record(arrays: Mapping[str, np.ndarray]) -> ArrayRecord:
    return ArrayRecord({name: Array(np.asarray(a, order="C")) for name, a in arrays.items()})


def state_to_arrays(model) -> dict[str, np.ndarray]:
    """Model state as float32-or-native numpy arrays, in state_dict order."""
    return {k: v.detach().cpu().contiguous().numpy() for k, v in model.state_dict().items()}


def check_layout(arrays: Mapping[str, np.ndarray], reference: Mapping[str, np.ndarray], who: str) -> None:
    """Same names, shapes and dtypes as the reference (the global model)."""
    missing = sorted(set(reference) - set(arrays))
    extra = sorted(set(arrays) - set(reference))
    if missing or extra:
        raise ArrayFormatError(
            f"{who}: array names differ from the global model (missing {missing[:5]}, unexpected {extra[:5]})"
        )
    for name, ref in reference.items():
        a = arrays[name]
        if a.shape != ref.shape or a.dtype != ref.dtype:
            raise ArrayFormatError(
                f"{who}: array '{name}' is {a.dtype}{list(a.shape)}, the global model has {ref.dtype}{list(ref.shape)}"
            )


def load_arrays_into(model, arrays: Mapping[str, np.ndarray]) -> None:
    """Copy arrays into the model's tensors: one copy, straight into their memory."""
    import torch

    reference = state_to_arrays(model)
    check_layout(arrays, reference, "received model")
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if tensor.device.type == "cpu":
                tensor.numpy()[...] = arrays[name]
            else:
                tensor.copy_(torch.tensor(arrays[name]))
