"""Weighted averaging of site updates into one preallocated buffer.

flwr's `aggregate_arrayrecords` does `value.numpy() * weight` per site and
array: a full copy out of the message (np.load) plus a full temporary for the
product, then an add. Here each update is read exactly once, through a
zero-copy view of the message bytes (`records.npy_view`), and written into a
buffer allocated once per strategy:

* weights are normalised up front (all replies are known when aggregation
  starts), so no final division pass is needed;
* the output is processed in cache-sized blocks, and for each block every
  site's slice is fused-multiply-added (`torch.Tensor.add_(x, alpha=w)`, one
  pass, no temporary) while the block stays in cache. Memory traffic is then
  N reads + 1 write of the model, exactly the (N+1) x model bytes the
  benchmark counts.

Parallelism: the flat model is cut into one contiguous range per thread and
each range is run by a plain Python thread (torch releases the GIL) with
torch's own intra-op pool set to 1 for the duration. Letting torch parallelise
each block instead means one OpenMP barrier per block and site; on a busy
machine every barrier waits for a time slice, and throughput collapsed by
10-50x in measurements (2 busy cores). Small models (under PARALLEL_MIN element-updates) run
on the calling thread.

Extra memory: one model (the buffer), whatever N is.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

DEFAULT_BLOCK_ELEMS = 1 << 18  # 1 MiB of float32: fits a core's L2 with room for the inputs
PARALLEL_MIN = 1 << 24  # element-updates (params x sites) below which threads cost more than they save


class AggregationError(ValueError):
    """Updates cannot be averaged (no updates, bad weights, mismatched layout)."""


def _as_tensor(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.asarray(a, order="C").reshape(-1))


class WeightedAverager:
    """`average(updates, weights)` = sum_i w_i * x_i / sum_i w_i, per array name.

    The returned arrays are views into the averager's buffer and stay valid until
    the next call; callers that keep them across rounds must copy (serialising into
    an ArrayRecord does).
    """

    def __init__(
        self, reference: Mapping[str, np.ndarray], block_elems: int = DEFAULT_BLOCK_ELEMS, threads: int | None = None
    ) -> None:
        self.threads = max(1, threads or torch.get_num_threads())
        self.layout = {name: (tuple(a.shape), np.dtype(a.dtype)) for name, a in reference.items()}
        for name, (_, dtype) in self.layout.items():
            if dtype.kind != "f":
                raise AggregationError(f"array '{name}' has dtype {dtype}; only floating-point arrays are averaged")
        self.block_elems = int(block_elems)
        total = sum(int(np.prod(shape, dtype=np.int64)) for shape, _ in self.layout.values())
        # One flat float32 buffer for the whole model (float64 if the model is float64).
        acc_dtype = np.float64 if any(d == np.float64 for _, d in self.layout.values()) else np.float32
        self._buffer = np.empty(total, dtype=acc_dtype)
        self._views: dict[str, np.ndarray] = {}
        self._spans: list[tuple[str, int, int]] = []  # (name, start, stop) in the flat buffer
        offset = 0
        for name, (shape, _) in self.layout.items():
            n = int(np.prod(shape, dtype=np.int64))
            self._views[name] = self._buffer[offset : offset + n]
            self._spans.append((name, offset, offset + n))
            offset += n

    @property
    def nbytes(self) -> int:
        return self._buffer.nbytes

    def average(self, updates: Sequence[Mapping[str, np.ndarray]], weights: Sequence[float]) -> dict[str, np.ndarray]:
        if not updates:
            raise AggregationError("no updates to aggregate")
        if len(updates) != len(weights):
            raise AggregationError(f"{len(updates)} updates but {len(weights)} weights")
        w = np.asarray(weights, dtype=np.float64)
        if not np.all(np.isfinite(w)) or np.any(w < 0) or w.sum() <= 0:
            raise AggregationError(f"weights must be finite, >= 0 and not all 0, got {list(weights)}")
        w = w / w.sum()
        for i, upd in enumerate(updates):
            if upd.keys() != self.layout.keys():
                raise AggregationError(f"update {i} has different array names than the global model")

        srcs: dict[str, list[torch.Tensor]] = {}
        with warnings.catch_warnings():
            # Update views are read-only (they alias the message bytes); torch warns
            # about that, but they are only ever read.
            warnings.simplefilter("ignore", UserWarning)
            for name, (shape, _) in self.layout.items():
                srcs[name] = []
                for i, upd in enumerate(updates):
                    a = upd[name]
                    if a.shape != shape:
                        raise AggregationError(f"update {i}: array '{name}' has shape {a.shape}, expected {shape}")
                    srcs[name].append(_as_tensor(a))
        wl = [float(x) for x in w]
        dst = torch.from_numpy(self._buffer)
        total = self._buffer.size

        def run_range(lo: int, hi: int) -> None:
            for name, start, stop in self._spans:
                a, b = max(lo, start), min(hi, stop)
                if a < b:
                    self._accumulate(dst[a:b], [s[a - start : b - start] for s in srcs[name]], wl)

        threads = self.threads if total * len(updates) >= PARALLEL_MIN else 1
        step = -(-total // threads)
        bounds = [(i * step, min(total, (i + 1) * step)) for i in range(threads)]
        previous = torch.get_num_threads()
        torch.set_num_threads(1)  # see module docstring: no per-block OpenMP barriers
        try:
            if threads == 1:
                run_range(0, total)
            else:
                with ThreadPoolExecutor(threads, thread_name_prefix="fedcare-agg") as pool:
                    list(pool.map(lambda r: run_range(*r), bounds))
        finally:
            torch.set_num_threads(previous)

        out: dict[str, np.ndarray] = {}
        for name, (shape, dtype) in self.layout.items():
            out[name] = self._views[name].reshape(shape)
            if dtype != self._buffer.dtype:
                out[name] = out[name].astype(dtype)
        return out

    def _accumulate(self, dst: torch.Tensor, srcs: list[torch.Tensor], w: list[float]) -> None:
        n, step = dst.numel(), self.block_elems
        for start in range(0, n, step):
            stop = min(start + step, n)
            block = dst[start:stop]
            torch.mul(srcs[0][start:stop], w[0], out=block)
            for src, wi in zip(srcs[1:], w[1:], strict=True):
                block.add_(src[start:stop], alpha=wi)
