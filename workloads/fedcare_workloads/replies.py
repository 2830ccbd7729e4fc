"""Server-side reading of train/evaluate replies: who sent it, and is it sound.

Site identity: the ServerApp cannot see node configs, so a ClientApp echoes
its site name in a "site" ConfigRecord. Error replies carry no content, and
one made by the SuperLink for a dead SuperNode carries src_node_id=1 (the
SuperLink's own id), so replies are mapped to their *destination* via
reply_to_message_id -> the message we sent, and node -> site through names
learned from earlier replies or from `grid.get_nodes()` (registered names).

A train reply is accepted only if: it has arrays/metrics/site records; the
arrays have the global model's names, shapes and dtypes; they hash to the
sha256 the site reported (fedcare-arrays/v1, recomputed here on the received
bytes); they are all finite; the site trained on the model we sent (its
base-sha256 equals ours); and num-examples is a positive integer.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

import numpy as np
from flwr.app import Message

from .hashing import arrays_sha256
from .records import ArrayFormatError, check_layout, record_views

SUPERLINK_NODE_ID = 1
ERROR_NAMES = {
    0: "UNKNOWN",
    1: "LOAD_CLIENT_APP_EXCEPTION",
    2: "CLIENT_APP_RAISED_EXCEPTION",
    3: "MESSAGE_UNAVAILABLE",
    4: "REPLY_MESSAGE_UNAVAILABLE",
    5: "NODE_UNAVAILABLE",
    6: "MOD_FAILED_PRECONDITION",
    7: "INVALID_FAB",
    8: "CLIENT_APP_CRASHED",
}


class ReplyRejected(ValueError):
    """A reply that arrived but cannot be used."""


@dataclass
class SiteOutcome:
    site: str
    node_id: int
    ok: bool
    error: str | None = None
    num_examples: int | None = None
    update_sha256: str | None = None
    base_sha256: str | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    arrays: dict[str, np.ndarray] | None = None  # zero-copy views; never serialised
    reason: str | None = None  # e.g. PrivacyBudgetExhausted: the exception class a ClientApp refused with
    identity: str | None = None  # "site-identities" (operator's table) or "self-reported"
    num_examples_reported: int | None = None
    update_norm: float | None = None
    update_clipped: bool | None = None

    def to_json(self) -> dict:
        out = {"node_id": str(self.node_id), "status": "ok" if self.ok else "failed"}
        for key in (
            "error",
            "reason",
            "identity",
            "num_examples",
            "num_examples_reported",
            "update_norm",
            "update_clipped",
            "update_sha256",
            "base_sha256",
        ):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        if self.metrics:
            out["metrics"] = {
                k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in self.metrics.items()
            }
        return out


class SiteDirectory:
    """node_id -> site name, learned as replies arrive."""

    def __init__(self) -> None:
        self.names: dict[int, str] = {}

    def learn_from_grid(self, grid) -> None:
        try:
            for info in grid.get_nodes():
                name = getattr(info, "name", "")
                if name and info.node_id not in self.names:
                    self.names[info.node_id] = name
        except Exception:  # noqa: BLE001 - names are a convenience, never a reason to fail
            pass

    def name(self, node_id: int) -> str:
        return self.names.get(node_id, f"node-{node_id}")


def destination_of(reply: Message, sent: dict[str, int]) -> int:
    """The node a reply is about: the destination of the message it answers."""
    node = sent.get(reply.metadata.reply_to_message_id)
    if node is not None:
        return node
    return int(reply.metadata.src_node_id)


def describe_error(reply: Message) -> str:
    err = reply.error
    name = ERROR_NAMES.get(int(err.code), str(err.code))
    if reply.metadata.src_node_id == SUPERLINK_NODE_ID:
        return f"{name} (reported by the SuperLink: the SuperNode stopped answering): {err.reason}"
    return f"{name}: {err.reason}"


_SITE_IN_ERROR = re.compile(r"site=([A-Za-z0-9._@-]{1,64}): ")
_REASON_IN_ERROR = re.compile(r"site=[A-Za-z0-9._@-]{1,64}: ([A-Za-z][A-Za-z0-9_]{0,63}): ")


def reason_from_error(reply: Message) -> str | None:
    """The exception class a ClientApp refused with (client_app.SiteFailure), e.g.
    PrivacyBudgetExhausted: what the operator reports on the RoundAssignment."""
    match = _REASON_IN_ERROR.search(reply.error.reason or "")
    return match.group(1) if match else None


def site_from_error(reply: Message) -> str | None:
    """The site name a failing ClientApp put in its exception (client_app.SiteFailure)."""
    match = _SITE_IN_ERROR.search(reply.error.reason or "")
    return match.group(1) if match else None


def read_site_name(reply: Message, directory: SiteDirectory, node_id: int) -> str:
    rec = reply.content.config_records.get("site")
    if rec is not None and isinstance(rec.get("site"), str) and rec["site"]:
        directory.names[node_id] = rec["site"]
    return directory.name(node_id)


def verify_train_reply(
    reply: Message, site: str, node_id: int, global_views: dict[str, np.ndarray], global_sha256: str
) -> SiteOutcome:
    content = reply.content
    arrays_rec = content.array_records.get("arrays")
    metrics_rec = content.metric_records.get("metrics")
    site_rec = content.config_records.get("site")
    if arrays_rec is None or metrics_rec is None or site_rec is None:
        raise ReplyRejected("reply lacks the 'arrays', 'metrics' or 'site' record")
    n = metrics_rec.get("num-examples")
    if not isinstance(n, int) or isinstance(n, bool) or n <= 0:
        raise ReplyRejected(f"num-examples must be a positive integer, got {n!r}")
    reported = site_rec.get("update-sha256")
    base = site_rec.get("base-sha256")
    if base != global_sha256:
        raise ReplyRejected(
            f"trained on model {str(base)[:12]}…, not the global model {global_sha256[:12]}… sent this round"
        )
    try:
        views = record_views(arrays_rec)
        check_layout(views, global_views, "update")
    except ArrayFormatError as exc:
        raise ReplyRejected(str(exc)) from None
    actual = arrays_sha256(views)
    if actual != reported:
        raise ReplyRejected(
            f"update sha256 mismatch: the site reported {str(reported)[:16]}…, the received arrays hash to {actual[:16]}…"
        )
    for name, a in views.items():
        # float64 sum: no full-size temporary, and NaN/inf anywhere propagates.
        if not math.isfinite(float(np.sum(a, dtype=np.float64))):
            raise ReplyRejected(f"update array '{name}' contains NaN or infinite values")
    metrics = {k: float(v) for k, v in metrics_rec.items() if isinstance(v, (int, float)) and k != "num-examples"}
    return SiteOutcome(site, node_id, True, None, n, actual, base, metrics, views)


def read_eval_reply(reply: Message, site: str, node_id: int) -> SiteOutcome:
    metrics_rec = reply.content.metric_records.get("metrics")
    if metrics_rec is None:
        raise ReplyRejected("evaluate reply lacks the 'metrics' record")
    n = metrics_rec.get("num-examples")
    if not isinstance(n, int) or n <= 0:
        raise ReplyRejected(f"num-examples must be a positive integer, got {n!r}")
    metrics = {k: float(v) for k, v in metrics_rec.items() if isinstance(v, (int, float)) and k != "num-examples"}
    return SiteOutcome(site, node_id, True, num_examples=n, metrics=metrics)
