"""ModelRegistry.sol against a real anvil: every function, every event, every revert path."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest
from web3 import HTTPProvider, Web3
from web3.exceptions import ContractCustomError

from fedcare.integrations.chain import ABI, ARTIFACT, ERROR_SELECTORS
from fedcare.sandbox.anvil import REPO

H1, H2, H3 = b"\x11" * 32, b"\x12" * 32, b"\x13" * 32
ROOT, RID = b"\x22" * 32, b"\x33" * 32
ZERO = b"\x00" * 32


@pytest.fixture()
def w3(anvil) -> Web3:
    return Web3(HTTPProvider(anvil.url, request_kwargs={"timeout": 10}))


@pytest.fixture()
def reg(w3: Web3):
    owner = w3.eth.accounts[0]
    factory = w3.eth.contract(abi=ABI, bytecode=ARTIFACT["bytecode"])
    receipt = w3.eth.wait_for_transaction_receipt(factory.constructor().transact({"from": owner}), timeout=10)
    return w3.eth.contract(address=receipt["contractAddress"], abi=ABI)


def reverts(call, name: str, *args: object) -> None:
    with pytest.raises(ContractCustomError) as info:
        call.transact({"from": args[0]}) if args else call.transact()
    data = info.value.data if isinstance(info.value.data, str) else info.value.data["data"]
    assert ERROR_SELECTORS[data.removeprefix("0x")[:8]] == name


def send(w3: Web3, call, sender: str) -> dict:
    return w3.eth.wait_for_transaction_receipt(call.transact({"from": sender}), timeout=10)


def test_artifact_is_current() -> None:
    """The committed ABI + bytecode match a fresh solcjs build (also `make contracts-check`)."""
    if shutil.which("node") is None or not (REPO / "contracts/node_modules/solc").is_dir():
        pytest.skip("solc is not installed: run `make contracts-deps` (npm ci --prefix contracts)")
    done = subprocess.run(["node", "contracts/compile.js", "--check"], cwd=REPO, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert json.loads((REPO / "operator/fedcare/integrations/contracts/ModelRegistry.json").read_text())[
        "compiler"].startswith("solc 0.8.37")


def test_deploy_sets_owner_and_registrar(w3: Web3, reg) -> None:
    owner = w3.eth.accounts[0]
    assert reg.functions.owner().call() == owner
    assert reg.functions.isRegistrar(owner).call() is True
    assert reg.functions.isRegistrar(w3.eth.accounts[1]).call() is False
    assert reg.functions.anchoredCount().call() == 0


def test_anchor_stores_a_compact_record_and_emits(w3: Web3, reg) -> None:
    owner = w3.eth.accounts[0]
    assert reg.functions.isAnchored(H1).call() is False
    receipt = send(w3, reg.functions.anchor(H1, ROOT, RID, "file:///models/m.safetensors"), owner)
    rec = reg.functions.get(H1).call()
    assert rec == (ROOT, RID, owner, receipt["blockNumber"], 0)
    assert reg.functions.isAnchored(H1).call() is True
    assert reg.functions.isRevoked(H1).call() is False
    assert reg.functions.anchoredCount().call() == 1
    (event,) = reg.events.Anchored().process_receipt(receipt)
    assert event["args"]["modelHash"] == H1 and event["args"]["uri"] == "file:///models/m.safetensors"
    assert event["args"]["registrar"] == owner and event["args"]["provenanceRoot"] == ROOT


def test_reanchoring_reverts_even_after_revocation(w3: Web3, reg) -> None:
    owner = w3.eth.accounts[0]
    send(w3, reg.functions.anchor(H1, ROOT, RID, "u"), owner)
    reverts(reg.functions.anchor(H1, ROOT, RID, "u"), "AlreadyAnchored", owner)
    reverts(reg.functions.anchor(H1, b"\x44" * 32, RID, "other"), "AlreadyAnchored", owner)
    send(w3, reg.functions.revoke(H1, "bad data"), owner)
    reverts(reg.functions.anchor(H1, ROOT, RID, "u"), "AlreadyAnchored", owner)


def test_zero_hash_and_zero_root_revert(w3: Web3, reg) -> None:
    owner = w3.eth.accounts[0]
    reverts(reg.functions.anchor(ZERO, ROOT, RID, "u"), "ZeroModelHash", owner)
    reverts(reg.functions.anchor(H1, ZERO, RID, "u"), "ZeroProvenanceRoot", owner)


def test_revoke_keeps_the_record_and_is_one_way(w3: Web3, reg) -> None:
    owner = w3.eth.accounts[0]
    anchored = send(w3, reg.functions.anchor(H1, ROOT, RID, "u"), owner)
    receipt = send(w3, reg.functions.revoke(H1, "leaked test data"), owner)
    rec = reg.functions.get(H1).call()
    assert rec == (ROOT, RID, owner, anchored["blockNumber"], receipt["blockNumber"])
    assert reg.functions.isRevoked(H1).call() is True
    (event,) = reg.events.Revoked().process_receipt(receipt)
    assert event["args"]["reason"] == "leaked test data"
    reverts(reg.functions.revoke(H1, "again"), "AlreadyRevoked", owner)


def test_revoke_of_an_unknown_hash_reverts(w3: Web3, reg) -> None:
    reverts(reg.functions.revoke(H2, "x"), "NotAnchored", w3.eth.accounts[0])


def test_only_registrars_write(w3: Web3, reg) -> None:
    owner, other = w3.eth.accounts[0], w3.eth.accounts[1]
    reverts(reg.functions.anchor(H1, ROOT, RID, "u"), "NotRegistrar", other)
    reverts(reg.functions.anchorBatch([H1], [ROOT], [RID], ["u"]), "NotRegistrar", other)
    send(w3, reg.functions.anchor(H1, ROOT, RID, "u"), owner)
    reverts(reg.functions.revoke(H1, "x"), "NotRegistrar", other)
    send(w3, reg.functions.setRegistrar(other, True), owner)
    receipt = send(w3, reg.functions.anchor(H2, ROOT, RID, "u"), other)
    assert reg.functions.get(H2).call()[2] == other
    assert receipt["status"] == 1
    send(w3, reg.functions.setRegistrar(other, False), owner)
    reverts(reg.functions.anchor(H3, ROOT, RID, "u"), "NotRegistrar", other)


def test_only_the_owner_manages_registrars_and_ownership(w3: Web3, reg) -> None:
    owner, other, third = w3.eth.accounts[:3]
    reverts(reg.functions.setRegistrar(third, True), "NotOwner", other)
    reverts(reg.functions.transferOwnership(other), "NotOwner", other)
    reverts(reg.functions.setRegistrar("0x" + "00" * 20, True), "ZeroAddress", owner)
    reverts(reg.functions.transferOwnership("0x" + "00" * 20), "ZeroAddress", owner)
    receipt = send(w3, reg.functions.transferOwnership(other), owner)
    (event,) = reg.events.OwnershipTransferred().process_receipt(receipt)
    assert event["args"]["newOwner"] == other
    assert reg.functions.owner().call() == other
    reverts(reg.functions.setRegistrar(third, True), "NotOwner", owner)
    send(w3, reg.functions.setRegistrar(third, True), other)
    assert reg.functions.isRegistrar(third).call() is True


def test_batch_anchors_each_record_on_its_own(w3: Web3, reg) -> None:
    owner = w3.eth.accounts[0]
    receipt = send(w3, reg.functions.anchorBatch([H1, H2], [ROOT, b"\x23" * 32], [RID, RID], ["a", "b"]), owner)
    assert len(reg.events.Anchored().process_receipt(receipt)) == 2
    assert reg.functions.get(H2).call()[0] == b"\x23" * 32
    assert reg.functions.anchoredCount().call() == 2


def test_batch_reverts_as_a_whole(w3: Web3, reg) -> None:
    owner = w3.eth.accounts[0]
    reverts(reg.functions.anchorBatch([H1, H2], [ROOT], [RID, RID], ["a", "b"]), "LengthMismatch", owner)
    reverts(reg.functions.anchorBatch([H1], [ROOT], [RID, RID], ["a"]), "LengthMismatch", owner)
    reverts(reg.functions.anchorBatch([H1], [ROOT], [RID], ["a", "b"]), "LengthMismatch", owner)
    reverts(reg.functions.anchorBatch([H1, H1], [ROOT, ROOT], [RID, RID], ["a", "a"]), "AlreadyAnchored", owner)
    reverts(reg.functions.anchorBatch([H1, ZERO], [ROOT, ROOT], [RID, RID], ["a", "b"]), "ZeroModelHash", owner)
    assert reg.functions.isAnchored(H1).call() is False


def test_every_custom_error_is_exercised() -> None:
    """Guards this file: a new revert path in the contract must get a test here."""
    tested = {"NotOwner", "NotRegistrar", "ZeroAddress", "ZeroModelHash", "ZeroProvenanceRoot",
              "AlreadyAnchored", "NotAnchored", "AlreadyRevoked", "LengthMismatch"}
    assert set(ERROR_SELECTORS.values()) == tested
