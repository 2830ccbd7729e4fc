"""The chain client's hot-path calldata (eth_abi directly) is byte-identical to web3's encode_abi."""

from __future__ import annotations

from web3 import Web3

from fedcare.integrations.chain import ABI, encode_call


def test_encode_call_matches_web3():
    c = Web3().eth.contract(address="0x5FbDB2315678afecb367f032d93F642f64180aa3", abi=ABI)
    h, g = b"\x01" * 32, bytes(range(32))
    cases = [("anchor", [h, g, h, "pvc://fedcare-artifacts/default/r/attempt-1/model.safetensors"]),
             ("anchorBatch", [[h, g], [g, h], [h, h], ["a", "é" * 70]]),
             ("revoke", [g, "label leak"])]
    for name, args in cases:
        assert encode_call(name, args) == c.encode_abi(name, args=args), name


async def test_rpc_cancelled_as_its_answer_arrives_stays_cancelled():
    """A hub stopping while an RPC answer lands in the same loop pass must stop (asyncio.wait_for on
    Python 3.11 returned the answer and swallowed the cancellation; the anchor then waited on)."""
    import asyncio

    import pytest

    from fedcare.integrations.chain import ChainClient, ChainSettings

    client = ChainClient(ChainSettings("http://127.0.0.1:9", 31337, ""))
    gate = asyncio.Event()

    async def call() -> int:
        await gate.wait()
        return 1

    task = asyncio.create_task(client.rpc("eth_blockNumber", call))
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    gate.set()            # the answer arrives ...
    task.cancel()         # ... in the same loop pass as the stop
    with pytest.raises(asyncio.CancelledError):
        await task
    await client.close()
