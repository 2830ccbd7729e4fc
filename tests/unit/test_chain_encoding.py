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
