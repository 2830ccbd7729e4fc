"""The chain client against a real anvil: exactly once through crashes, drops, replacements and outages."""

from __future__ import annotations

import asyncio
import io
import logging

import pytest
from eth_account import Account

from fedcare.integrations.chain import ChainClient, ChainError, RpcPolicy
from fedcare.integrations.keyref import EnvKeyRef
from fedcare.sandbox.anvil import DEV_KEY, DEV_KEY_2
from tests.support.chain import settings
from tests.support.netfault import Relay

H = "sha256:" + "ab" * 32
ROOT, RID = "cd" * 32, "ef" * 32


def anchored_events(anvil, address: str) -> list[dict]:
    topic = "0x" + __import__("eth_utils").keccak(text="Anchored(bytes32,bytes32,bytes32,address,string)").hex()
    return anvil.rpc("eth_getLogs", {"address": address, "fromBlock": "0x0", "toBlock": "latest",
                                     "topics": [topic]})


async def wait_for(pred, timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not pred():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached"
        await asyncio.sleep(0.02)


async def test_anchor_is_exactly_once_and_looked_up_first(anvil, dev_key, registry) -> None:
    async with ChainClient(settings(anvil, registry), dev_key) as client:
        first = await client.anchor(H, ROOT, RID, "file:///m")
        again = await client.anchor(H, ROOT, RID, "file:///m")
        rec = await client.lookup(H)
    assert not first.already and again.already and again.tx_hash == first.tx_hash
    assert rec.exists and rec.provenance_root.hex() == ROOT and rec.block_number == first.block_number
    assert len(anchored_events(anvil, registry)) == 1


async def test_reanchoring_with_another_root_is_refused(anvil, dev_key, registry) -> None:
    async with ChainClient(settings(anvil, registry), dev_key) as client:
        await client.anchor(H, ROOT, RID, "u")
        with pytest.raises(ChainError) as err:
            await client.anchor(H, "99" * 32, RID, "u")
    assert err.value.reason == "AnchoredDifferently"


async def test_waits_for_required_confirmations(anvil, dev_key, registry) -> None:
    async def miner() -> None:
        while True:
            await asyncio.sleep(0.1)
            await asyncio.to_thread(anvil.mine)

    task = asyncio.create_task(miner())
    try:
        async with ChainClient(settings(anvil, registry, confirmations=3), dev_key) as client:
            result = await client.anchor(H, ROOT, RID, "u")
    finally:
        task.cancel()
    assert result.confirmations >= 3
    assert int(anvil.rpc("eth_blockNumber"), 16) >= result.block_number + 2


async def test_wrong_chain_id_refuses_to_send(anvil, dev_key, registry) -> None:
    before = anvil.rpc("eth_getTransactionCount", Account.from_key(DEV_KEY).address, "pending")
    cfg = settings(anvil, registry)
    async with ChainClient(type(cfg)(**{**cfg.__dict__, "chain_id": 1}), dev_key) as client:
        with pytest.raises(ChainError) as err:
            await client.anchor(H, ROOT, RID, "u")
    assert err.value.reason == "ChainIdMismatch" and "31337" in str(err.value)
    assert anvil.rpc("eth_getTransactionCount", Account.from_key(DEV_KEY).address, "pending") == before


async def test_contract_address_without_code_is_refused(anvil, dev_key) -> None:
    async with ChainClient(settings(anvil, "0x" + "42" * 20), dev_key) as client:
        with pytest.raises(ChainError) as err:
            await client.anchor(H, ROOT, RID, "u")
    assert err.value.reason == "NoContractCode" and "fedcare chain deploy" in str(err.value)


async def test_insufficient_funds_is_a_clear_error_without_the_key(anvil, dev_key, registry, monkeypatch) -> None:
    poor = Account.create()
    monkeypatch.setenv("POOR_KEY", poor.key.hex())
    async with ChainClient(settings(anvil, registry), dev_key) as owner:
        await owner.set_registrar(poor.address)
    async with ChainClient(settings(anvil, registry), EnvKeyRef("POOR_KEY")) as client:
        with pytest.raises(ChainError) as err:
            await client.anchor(H, ROOT, RID, "u")
    assert err.value.reason == "InsufficientFunds"
    assert poor.address in str(err.value) and "fund" in str(err.value)
    assert poor.key.hex().removeprefix("0x") not in str(err.value)


async def test_gas_above_the_cap_is_refused(anvil, dev_key, registry) -> None:
    async with ChainClient(settings(anvil, registry, gas_cap=21_000), dev_key) as client:
        with pytest.raises(ChainError) as err:
            await client.anchor(H, ROOT, RID, "u")
    assert err.value.reason == "GasCapExceeded"


async def test_revoke_once_and_unknown_hash(anvil, dev_key, registry) -> None:
    async with ChainClient(settings(anvil, registry), dev_key) as client:
        with pytest.raises(ChainError) as err:
            await client.revoke(H, "nope")
        assert err.value.reason == "NotAnchored"
        await client.anchor(H, ROOT, RID, "u")
        first = await client.revoke(H, "bad")
        again = await client.revoke(H, "bad")
        rec = await client.lookup(H)
    assert again.already and again.tx_hash == first.tx_hash and rec.revoked and rec.exists


async def test_crash_between_send_and_receipt_anchors_once(anvil, dev_key, registry) -> None:
    anvil.automine(False)
    sent: list[tuple[str, int]] = []

    async def record(tx: str, nonce: int) -> None:
        sent.append((tx, nonce))

    async with ChainClient(settings(anvil, registry), dev_key) as client:
        task = asyncio.create_task(client.anchor(H, ROOT, RID, "u", on_sent=record))
        await wait_for(lambda: sent and anvil.rpc("eth_getTransactionByHash", sent[0][0]) is not None)
        task.cancel()                                  # the hub dies here: sent, not yet mined
        with pytest.raises(asyncio.CancelledError):
            await task
    anvil.mine()
    async with ChainClient(settings(anvil, registry), dev_key) as restarted:
        result = await restarted.anchor(H, ROOT, RID, "u", known_tx=sent[0][0], known_nonce=sent[0][1])
    assert result.tx_hash == sent[0][0] and len(sent) == 1
    assert len(anchored_events(anvil, registry)) == 1


async def test_crash_after_recording_before_broadcast_resends_once(anvil, dev_key, registry) -> None:
    class Crash(Exception):
        pass

    recorded: list[str] = []

    async def crash(tx: str, nonce: int) -> None:
        recorded.append(tx)
        raise Crash()      # the status write succeeded, the process died before broadcasting

    async with ChainClient(settings(anvil, registry), dev_key) as client:
        with pytest.raises(Crash):
            await client.anchor(H, ROOT, RID, "u", on_sent=crash)
    async with ChainClient(settings(anvil, registry), dev_key) as restarted:
        result = await restarted.anchor(H, ROOT, RID, "u", known_tx=recorded[0])
    assert "dropped " + recorded[0] in result.notes    # (the re-signed transaction may be identical)
    assert len(anchored_events(anvil, registry)) == 1


async def test_dropped_transaction_is_detected_and_sent_again(anvil, dev_key, registry) -> None:
    anvil.automine(False)
    sent: list[str] = []

    async def record(tx: str, nonce: int) -> None:
        sent.append(tx)

    async with ChainClient(settings(anvil, registry), dev_key) as client:
        task = asyncio.create_task(client.anchor(H, ROOT, RID, "u", on_sent=record))
        await wait_for(lambda: sent and anvil.rpc("eth_getTransactionByHash", sent[0]) is not None)
        await asyncio.sleep(0.2)                        # the client has seen it pending
        anvil.rpc("anvil_dropTransaction", sent[0])
        anvil.automine(True)
        result = await task
    assert f"dropped {sent[0]}" in result.notes and result.tx_hash == sent[1]
    assert len(anchored_events(anvil, registry)) == 1


async def test_replaced_transaction_is_detected(anvil, dev_key, registry) -> None:
    anvil.automine(False)
    sent: list[tuple[str, int]] = []

    async def record(tx: str, nonce: int) -> None:
        sent.append((tx, nonce))

    async with ChainClient(settings(anvil, registry), dev_key) as client:
        task = asyncio.create_task(client.anchor(H, ROOT, RID, "u", on_sent=record))
        await wait_for(lambda: sent and anvil.rpc("eth_getTransactionByHash", sent[0][0]) is not None)
        await asyncio.sleep(0.2)
        # Someone with the same key replaces it: same nonce, higher fees, a plain transfer.
        me = Account.from_key(DEV_KEY)
        replacement = Account.sign_transaction({
            "type": 2, "chainId": anvil.chain_id, "nonce": sent[0][1], "to": me.address, "value": 0,
            "gas": 21000, "maxFeePerGas": 10**12, "maxPriorityFeePerGas": 10**11}, DEV_KEY)
        anvil.rpc("eth_sendRawTransaction", "0x" + bytes(replacement.raw_transaction).hex())
        anvil.mine()
        anvil.automine(True)
        result = await task
    assert f"replaced {sent[0][0]}" in result.notes
    assert len(anchored_events(anvil, registry)) == 1


async def test_concurrent_releases_get_distinct_nonces(anvil, dev_key, registry) -> None:
    async with ChainClient(settings(anvil, registry), dev_key) as client:
        results = await asyncio.gather(*(client.anchor(f"{i:064x}", ROOT, RID, f"u{i}") for i in range(1, 25)))
    assert len({r.tx_hash for r in results}) == 24
    assert len(anchored_events(anvil, registry)) == 24


async def test_rpc_down_for_a_while_then_back_anchors_once(anvil, dev_key, registry) -> None:
    relay = Relay(anvil.port)
    patient = RpcPolicy(timeout=2.0, attempts=12, base_delay=0.1, max_delay=0.4)
    async with ChainClient(settings(anvil, registry, policy=patient), dev_key) as client:
        client.w3.provider.endpoint_uri = relay.url
        task = asyncio.create_task(client.anchor(H, ROOT, RID, "u"))
        await asyncio.sleep(0.6)                       # calls fail: nothing listens
        assert not task.done()
        await relay.up()
        try:
            result = await task
        finally:
            await relay.down()
    assert result.block_number > 0
    assert len(anchored_events(anvil, registry)) == 1


async def test_rpc_down_gives_up_after_bounded_retries(anvil, dev_key, registry) -> None:
    relay = Relay(anvil.port)                          # never up
    quick = RpcPolicy(timeout=0.5, attempts=3, base_delay=0.05, max_delay=0.1)
    async with ChainClient(settings(anvil, registry, policy=quick), dev_key) as client:
        client.w3.provider.endpoint_uri = relay.url
        with pytest.raises(ChainError) as err:
            await client.anchor(H, ROOT, RID, "u")
    assert err.value.reason == "ChainUnreachable" and err.value.transient
    assert "3 times" in str(err.value)


async def test_the_key_never_reaches_logs_or_errors(anvil, registry, monkeypatch) -> None:
    monkeypatch.setenv("K2", DEV_KEY_2)
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    root = logging.getLogger()
    root.addHandler(handler)
    old = root.level
    root.setLevel(logging.DEBUG)
    try:
        async with ChainClient(settings(anvil, registry), EnvKeyRef("K2")) as client:
            with pytest.raises(ChainError) as err:          # not a registrar: the estimate reverts
                await client.anchor(H, ROOT, RID, "u")
            assert repr(client.key_ref.load()) == "SecretKey(<redacted>)"
    finally:
        root.removeHandler(handler)
        root.setLevel(old)
    assert err.value.reason == "RevertNotRegistrar"
    key_hex = DEV_KEY_2.removeprefix("0x")
    assert key_hex not in stream.getvalue() and key_hex not in str(err.value) and key_hex not in repr(err.value)


async def test_key_used_elsewhere_between_sends_is_recovered(anvil, dev_key, registry) -> None:
    me = Account.from_key(DEV_KEY)
    async with ChainClient(settings(anvil, registry), dev_key) as client:
        await client.anchor(H, ROOT, RID, "u")
        nonce = int(anvil.rpc("eth_getTransactionCount", me.address, "pending"), 16)
        other = Account.sign_transaction({"type": 2, "chainId": anvil.chain_id, "nonce": nonce, "to": me.address,
                                          "value": 0, "gas": 21000, "maxFeePerGas": 10**11,
                                          "maxPriorityFeePerGas": 10**9}, DEV_KEY)
        anvil.rpc("eth_sendRawTransaction", "0x" + bytes(other.raw_transaction).hex())
        result = await client.anchor("12" * 32, ROOT, RID, "u")     # its local nonce is now stale
    assert result.block_number > 0 and len(anchored_events(anvil, registry)) == 2


async def test_verify_reader_agrees_with_the_client(anvil, dev_key, registry) -> None:
    from fedcare.release.registry_reader import ReaderError, RegistryReader

    async with ChainClient(settings(anvil, registry), dev_key) as client:
        await client.anchor(H, ROOT, RID, "u")
        await client.revoke(H, "x")
        rec = await client.lookup(H)
    reader = RegistryReader(anvil.url)
    got = await asyncio.to_thread(reader.get, registry, H)
    assert (got.provenance_root, got.round_id, got.block_number, got.revoked_block) == (
        rec.provenance_root.hex(), rec.round_id.hex(), rec.block_number, rec.revoked_block)
    assert got.registrar == rec.registrar.lower() and got.revoked
    assert not (await asyncio.to_thread(reader.get, registry, "77" * 32)).exists
    assert await asyncio.to_thread(reader.has_code, registry)
    assert not await asyncio.to_thread(reader.has_code, "0x" + "42" * 20)
    down = RegistryReader(f"http://127.0.0.1:{__import__('fedcare.sandbox.anvil').sandbox.anvil.free_port()}",
                          timeout=0.5, attempts=3, base_delay=0.01)
    with pytest.raises(ReaderError) as err:
        await asyncio.to_thread(down.chain_id)
    assert "3 times" in str(err.value)


async def test_batched_anchors_share_transactions_and_stay_verifiable(anvil, dev_key, registry) -> None:
    sent: dict[str, list[str]] = {}

    def recorder(key: str):
        async def on_sent(tx: str, nonce: int) -> None:
            sent.setdefault(key, []).append(tx)
        return on_sent

    cfg = settings(anvil, registry, batch_window=0.1, batch_max=10)
    async with ChainClient(cfg, dev_key) as client:
        await client.anchor("05" * 32, ROOT, RID, "first")            # already there: its batch falls back
        hashes = ["05" * 32] + [f"{i:064x}" for i in range(1, 25)]
        results = await asyncio.gather(*(client.anchor(x, ROOT, RID, "u", on_sent=recorder(x)) for x in hashes))
        records = [await client.lookup(x) for x in hashes]
    assert all(r.exists for r in records)
    assert len(anchored_events(anvil, registry)) == 25                     # exactly once each
    assert len({r.tx_hash for r in results[1:]}) < 24                      # shared transactions
    for x, r in zip(hashes[1:], results[1:], strict=True):
        assert r.tx_hash in sent[x]                                        # recorded before broadcast
