"""The chain client's settings and error, without web3: the hub imports these always and the
client (``integrations/chain.py``, which loads web3, ~50 MiB) only when a chain is configured."""

from __future__ import annotations

import random
from dataclasses import dataclass, field


class ChainError(RuntimeError):
    """A chain operation failed. ``reason`` is a CamelCase condition reason; the message says what to do."""

    def __init__(self, reason: str, message: str, *, transient: bool = False) -> None:
        super().__init__(message)
        self.reason = reason
        self.transient = transient


@dataclass(frozen=True)
class RpcPolicy:
    timeout: float = 10.0         # seconds per RPC call
    attempts: int = 5             # tries per call (transport errors only)
    base_delay: float = 0.2       # first back-off; doubles, full jitter
    max_delay: float = 5.0

    def delay(self, attempt: int) -> float:
        return random.uniform(0, min(self.max_delay, self.base_delay * 2 ** attempt))


@dataclass(frozen=True)
class ChainSettings:
    rpc_url: str
    chain_id: int
    contract_address: str = ""
    confirmations: int = 2
    gas_cap: int = 2_000_000                 # refuse a transaction whose estimate (+20 %) is above this
    max_fee_per_gas_cap: int = 500 * 10**9   # wei; never offer more per gas
    priority_fee: int | None = None          # wei; None = ask the node (eth_maxPriorityFeePerGas)
    receipt_timeout: float = 120.0           # how long anchor() waits for inclusion + confirmations
    poll_interval: float = 0.25
    policy: RpcPolicy = field(default_factory=RpcPolicy)
    #: Anchors started within this many seconds of each other share one anchorBatch transaction
    #: (each keeps its own record and event, so each stays verifiable on its own). 0 = off.
    batch_window: float = 0.0
    batch_max: int = 20                      # at most this many anchors per transaction (gas)
