"""The ModelRegistry chain client: anchor and revoke releases exactly once (web3, async).

Guarantees, and how:
- *Exactly once*. The contract refuses a second anchor of the same hash, and the client never
  relies on that alone: before sending, and when resuming with a transaction hash recorded in
  status (after a crash), it looks the hash up on the contract. A pending transaction is
  tracked by its hash, which is computed from the signed bytes and handed to ``on_sent``
  *before* it is broadcast, so a crash at any point leaves a hash to follow. A transaction the
  node no longer knows is *dropped* (sent again with a fresh nonce) or *replaced* (its nonce was
  used by another transaction: the record is looked up again, then it is sent again if needed).
- *Nonces*. One lock per sending account: nonce allocation, signing and broadcast happen under
  it; the next nonce is a local counter read from the node's pending count on first use and
  after any failed, ambiguous or dropped broadcast ("nonce too low": re-read and re-signed once).
- *Fees*. EIP-1559: maxPriorityFeePerGas from the node (eth_maxPriorityFeePerGas, or fixed),
  maxFeePerGas = 2 × baseFee + tip, both capped by configuration; gas is estimated (a revert in
  estimation is decoded to the contract's error) plus 20 %, and refused above ``gas_cap``.
- *Chain identity*. The node's chain id must equal the configured one and the contract address
  must hold code, or nothing is sent.
- *RPC*. Every call has a timeout and a bounded, jittered exponential retry on transport errors
  (connection refused, timeouts, 429/5xx); JSON-RPC errors and reverts are not retried.
- *Secrets*. The key comes from a ``KeyRef`` when a transaction is signed; it is never logged,
  stored, or put in an error.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import json
import logging
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from importlib import resources
from typing import Any

import aiohttp
import eth_abi
from eth_account import Account
from eth_utils import keccak, to_checksum_address
from web3 import AsyncHTTPProvider, AsyncWeb3
from web3 import exceptions as w3e

from .chain_types import ChainError, ChainSettings, RpcPolicy
from .keyref import KeyRef, KeyRefError

log = logging.getLogger(__name__)

ZERO32 = b"\x00" * 32


def load_artifact() -> dict[str, Any]:
    """The committed ModelRegistry build (ABI + bytecode), see contracts/compile.js."""
    text = resources.files("fedcare.integrations").joinpath("contracts/ModelRegistry.json").read_text()
    return json.loads(text)


ARTIFACT = load_artifact()
ABI = ARTIFACT["abi"]
#: 4-byte selector (hex, no 0x) -> custom error name, to name a revert.
#: function name -> (4-byte selector, input types), for encoding hot-path calls with eth_abi directly.
FUNCTIONS = {f["name"]: (keccak(text=f"{f['name']}({','.join(i['type'] for i in f['inputs'])})")[:4],
                         [i["type"] for i in f["inputs"]]) for f in ABI if f["type"] == "function"}


def encode_call(name: str, args: list[Any]) -> str:
    """Calldata of ``name(args)``: the same bytes as web3's ``contract.encode_abi``, without its
    per-call ABI lookup and validation (which cost more CPU than signing; docs/performance.md)."""
    selector, types = FUNCTIONS[name]
    return "0x" + (selector + eth_abi.encode(types, args)).hex()


ERROR_SELECTORS = {
    keccak(text=f"{e['name']}({','.join(i['type'] for i in e['inputs'])})")[:4].hex(): e["name"]
    for e in ABI if e["type"] == "error"}


class RpcError(Exception):
    """A JSON-RPC error answer (not a transport failure): the node refused or the call reverted."""

    def __init__(self, method: str, error: Any) -> None:
        error = error if isinstance(error, dict) else {"message": str(error)}
        self.method, self.code = method, error.get("code")
        self.message = str(error.get("message", ""))
        data = error.get("data")
        self.data = data.get("data") if isinstance(data, dict) else data
        super().__init__(f"{method}: {self.message[:300]}")


def _int(value: Any) -> int:
    return int(value, 16) if isinstance(value, str) else int(value)


@dataclass(frozen=True)
class Record:
    provenance_root: bytes
    round_id: bytes
    registrar: str
    block_number: int
    revoked_block: int

    @property
    def exists(self) -> bool:
        return self.block_number != 0

    @property
    def revoked(self) -> bool:
        return self.revoked_block != 0


@dataclass
class TxResult:
    """An included transaction (or an effect found already on chain)."""

    tx_hash: str
    block_number: int
    confirmations: int
    already: bool = False              # the effect was on chain before we sent anything
    notes: list[str] = dataclasses.field(default_factory=list)   # dropped / replaced / resumed


OnSent = Callable[[str, int], Awaitable[None]]


def _h32(value: str | bytes) -> bytes:
    if isinstance(value, bytes):
        raw = value
    else:
        text = value.removeprefix("sha256:").removeprefix("0x")
        try:
            raw = bytes.fromhex(text)
        except ValueError:
            raise ChainError("InvalidHash", f"{value[:80]!r} is not a hex sha256") from None
    if len(raw) != 32:
        raise ChainError("InvalidHash", "a model hash, provenance root or round id must be 32 bytes")
    return raw


_TRANSIENT = (aiohttp.ClientError, asyncio.TimeoutError, OSError, w3e.ProviderConnectionError,
              w3e.RequestTimedOut, w3e.TooManyRequests)


def _is_transient(err: BaseException) -> bool:
    if isinstance(err, _TRANSIENT):
        return True
    return False


class ChainClient:
    """One client per (RPC endpoint, sending account); safe for many concurrent releases."""

    def __init__(self, settings: ChainSettings, key_ref: KeyRef | None = None) -> None:
        self.settings = settings
        self.key_ref = key_ref
        provider = AsyncHTTPProvider(settings.rpc_url, exception_retry_configuration=None,
                                     request_kwargs={"timeout": aiohttp.ClientTimeout(total=settings.policy.timeout)})
        self.w3 = AsyncWeb3(provider)
        # We check the chain id once ourselves (check()), sign locally with it, set fees and gas
        # ourselves and use no ENS names: web3's per-request validation (an eth_chainId round trip
        # before every call), ENS, gas-price and gas-estimate middleware only add round trips.
        for name in ("validation", "ens_name_to_address", "gas_price_strategy", "gas_estimate"):
            self.w3.middleware_onion.remove(name)
        self.contract = self.w3.eth.contract(
            address=to_checksum_address(settings.contract_address) if settings.contract_address else None, abi=ABI)
        self._checked = False
        self._check_lock = asyncio.Lock()      # many releases at once: one identity check, not one each
        self._fees_lock = asyncio.Lock()       # ... and one fee read per second, not one each
        self._lock = asyncio.Lock()
        self._next_nonce: int | None = None
        self._fees: tuple[float, int, int] | None = None     # (when, maxFee, tip)
        self._address: str | None = None
        self._watcher: asyncio.Task | None = None
        self._new_block = asyncio.Event()
        self._head = 0
        self._blocks: collections.deque[tuple[int, list[str]]] = collections.deque()
        self._mined: dict[str, int] = {}
        self._batch: list[Any] = []
        self._batch_timer: asyncio.TimerHandle | None = None
        self._batch_tasks: set[asyncio.Task] = set()
        #: JSON-RPC calls made, by what (for benchmarks and debugging; never holds values).
        self.calls: collections.Counter[str] = collections.Counter()

    async def close(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._watcher
            self._watcher = None
        await self.w3.provider.disconnect()

    async def __aenter__(self) -> ChainClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- RPC with timeout and bounded jittered retry --------------------------------------------
    async def rpc(self, what: str, call: Callable[[], Awaitable[Any]]) -> Any:
        policy = self.settings.policy
        self.calls[what] += 1
        for attempt in range(policy.attempts):
            try:
                # asyncio.timeout, not wait_for: on Python 3.11 wait_for swallows a cancellation that
                # arrives in the same loop pass as the answer, and a stopping hub would keep waiting.
                async with asyncio.timeout(policy.timeout):
                    return await call()
            except Exception as err:    # noqa: BLE001 - classified right below
                if not _is_transient(err):
                    raise
                if attempt + 1 == policy.attempts:
                    raise ChainError("ChainUnreachable",
                                     f"chain RPC {what} failed {policy.attempts} times "
                                     f"({type(err).__name__}); check that the node at the configured RPC URL "
                                     "is up and reachable", transient=True) from None
                delay = policy.delay(attempt)
                log.debug("chain RPC %s failed (%s); retrying in %.2fs", what, type(err).__name__, delay)
                await asyncio.sleep(delay)
        raise AssertionError("unreachable")

    async def raw(self, method: str, *params: Any) -> Any:
        """One JSON-RPC call straight through the provider: no web3 request/response formatters.

        The hot path of anchoring (estimate, send, receipt, nonce, blocks) uses it: web3's
        formatters cost more CPU than the node's own work on a local chain, and these answers
        are few and simple (hex quantities, a receipt's status and block). Reads that need ABI
        decoding (the contract record) go through web3's contract layer.
        """
        resp = await self.rpc(method, lambda: self.w3.provider.make_request(method, list(params)))  # type: ignore[arg-type]
        err = resp.get("error")
        if err:
            raise RpcError(method, err)
        return resp.get("result")

    # -- identity -------------------------------------------------------------------------------
    def account(self) -> str:
        if self._address is None:
            self._address = Account.from_key(self._key()).address
        return self._address

    async def _load_key(self) -> str:
        """The key (a vault: reference is an HTTP call: made off the event loop); sets the address."""
        from .keyref import VaultKeyRef
        key = await asyncio.to_thread(self._key) if isinstance(self.key_ref, VaultKeyRef) else self._key()
        if self._address is None:
            self._address = Account.from_key(key).address
        return key

    async def _sender(self) -> str:
        if self._address is None:
            await self._load_key()
        assert self._address is not None
        return self._address

    def _key(self) -> str:
        if self.key_ref is None:
            raise ChainError("NoSendingKey", "no sending key configured: set the chain key reference")
        try:
            return self.key_ref.load().reveal()
        except KeyRefError as err:
            raise ChainError("SendingKeyUnavailable", str(err)) from None

    async def check(self) -> None:
        """The node serves the configured chain and the contract address holds code."""
        if self._checked:
            return
        async with self._check_lock:
            if not self._checked:
                await self._check()

    async def _check(self) -> None:
        node_id = _int(await self.raw("eth_chainId"))
        if node_id != self.settings.chain_id:
            raise ChainError("ChainIdMismatch", f"the RPC node serves chain id {node_id} but chain id "
                                                f"{self.settings.chain_id} is configured; nothing was sent. "
                                                "Fix the RPC URL or the configured chain id.")
        if self.contract.address is not None:
            code = await self.raw("eth_getCode", self.contract.address, "latest")
            if not code or code in ("0x", "0x0"):
                raise ChainError("NoContractCode", f"no contract code at {self.contract.address} on chain "
                                                   f"{node_id}; deploy it with `fedcare chain deploy` and set "
                                                   "the address it prints")
        self._checked = True

    # -- reads ----------------------------------------------------------------------------------
    async def lookup(self, model_hash: str | bytes) -> Record:
        await self.check()
        h = _h32(model_hash)
        raw = await self.rpc("get", lambda: self.contract.functions.get(h).call())
        root, rid, registrar, block, revoked = raw
        return Record(bytes(root), bytes(rid), registrar, int(block), int(revoked))

    async def block_number(self) -> int:
        return _int(await self.raw("eth_blockNumber"))

    async def event_tx(self, event: str, model_hash: bytes, block: int) -> str:
        """Hash of the transaction that emitted ``event`` for this model hash in ``block``."""
        ev = getattr(self.contract.events, event)
        logs = await self.rpc("eth_getLogs", lambda: ev.get_logs(
            argument_filters={"modelHash": model_hash}, from_block=block, to_block=block))
        return "0x" + bytes(logs[0]["transactionHash"]).hex() if logs else ""

    # -- transactions ---------------------------------------------------------------------------
    async def _fees_now(self) -> tuple[int, int]:
        if self._fees is not None and time.monotonic() - self._fees[0] < 1.0:
            return self._fees[1], self._fees[2]
        async with self._fees_lock:         # concurrent releases share one fee read
            if self._fees is not None and time.monotonic() - self._fees[0] < 1.0:
                return self._fees[1], self._fees[2]
            return await self._read_fees()

    async def _read_fees(self) -> tuple[int, int]:
        now = time.monotonic()
        block = await self.raw("eth_getBlockByNumber", "latest", False)
        base = _int(block.get("baseFeePerGas") or 0)
        tip = self.settings.priority_fee
        if tip is None:
            tip = _int(await self.raw("eth_maxPriorityFeePerGas"))
        cap = self.settings.max_fee_per_gas_cap
        if base + 1 > cap:
            raise ChainError("FeeCapExceeded", f"the base fee ({base} wei/gas) is above the configured cap "
                                               f"({cap} wei/gas); raise the cap or wait", transient=True)
        tip = min(tip, cap - base)
        max_fee = min(2 * base + tip, cap)
        self._fees = (now, max_fee, tip)
        return max_fee, tip

    async def _estimate(self, tx: dict[str, Any]) -> int:
        call = {k: v for k, v in tx.items() if k in ("from", "to", "data")}
        try:
            est = _int(await self.raw("eth_estimateGas", call))
        except RpcError as err:
            name = ERROR_SELECTORS.get(str(err.data or "").removeprefix("0x")[:8]) if err.data else None
            if name:
                raise ChainError(f"Revert{name}", f"the contract refuses this transaction ({name})") from None
            if "insufficient funds" in err.message.lower():
                raise self._no_funds(0, 0) from None
            if "revert" in err.message.lower():
                raise ChainError("Reverted", f"the contract refuses this transaction ({err.message[:200]})") from None
            raise ChainError("EstimateFailed", f"gas estimation failed: {err.message[:300]}") from None
        gas = int(est * 1.2) + 1
        if gas > self.settings.gas_cap:
            raise ChainError("GasCapExceeded", f"the transaction needs about {gas} gas, above the configured cap "
                                               f"of {self.settings.gas_cap}; raise chain gasCap if this is expected")
        return gas

    def _no_funds(self, balance: int, need: int) -> ChainError:
        detail = f" (balance {balance} wei, up to {need} wei needed)" if need else ""
        return ChainError("InsufficientFunds", f"the sending account {self.account()} cannot pay for the "
                                               f"transaction{detail}; fund it and the release resumes by itself")

    async def _send(self, data: str | None, to: str | None, on_sent: OnSent | None) -> tuple[str, int]:
        """Estimate, sign and broadcast one transaction; returns (tx hash, nonce)."""
        key = await self._load_key()
        sender = await self._sender()
        tx: dict[str, Any] = {"from": sender, "data": data or "0x", "value": 0}
        if to:
            tx["to"] = to
        gas = await self._estimate(tx)
        max_fee, tip = await self._fees_now()
        tx.pop("from")
        async with self._lock:
            for attempt in range(2):
                if self._next_nonce is None:      # first use, or after any doubt: the node's view
                    self._next_nonce = _int(await self.raw("eth_getTransactionCount", sender, "pending"))
                nonce = self._next_nonce
                tx.update({"type": 2, "chainId": self.settings.chain_id, "nonce": nonce, "gas": gas,
                           "maxFeePerGas": max_fee, "maxPriorityFeePerGas": tip})
                signed = Account.sign_transaction(tx, key)
                tx_hash = "0x" + bytes(signed.hash).hex()
                if on_sent is not None:
                    await on_sent(tx_hash, nonce)     # recorded before broadcast: a crash leaves a hash to follow
                try:
                    await self.raw("eth_sendRawTransaction", "0x" + bytes(signed.raw_transaction).hex())
                except RpcError as err:
                    self._next_nonce = None
                    text = err.message.lower()
                    if "insufficient funds" in text:
                        balance = _int(await self.raw("eth_getBalance", sender, "latest"))
                        raise self._no_funds(balance, gas * max_fee) from None
                    if "already known" in text or "already imported" in text:
                        return tx_hash, nonce
                    if "nonce too low" in text and attempt == 0:
                        continue                   # the key was used elsewhere: re-read and sign again
                    raise ChainError("SendFailed", f"the node refused the transaction: {err.message[:300]}",
                                     transient="nonce" in text) from None
                except BaseException:
                    self._next_nonce = None       # ambiguous: re-read the node's view next time
                    raise
                self._next_nonce = nonce + 1
                return tx_hash, nonce
        raise AssertionError("unreachable")

    async def _tx_state(self, tx_hash: str) -> tuple[str, Any]:
        """("mined", {"status", "blockNumber", "contractAddress"}) | ("pending", {"nonce"}) | ("unknown", None)."""
        receipt = await self.raw("eth_getTransactionReceipt", tx_hash)
        if receipt is not None and receipt.get("blockNumber") is not None:
            return "mined", {"status": _int(receipt["status"]), "blockNumber": _int(receipt["blockNumber"]),
                             "contractAddress": receipt.get("contractAddress")}
        tx = await self.raw("eth_getTransactionByHash", tx_hash)
        if tx is not None:
            return "pending", {"nonce": _int(tx["nonce"])}
        return "unknown", None

    # -- batching: concurrent anchors share one anchorBatch transaction ----------------------------
    async def _batched(self, item: tuple[bytes, bytes, bytes, str], on_sent: OnSent | None) -> tuple[str, int]:
        """Join the open batch (or open one); returns the shared (tx hash, nonce).

        Each member's ``on_sent`` runs with the shared hash before the broadcast, so each release
        follows that transaction after a crash like any other. If the batch cannot be sent (a
        member is already anchored: the whole batch would revert), every member falls back to its
        own transaction, whose estimate finds out which.
        """
        fut: asyncio.Future[tuple[str, int]] = asyncio.get_running_loop().create_future()
        self._batch.append((item, on_sent, fut))
        if len(self._batch) >= self.settings.batch_max:
            self._flush_batch()
        elif self._batch_timer is None:
            self._batch_timer = asyncio.get_running_loop().call_later(self.settings.batch_window, self._flush_batch)
        try:
            return await fut
        except ChainError as err:
            if err.reason.startswith("Revert"):
                return await self._send(encode_call("anchor", list(item)),
                                        self.contract.address, on_sent)
            raise

    def _flush_batch(self) -> None:
        if self._batch_timer is not None:
            self._batch_timer.cancel()
            self._batch_timer = None
        members, self._batch = self._batch, []
        if members:
            task = asyncio.create_task(self._send_batch(members))
            self._batch_tasks.add(task)
            task.add_done_callback(self._batch_tasks.discard)

    async def _send_batch(self, members: list[Any]) -> None:
        items = [m[0] for m in members]
        if len(items) == 1:
            data = encode_call("anchor", list(items[0]))
        else:
            data = encode_call("anchorBatch", [[i[0] for i in items], [i[1] for i in items],
                                                                  [i[2] for i in items], [i[3] for i in items]])

        async def all_sent(tx: str, nonce: int) -> None:
            # every member records the shared hash before the broadcast, concurrently (each is a
            # status write of its own release; one slow write must not hold the others back)
            await asyncio.gather(*(on_sent(tx, nonce) for _, on_sent, _ in members if on_sent is not None))

        try:
            result = await self._send(data, self.contract.address, all_sent)
        except BaseException as err:     # noqa: BLE001 - handed to every member
            for _, _, fut in members:
                if not fut.done():
                    fut.set_exception(err)
            return
        for _, _, fut in members:
            if not fut.done():
                fut.set_result(result)

    # -- one block watcher per client: waiters sleep until a new block, instead of each polling --
    def _ensure_watcher(self) -> None:
        if self._watcher is None or self._watcher.done():
            self._watcher = asyncio.create_task(self._watch_blocks(), name="chain-block-watcher")

    async def _watch_blocks(self) -> None:
        """Follow new blocks; remember which transactions they hold (the last 256 blocks)."""
        last: int | None = None
        while True:
            try:
                head = await self.block_number()
                for n in range(head if last is None else last + 1, head + 1):
                    blk = await self.raw("eth_getBlockByNumber", hex(n), False)
                    hashes = [str(t).lower() for t in (blk or {}).get("transactions") or []]
                    self._blocks.append((n, hashes))
                    for t in hashes:
                        self._mined[t] = n
                while len(self._blocks) > 256:
                    for t in self._blocks.popleft()[1]:
                        self._mined.pop(t, None)
                if last is None or head > last:
                    self._head = head
                    self._new_block.set()
                    self._new_block = asyncio.Event()
                last = head
            except ChainError as err:        # RPC down: waiters time out on their own deadlines
                log.debug("block watcher: %s", err)
            await asyncio.sleep(self.settings.poll_interval)

    async def _next_block(self, timeout: float) -> None:
        self._ensure_watcher()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):        # (not wait_for: see rpc())
                await self._new_block.wait()

    async def _await_included(self, tx_hash: str, deadline: float, nonce: int | None = None) -> tuple[str, Any]:
        """Wait until mined (("mined", receipt)) or gone (("dropped"|"replaced", None)).

        The receipt is asked for at once (an automining node has it), then whenever the block
        watcher sees the transaction in a block, and at least every ``recheck`` seconds (which is
        also when a transaction the node forgot is found dropped or replaced).
        """
        sender = (await self._sender()) if self.key_ref is not None else None
        recheck = max(1.0, 8 * self.settings.poll_interval)
        checked = -math.inf
        while True:
            if tx_hash in self._mined or time.monotonic() - checked >= recheck:
                checked = time.monotonic()
                state, obj = await self._tx_state(tx_hash)
                if state == "mined":
                    return state, obj
                if state == "pending":
                    nonce = int(obj["nonce"])
                if state == "unknown":
                    if nonce is not None and sender is not None:
                        used = _int(await self.raw("eth_getTransactionCount", sender, "latest"))
                        if used > nonce:
                            return "replaced", None
                    return "dropped", None
            if time.monotonic() > deadline:
                raise ChainError("AwaitingInclusion", f"transaction {tx_hash} is still pending; it will be "
                                                      "followed on the next attempt", transient=True)
            await self._next_block(self.settings.poll_interval * 4)

    async def _await_confirmations(self, tx_hash: str, block: int, deadline: float,
                                   need: int | None = None) -> int:
        need = max(self.settings.confirmations if need is None else need, 1)
        head = await self.block_number()
        while True:
            confirmations = head - block + 1
            if confirmations >= need:
                return confirmations
            if time.monotonic() > deadline:
                raise ChainError("AwaitingConfirmations", f"transaction {tx_hash} has {confirmations} of {need} "
                                                          "confirmations; waiting continues on the next attempt",
                                 transient=True)
            await self._next_block(self.settings.poll_interval * 4)
            head = max(head, self._head)

    async def _once(self, *, name: str, done: Callable[[], Awaitable[TxResult | None]],
                    data: Callable[[], str], known_tx: str | None, known_nonce: int | None,
                    on_sent: OnSent | None, confirmations: int | None,
                    batch: tuple[bytes, bytes, bytes, str] | None = None) -> TxResult:
        """The exactly-once loop shared by anchor and revoke (``batch``: an anchor that may share a transaction)."""
        await self.check()
        deadline = time.monotonic() + self.settings.receipt_timeout
        notes: list[str] = []
        tx_hash, nonce = known_tx or None, known_nonce
        for turn in range(6):    # bounded: each turn is a send, a drop or a replacement
            # The look-up before sending: on a fresh start it is the gas estimate itself (a simulation
            # of anchor()/revoke() against the current contract state, which reverts AlreadyAnchored /
            # AlreadyRevoked / NotAnchored, then read with done()); after that, an explicit read.
            found = None if (turn == 0 and tx_hash is None) else await done()
            if found is not None:
                found.notes = notes + found.notes
                found.already = tx_hash is None and not notes
                return found
            if tx_hash is None:
                try:
                    if batch is not None and turn == 0:
                        tx_hash, nonce = await self._batched(batch, on_sent)
                    else:
                        tx_hash, nonce = await self._send(data(), self.contract.address, on_sent)
                except ChainError as err:
                    if err.reason in ("RevertAlreadyAnchored", "RevertAlreadyRevoked", "RevertNotAnchored"):
                        continue       # already there (or nothing to revoke): done() reads and says which
                    raise
            else:
                notes.append(f"resumed {tx_hash}")
            state, receipt = await self._await_included(tx_hash, deadline, nonce)
            if state != "mined":
                log.warning("%s transaction %s was %s; looking the record up before sending again",
                            name, tx_hash, state)
                notes.append(f"{state} {tx_hash}")
                self._next_nonce = None      # a dropped nonce must be reused: ask the node again
                tx_hash = nonce = None
                continue
            if receipt["status"] != 1:
                found = await done()
                if found is not None:
                    found.notes = notes + [f"reverted {tx_hash} (already on chain)"]
                    return found
                raise ChainError("TransactionReverted", f"{name} transaction {tx_hash} reverted in block "
                                                        f"{receipt['blockNumber']}")
            block = int(receipt["blockNumber"])
            need = self.settings.confirmations if confirmations is None else confirmations
            if need <= 1:                                      # inclusion is the one confirmation
                return TxResult(tx_hash, block, 1, notes=notes)
            got = await self._await_confirmations(tx_hash, block, deadline, confirmations)
            state, receipt = await self._tx_state(tx_hash)     # still in the canonical chain?
            if state != "mined":
                notes.append(f"reorged out {tx_hash}")
                continue
            return TxResult(tx_hash, int(receipt["blockNumber"]), got, notes=notes)
        raise ChainError("TooManyRetries", f"{name}: the transaction was dropped or replaced too many times",
                         transient=True)

    async def anchor(self, model_hash: str | bytes, provenance_root: str | bytes, round_id: str | bytes,
                     uri: str, *, known_tx: str | None = None, known_nonce: int | None = None,
                     on_sent: OnSent | None = None, confirmations: int | None = None) -> TxResult:
        h, root, rid = _h32(model_hash), _h32(provenance_root), _h32(round_id)

        async def done() -> TxResult | None:
            rec = await self.lookup(h)
            if not rec.exists:
                return None
            if rec.provenance_root != root or rec.round_id != rid:
                raise ChainError("AnchoredDifferently", "this model hash is already anchored with a different "
                                                        "provenance root or round id; it cannot be re-anchored")
            deadline = time.monotonic() + self.settings.receipt_timeout
            tx = await self.event_tx("Anchored", h, rec.block_number)
            got = await self._await_confirmations(tx, rec.block_number, deadline, confirmations)
            return TxResult(tx, rec.block_number, got)

        batch = (h, root, rid, uri) if self.settings.batch_window > 0 else None
        return await self._once(name="anchor", done=done, known_tx=known_tx, known_nonce=known_nonce,
                                on_sent=on_sent, confirmations=confirmations, batch=batch,
                                data=lambda: encode_call("anchor", [h, root, rid, uri]))

    async def revoke(self, model_hash: str | bytes, reason: str, *, known_tx: str | None = None,
                     known_nonce: int | None = None, on_sent: OnSent | None = None,
                     confirmations: int | None = None) -> TxResult:
        h = _h32(model_hash)

        async def done() -> TxResult | None:
            rec = await self.lookup(h)
            if not rec.exists:
                raise ChainError("NotAnchored", "this model hash is not anchored on chain; nothing to revoke")
            if not rec.revoked:
                return None
            deadline = time.monotonic() + self.settings.receipt_timeout
            tx = await self.event_tx("Revoked", h, rec.revoked_block)
            got = await self._await_confirmations(tx, rec.revoked_block, deadline, confirmations)
            return TxResult(tx, rec.revoked_block, got)

        return await self._once(name="revoke", done=done, known_tx=known_tx, known_nonce=known_nonce,
                                on_sent=on_sent, confirmations=confirmations,
                                data=lambda: encode_call("revoke", [h, reason[:1024]]))

    async def deploy(self) -> tuple[str, str]:
        """Deploy ModelRegistry from the committed artifact; returns (address, tx hash)."""
        node_id = _int(await self.raw("eth_chainId"))
        if node_id != self.settings.chain_id:
            raise ChainError("ChainIdMismatch", f"the RPC node serves chain id {node_id}, not the configured "
                                                f"{self.settings.chain_id}; nothing was deployed")
        tx_hash, _ = await self._send(ARTIFACT["bytecode"], None, None)
        deadline = time.monotonic() + self.settings.receipt_timeout
        state, receipt = await self._await_included(tx_hash, deadline)
        if state != "mined" or receipt["status"] != 1:
            raise ChainError("DeployFailed", f"the deployment transaction {tx_hash} was {state} "
                                             f"(status {receipt and receipt['status']})")
        await self._await_confirmations(tx_hash, int(receipt["blockNumber"]), deadline)
        return to_checksum_address(receipt["contractAddress"]), tx_hash

    async def set_registrar(self, address: str, allowed: bool = True) -> str:
        await self.check()
        data = self.contract.encode_abi("setRegistrar", args=[to_checksum_address(address), allowed])
        tx_hash, _ = await self._send(data, self.contract.address, None)
        state, receipt = await self._await_included(tx_hash, time.monotonic() + self.settings.receipt_timeout)
        if state != "mined" or receipt["status"] != 1:
            raise ChainError("TransactionReverted", f"setRegistrar transaction {tx_hash} failed ({state})")
        return tx_hash
