"""Test helpers: an in-process Grid that runs the real ClientApp per node."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

from fedcare_workloads import client_app
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Error, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.supercore.task_identity import TaskIdentity

SMALL_SIZE = 32


class Node:
    def __init__(self, node_id: int, node_config: dict, run_config: dict) -> None:
        self.node_id = node_id
        self.context = Context(
            run_id=7, node_id=node_id, node_config=node_config, state=RecordDict(), run_config=run_config
        )
        # behaviour(message) -> Message | None. None = no reply (timeout).
        self.behaviour: Callable[[Message, Context], Message | None] | None = None


class NodeInfoStub:
    def __init__(self, node_id: int, name: str = "") -> None:
        self.node_id = node_id
        self.name = name


class InProcessGrid(Grid):
    """Delivers messages to the real `client_app.app` synchronously.

    Mirrors what matters of HttpGrid: message ids are stamped onto the sent
    Message objects, replies are made with `reply_to`, and a node can be told to
    die (the SuperLink then answers for it with src_node_id=1, code 5), raise,
    tamper with its reply or stay silent."""

    def __init__(self, nodes: list[Node]) -> None:
        # Set by flwr-serverapp in a real run; Message() needs it.
        TaskIdentity.run_id = 7
        TaskIdentity.node_id = 1
        TaskIdentity.task_id = 1
        self.nodes = {n.node_id: n for n in nodes}
        self.sent_log: list[Message] = []

    # Grid's abstract API (only what strategies use is meaningful)
    def set_run(self, run) -> None:  # pragma: no cover - unused
        pass

    @property
    def run(self):  # pragma: no cover - unused
        return None

    def create_message(self, *a, **k):  # pragma: no cover - deprecated API
        raise NotImplementedError

    def get_node_ids(self) -> Iterable[int]:
        return list(self.nodes)

    def get_nodes(self):
        return [NodeInfoStub(i) for i in self.nodes]

    def push_messages(self, messages):  # pragma: no cover - send_and_receive is used
        raise NotImplementedError

    def pull_messages(self, message_ids):  # pragma: no cover
        raise NotImplementedError

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        replies = []
        for msg in messages:
            msg.metadata.__dict__["_message_id"] = msg.object_id
            self.sent_log.append(msg)
            node = self.nodes[msg.metadata.dst_node_id]
            # Each node gets its own copy, as after a real network hop.
            delivered = Message(
                content=clone(msg.content), dst_node_id=node.node_id, message_type=msg.metadata.message_type
            )
            delivered.metadata.__dict__["_message_id"] = msg.metadata.message_id
            if node.behaviour is not None:
                reply = node.behaviour(delivered, node.context)
            else:
                reply = run_client(delivered, node.context)
            if reply is not None:
                if not reply.has_error():
                    reply.content = clone(reply.content)
                replies.append(reply)
        return replies


def clone(content: RecordDict) -> RecordDict:
    """A deep copy of a RecordDict, as a network hop would make."""
    out = RecordDict()
    for key, rec in content.items():
        if isinstance(rec, ArrayRecord):
            out[key] = ArrayRecord(
                {
                    n: Array(dtype=a.dtype, shape=tuple(a.shape), stype=a.stype, data=bytes(a.data))
                    for n, a in rec.items()
                }
            )
        elif isinstance(rec, ConfigRecord):
            out[key] = ConfigRecord({k: (list(v) if isinstance(v, list) else v) for k, v in rec.items()})
        elif isinstance(rec, MetricRecord):
            out[key] = MetricRecord({k: (list(v) if isinstance(v, list) else v) for k, v in rec.items()})
    return out


def run_client(msg: Message, context: Context) -> Message:
    """What flwr-clientapp does: call the app; an exception becomes an error reply."""
    try:
        return client_app.app(message=msg, context=context)
    except Exception as ex:  # noqa: BLE001 - mirrors flwr's run_clientapp
        reason = str(type(ex)) + ":<'" + str(ex) + "'>"
        return Message(Error(code=2, reason=reason), reply_to=msg)


def dead_node(msg: Message, context: Context) -> Message:
    """The SuperLink's reply for a SuperNode that stopped heartbeating."""
    reply = Message(Error(code=5, reason="Error: Node Unavailable"), reply_to=msg)
    reply.metadata.__dict__["_src_node_id"] = 1
    return reply


def silent_node(msg: Message, context: Context) -> None:
    return None


def run_config(out_dir: Path | str = "", **overrides) -> dict:
    """A complete run config as flwr would pass it (flattened, TOML-typed)."""
    cfg = {
        "num-server-rounds": 2,
        "strategy": "fedavg",
        "fraction-train": 1.0,
        "fraction-evaluate": 0.0,
        "min-train-nodes": 2,
        "min-evaluate-nodes": 0,
        "min-available-nodes": 2,
        "round-timeout": 60.0,
        "node-wait-timeout": 2.0,
        "proximal-mu": 0.01,
        "server-lr": 0.1,
        "server-tau": 0.001,
        "model": "small",
        "image-size": SMALL_SIZE,
        "classes": "normal,benign,malignant",
        "seed": 0,
        "local-epochs": 1,
        "batch-size": 16,
        "optimizer": "adam",
        "lr": 0.001,
        "momentum": 0.9,
        "out-dir": str(out_dir),
        "server-eval-path": "",
        "save-round-models": True,
        "privacy.dp": False,
        "privacy.noise-multiplier": 1.0,
        "privacy.max-grad-norm": 1.0,
        "privacy.delta": 1e-5,
        "privacy.max-epsilon": 0.0,
        "site-identities": "",
        "registered-examples": "",
        "max-examples-per-site": 1000000,
        "max-update-norm": 100.0,
        "metric-decimals": 2,
        "initial-model": "",
        "initial-model-sha256": "",
    }
    cfg.update(overrides)
    return cfg


def node_config(root: Path, site: str, **overrides) -> dict:
    cfg = {"site": site, "data-path": str(root / site), "data-root": str(root), "torch-threads": 1}
    cfg.update(overrides)
    return cfg
