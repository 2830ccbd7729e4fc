"""What a site's metrics look like when they leave it: coarsened, not raw.

Train loss, validation metrics and evaluate replies are statistics of patients'
images. They are not noised (so not covered by the DP-SGD epsilon); instead the
ClientApp releases only what the hub needs to follow a run: each value clipped
to its meaningful range and rounded to run-config `metric-decimals` (default 2),
timing to whole seconds and throughput to two significant figures. The model
card says so (`privacy.released_metrics`). `num-examples` is released exactly:
it weights FedAvg, is capped by the server at what the site registered, and
is already known to the hub from the site's HospitalNode.
"""

from __future__ import annotations

import math

# key -> (low, high): values are clipped into the range before rounding.
RANGES: dict[str, tuple[float, float]] = {
    "accuracy": (0.0, 1.0),
    "auroc": (0.0, 1.0),
    "loss": (0.0, 100.0),
}


def _range(key: str) -> tuple[float, float] | None:
    for suffix, bounds in RANGES.items():
        if key == suffix or key.endswith("-" + suffix):
            return bounds
    return None


def _significant(value: float, digits: int = 2) -> float:
    if value == 0 or not math.isfinite(value):
        return value
    return round(value, digits - 1 - int(math.floor(math.log10(abs(value)))))


def coarsen(metrics: dict[str, float | int], decimals: int) -> dict[str, float | int]:
    """The released form of a site's metrics (dp-* accounting values pass unchanged:
    they derive from public parameters, not from the data)."""
    out: dict[str, float | int] = {}
    for key, value in metrics.items():
        if key == "num-examples" or key.startswith("dp-") or isinstance(value, bool):
            out[key] = value
            continue
        v = float(value)
        if math.isnan(v):
            out[key] = v  # e.g. AUROC of a one-class split: "unknown" carries nothing
        elif key.endswith("-seconds"):
            out[key] = float(round(v))
        elif key.endswith("-per-second"):
            out[key] = _significant(v)
        else:
            bounds = _range(key)
            if bounds is not None:
                v = min(max(v, bounds[0]), bounds[1])
            out[key] = round(v, decimals)
    return out


def policy(decimals: int) -> dict:
    """For the model card."""
    return {
        "mechanism": "coarsened at each site (not noised, not part of epsilon)",
        "decimals": decimals,
        "clipped_ranges": {k: list(v) for k, v in RANGES.items()},
        "timing": "whole seconds; throughput to 2 significant figures",
        "exact": ["num-examples (capped by the server at the registered size)", "dp-* accounting values"],
    }
