"""The ClientApp: one hospital's side of a round.

Node config (per SuperNode, `--node-config`):
  data-path      the site's dataset directory (required), inside data-root
  data-root      the read-only data mount (default /data); data-path must resolve inside it
  site           the site's name, echoed to the ServerApp (default: data-path's folder name)
  torch-threads  intra-op threads (default: CPUs this process may use, max 8)

Train reply: "arrays" (the trained weights), "metrics" (num-examples, train-loss,
val-loss, val-accuracy, val-auroc, throughput, and with DP dp-epsilon,
dp-epsilon-total, dp-delta) and "site" (site, update-sha256, base-sha256).

Any exception (bad data, PHI in a DICOM, NaN loss, privacy budget, tampered
global model) becomes an error reply naming the cause; flwr puts the message in
the reply and the ServerApp records it against this site. Messages never carry
patient data or DICOM values.
"""

from __future__ import annotations

import logging
import re
import secrets

from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from . import site_report
from .hashing import FORMAT, arrays_sha256
from .ledger import LedgerError, PrivacyBudgetExhausted
from .release import coarsen
from .records import arrays_to_record, record_views
from .settings import NodeSettings, RunSettings

log = logging.getLogger("flwr")
app = ClientApp()


class ModelIntegrityError(RuntimeError):
    """The global model received is not the one the ServerApp announced."""


class SiteFailure(RuntimeError):
    """Any failure at a site, prefixed with the site's name.

    flwr turns a ClientApp exception into an error reply whose only content is
    the exception text, so the name travels there: the ServerApp can then book
    a failure on the right site even in round 1, before it has ever seen a
    successful reply from that node.

    What travels is redacted (public_reason): the problem and a site-local
    reference (`ref=<hex>`, labels.csv line numbers), never an absolute path,
    a directory listing or a row id. The full text goes to the site's own log
    under the same ref, so the hospital can find it."""

    def __init__(self, site: str, cause: BaseException) -> None:
        ref = secrets.token_hex(4)
        log.error("site %s failure ref=%s: %s: %s", site, ref, type(cause).__name__, cause)
        super().__init__(f"site={site}: {type(cause).__name__}: {public_reason(cause)} [ref={ref}, see the site log]")


_ABSOLUTE_PATH = re.compile(r"(?<![\w.])/[^\s'\",;)\]]+")


def public_reason(cause: BaseException) -> str:
    """The part of an error that may leave the site."""
    from .data import DatasetError

    if isinstance(cause, DatasetError):
        return cause.public
    return _ABSOLUTE_PATH.sub("<path>", str(cause))


def _received_model(msg: Message, site: str):
    views = record_views(msg.content["arrays"])
    digest = arrays_sha256(views)
    config = msg.content.config_records.get("config", ConfigRecord())
    expected = config.get("global-arrays-sha256")
    if expected and expected != digest:
        raise ModelIntegrityError(
            f"site {site}: received global model hashes to {digest[:16]}…, the ServerApp announced "
            f"{str(expected)[:16]}…; refusing to train on it"
        )
    return views, digest, config


def _settings(context: Context) -> tuple[RunSettings, NodeSettings]:
    from .site_training import configure_threads

    run = RunSettings.from_run_config(context.run_config)
    node = NodeSettings.from_node_config(context.node_config)
    configure_threads(node)
    return run, node


@app.train()
def train(msg: Message, context: Context) -> Message:
    run, node = _settings(context)
    try:
        return _train(msg, context, run, node)
    except Exception as exc:
        if isinstance(exc, (PrivacyBudgetExhausted, LedgerError)):   # the site agent reports the refusal
            site_report.refused(_server_round(msg), type(exc).__name__)
        raise SiteFailure(node.site, exc) from exc


def _server_round(msg: Message) -> int:
    try:
        return int(msg.content.config_records.get("config", ConfigRecord()).get("server-round", 0))
    except (TypeError, ValueError):
        return 0


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    run, node = _settings(context)
    try:
        return _evaluate(msg, run, node)
    except Exception as exc:
        raise SiteFailure(node.site, exc) from exc


def _train(msg: Message, context: Context, run: RunSettings, node: NodeSettings) -> Message:
    from .site_training import train_site

    views, base_digest, config = _received_model(msg, node.site)
    server_round = int(config.get("server-round", 0))
    mu = float(config.get("proximal-mu", 0.0))
    upd = train_site(run, node, views, server_round, proximal_mu=mu, run_id=str(context.run_id))
    metrics = {
        "num-examples": upd.num_examples,
        "train-loss": upd.train.loss,
        "val-loss": upd.val["loss"],
        "val-accuracy": upd.val["accuracy"],
        "val-auroc": upd.val["auroc"],
        "train-seconds": upd.train.seconds,
        "train-images-per-second": upd.train.images_per_second,
    }
    if upd.privacy is not None:
        metrics |= {
            "dp-epsilon": upd.privacy.epsilon_round,
            "dp-epsilon-total": upd.privacy.epsilon_total,
            "dp-delta": upd.privacy.delta,
            "dp-epsilon-dataset": upd.privacy.epsilon_dataset,
        }
    log.info(
        "Site %s trained round %s on %d images: val accuracy %.3f, update sha256 %s",
        node.site,
        server_round,
        upd.num_examples,
        upd.val["accuracy"],
        upd.sha256[:16],
    )
    released = coarsen(metrics, run.metric_decimals)
    site_report.train(server_round, upd.num_examples, released)
    content = RecordDict(
        {
            "arrays": arrays_to_record(upd.arrays),
            "metrics": MetricRecord(released),
            "site": ConfigRecord(
                {"site": node.site, "update-sha256": upd.sha256, "base-sha256": base_digest, "hash-format": FORMAT}
            ),
        }
    )
    return Message(content, reply_to=msg)


def _evaluate(msg: Message, run: RunSettings, node: NodeSettings) -> Message:
    from .site_training import evaluate_site

    views, base_digest, _ = _received_model(msg, node.site)
    n, metrics = evaluate_site(run, node, views)
    content = RecordDict(
        {
            "metrics": MetricRecord(coarsen({"num-examples": n, **metrics}, run.metric_decimals)),
            "site": ConfigRecord({"site": node.site, "base-sha256": base_digest}),
        }
    )
    return Message(content, reply_to=msg)
