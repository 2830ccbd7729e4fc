"""flwr strategies with audited rounds and in-place aggregation.

`InPlaceFedAvg` replaces flwr's `aggregate_arrayrecords` with the
preallocated-buffer averager (aggregation.py). `AuditMixin`, placed first in
the MRO, turns flwr 1.42's silent failure modes into errors:

* it waits for min-available nodes with a deadline (flwr waits forever);
* it verifies every train reply (replies.py), maps errors to the site they
  were sent to, records everything in the provenance file, and
* fails the run when a round ends with fewer successful replies than
  min-train-nodes (flwr would log nothing and keep the old model).

Composition: FedcareFedAdam = AuditMixin -> FedAdam -> FedOpt -> InPlaceFedAvg
-> FedAvg, so FedAdam's server optimizer runs on top of the in-place average.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterable

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp.strategy import FedAdam, FedAvg, FedProx

from .aggregation import WeightedAverager
from .hashing import arrays_sha256
from .records import arrays_to_record, record_views
from .replies import (
    ReplyRejected,
    SiteDirectory,
    SiteOutcome,
    describe_error,
    destination_of,
    read_eval_reply,
    read_site_name,
    reason_from_error,
    site_from_error,
    verify_train_reply,
)
from .settings import RunSettings
from .trust import TrustPolicy, Untrusted

log = logging.getLogger("flwr")


class RoundFailedError(RuntimeError):
    """A round ended with fewer successful site updates than min-train-nodes."""


class NodesUnavailableError(RuntimeError):
    """Not enough SuperNodes connected before node-wait-timeout."""


def aggregate_metrics(records: list[RecordDict], weight_key: str) -> MetricRecord:
    """Example-weighted mean per key, skipping NaN (e.g. AUROC of a one-class split);
    privacy keys (dp-*) report the worst (largest) site; the weight key is summed."""
    out = MetricRecord()
    rows = [next(iter(r.metric_records.values())) for r in records]
    keys = sorted({k for row in rows for k in row})
    for key in keys:
        vals = [(float(row[key]), float(row[weight_key])) for row in rows if isinstance(row.get(key), (int, float))]
        if key == weight_key:
            out[key] = int(sum(v for v, _ in vals))
        elif key.startswith("dp-"):
            out[key] = max(v for v, _ in vals)
        else:
            finite = [(v, w) for v, w in vals if not math.isnan(v)]
            total = sum(w for _, w in finite)
            out[key] = sum(v * w for v, w in finite) / total if total > 0 else float("nan")
    return out


class InPlaceFedAvg(FedAvg):
    """FedAvg whose weighted average accumulates into one preallocated buffer."""

    _averager: WeightedAverager | None = None

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        valid, _ = self._check_and_log_replies(list(replies), is_train=True)
        if not valid:
            return None, None
        updates = [record_views(m.content[self.arrayrecord_key]) for m in valid]
        weights = [float(next(iter(m.content.metric_records.values()))[self.weighted_by_key]) for m in valid]
        if self._averager is None or self._averager.layout.keys() != updates[0].keys():
            self._averager = WeightedAverager(updates[0])
        averaged = self._averager.average(updates, weights)
        metrics = self.train_metrics_aggr_fn([m.content for m in valid], self.weighted_by_key)
        return arrays_to_record(averaged), metrics


class AuditMixin:
    """Must come first in the bases; expects a FedAvg-family strategy after it."""

    def __init__(
        self, *args, recorder, min_successful: int, node_wait_timeout: float, trust: TrustPolicy | None = None, **kwargs
    ) -> None:
        super().__init__(*args, **kwargs)
        self.trust = trust or TrustPolicy()
        self.recorder = recorder
        self.min_successful = min_successful
        self.node_wait_timeout = node_wait_timeout
        self.sites = SiteDirectory()
        self._sent: list[Message] = []
        self._global_views: dict[str, np.ndarray] = {}
        self._global_sha256 = ""

    # -- nodes -----------------------------------------------------------------
    def _wait_for_nodes(self, grid, server_round: int) -> None:
        needed = max(self.min_available_nodes, self.min_train_nodes)
        deadline = time.monotonic() + self.node_wait_timeout
        while (connected := len(list(grid.get_node_ids()))) < needed:
            if time.monotonic() > deadline:
                raise NodesUnavailableError(
                    f"round {server_round}: {connected} SuperNode(s) connected after waiting "
                    f"{self.node_wait_timeout:.0f} s, {needed} needed (min-available-nodes / min-train-nodes); "
                    "check that the sites' SuperNodes run and reach the SuperLink"
                )
            time.sleep(1.0)
        if self.trust.enforced:
            self.sites.names = self.trust.names_from_grid(grid.get_nodes())
        else:
            self.sites.learn_from_grid(grid)

    def _track(self, messages: Iterable[Message]) -> list[Message]:
        self._sent = list(messages)  # grid.push_messages stamps message_id onto these objects
        return self._sent

    def _sent_map(self) -> dict[str, int]:
        return {m.metadata.message_id: m.metadata.dst_node_id for m in self._sent}

    def _classify(self, replies: list[Message], read) -> dict[str, SiteOutcome]:
        sent = self._sent_map()
        outcomes: dict[str, SiteOutcome] = {}
        enforced = self.trust.enforced
        for reply in replies:
            node_id = destination_of(reply, sent)
            if enforced and node_id not in self.sites.names:
                site = self.sites.name(node_id)
                outcome = SiteOutcome(
                    site, node_id, False, f"rejected: node {node_id} is not in run-config site-identities"
                )
            elif reply.has_error():
                named = site_from_error(reply)
                if named and node_id not in self.sites.names and not enforced:
                    self.sites.names[node_id] = named
                site = self.sites.name(node_id)
                outcome = SiteOutcome(site, node_id, False, describe_error(reply), reason=reason_from_error(reply))
            else:
                if enforced:
                    site = self.sites.name(node_id)
                    claimed = (reply.content.config_records.get("site") or {}).get("site")
                else:
                    site = read_site_name(reply, self.sites, node_id)
                    claimed = site
                try:
                    if claimed != site:
                        raise ReplyRejected(f"the reply names another site than node {node_id} is registered as")
                    outcome = read(reply, site, node_id)
                    self._bound(reply, outcome)
                except (ReplyRejected, Untrusted) as exc:
                    outcome = SiteOutcome(site, node_id, False, f"rejected: {exc}")
            outcome.identity = "site-identities" if enforced else "self-reported"
            key = site if site not in outcomes else f"{site}@{node_id}"
            outcomes[key] = outcome
        answered = {o.node_id for o in outcomes.values()}
        for node_id in sorted(set(sent.values()) - answered):
            site = self.sites.name(node_id)
            key = site if site not in outcomes else f"{site}@{node_id}"
            outcomes[key] = SiteOutcome(site, node_id, False, "no reply before round-timeout")
        for key, o in sorted(outcomes.items()):
            if not o.ok:
                log.warning("Site %s (node %s) failed: %s", key, o.node_id, o.error)
        return outcomes

    def _bound(self, reply: Message, outcome: SiteOutcome) -> None:
        """Cap the weight at what the site registered and clip the update's norm; the
        reply is rewritten so every strategy aggregates the bounded values."""
        metrics = reply.content.metric_records.get("metrics")
        reported = outcome.num_examples
        weight = self.trust.cap_examples(outcome.site, reported)
        outcome.num_examples_reported, outcome.num_examples = reported, weight
        metrics["num-examples"] = weight
        if outcome.arrays is not None and self._global_views:
            bounded, norm, clipped = self.trust.clip(outcome.arrays, self._global_views)
            outcome.update_norm, outcome.update_clipped = norm, clipped
            if clipped:
                outcome.arrays = bounded
                reply.content[self.arrayrecord_key] = arrays_to_record(bounded)

    # -- train -------------------------------------------------------------------
    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid) -> Iterable[Message]:
        self.recorder.start_round(server_round)
        self._wait_for_nodes(grid, server_round)
        self._global_views = record_views(arrays)
        self._global_sha256 = arrays_sha256(self._global_views)
        config["global-arrays-sha256"] = self._global_sha256
        return self._track(super().configure_train(server_round, arrays, config, grid))

    def aggregate_train(self, server_round: int, replies: Iterable[Message]):
        replies = list(replies)

        def read(reply, site, node_id):
            return verify_train_reply(reply, site, node_id, self._global_views, self._global_sha256)

        outcomes = self._classify(replies, read)
        ok_ids = {o.node_id for o in outcomes.values() if o.ok}
        good = [r for r in replies if not r.has_error() and destination_of(r, self._sent_map()) in ok_ids]
        self.recorder.record_train(server_round, self._global_sha256, outcomes)
        if len(ok_ids) < self.min_successful:
            failed = "; ".join(f"{k}: {o.error}" for k, o in sorted(outcomes.items()) if not o.ok)
            raise RoundFailedError(
                f"round {server_round}: {len(ok_ids)} of {len(outcomes)} sites returned a usable update, "
                f"min-train-nodes is {self.min_successful}. Failures: {failed or 'none (too few sites sampled)'}"
            )
        started = time.perf_counter()
        arrays, metrics = super().aggregate_train(server_round, good)
        self.recorder.record_train_aggregate(server_round, metrics, time.perf_counter() - started)
        return arrays, metrics

    # -- evaluate ----------------------------------------------------------------
    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid):
        if self.fraction_evaluate == 0.0:
            self._sent = []
            return []
        config["global-arrays-sha256"] = arrays_sha256(record_views(arrays))
        return self._track(super().configure_evaluate(server_round, arrays, config, grid))

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]):
        replies = list(replies)
        outcomes = self._classify(replies, read_eval_reply)
        ok_ids = {o.node_id for o in outcomes.values() if o.ok}
        good = [r for r in replies if not r.has_error() and destination_of(r, self._sent_map()) in ok_ids]
        metrics = super().aggregate_evaluate(server_round, good)
        self.recorder.record_evaluate(server_round, outcomes, metrics)
        return metrics


class FedcareFedAvg(AuditMixin, InPlaceFedAvg):
    pass


class FedcareFedProx(AuditMixin, FedProx, InPlaceFedAvg):
    pass


class FedcareFedAdam(AuditMixin, FedAdam, InPlaceFedAvg):
    pass


def build_strategy(run: RunSettings, recorder) -> FedAvg:
    common = dict(
        fraction_train=run.fraction_train,
        fraction_evaluate=run.fraction_evaluate,
        min_train_nodes=run.min_train_nodes,
        min_evaluate_nodes=run.min_evaluate_nodes,
        # flwr samples max(min-available, min-train) anyway; say so in the summary log
        min_available_nodes=max(run.min_available_nodes, run.min_train_nodes),
        train_metrics_aggr_fn=aggregate_metrics,
        evaluate_metrics_aggr_fn=aggregate_metrics,
        recorder=recorder,
        min_successful=run.min_train_nodes,
        node_wait_timeout=run.node_wait_timeout,
        trust=TrustPolicy(
            run.site_identities, run.registered_examples, run.max_examples_per_site, run.max_update_norm
        ),
    )
    if run.strategy == "fedprox":
        return FedcareFedProx(proximal_mu=run.proximal_mu, **common)
    if run.strategy == "fedadam":
        return FedcareFedAdam(eta=run.server_lr, tau=run.server_tau, **common)
    return FedcareFedAvg(**common)
