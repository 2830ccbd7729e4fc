"""Provenance Merkle tree, release digest, key references and artifact fetching (file:// and a real HTTP server)."""

from __future__ import annotations

import functools
import hashlib
import http.server
import json
import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedcare.integrations.keyref import EnvKeyRef, FileKeyRef, KeyRefError, SecretKey, parse_key_ref
from fedcare.release import artifact as art
from fedcare.release import merkle
from fedcare.release.digest import ReleaseDigest, round_id
from tests.support.releases import make_model

HEX = st.text("0123456789abcdef", min_size=64, max_size=64)
LEAF = st.builds(merkle.Leaf, st.integers(0, 50), st.sampled_from(["global", "update"]),
                 st.sampled_from(["", "rouen", "lyon", "lille"]), HEX)


@settings(max_examples=60, deadline=None)
@given(st.lists(LEAF, min_size=1, max_size=40, unique=True))
def test_every_leaf_proves_and_no_other_does(leaves):
    leaves = sorted(leaves)
    root = merkle.root(leaves)
    for leaf, proof in zip(leaves, merkle.proofs(leaves), strict=True):
        assert merkle.verify_proof(leaf, proof, root)
        forged = merkle.Leaf(leaf.round, leaf.kind, leaf.site, ("0" if leaf.sha256[0] != "0" else "1")
                             + leaf.sha256[1:])
        assert not merkle.verify_proof(forged, proof, root)


def test_leaf_and_node_hashes_are_domain_separated():
    a, b = merkle.Leaf(1, "update", "rouen", "a" * 64), merkle.Leaf(1, "update", "lyon", "b" * 64)
    root = merkle.root(sorted([a, b]))
    # an inner node passed off as a leaf cannot verify: leaves are prefixed 0x00, nodes 0x01
    assert root != hashlib.sha256(a.hash() + b.hash()).digest()
    assert not merkle.verify_proof(a, [], root)


def test_leaves_from_a_provenance_file(tmp_path):
    path, digest = make_model(tmp_path, rounds=3, sites=("rouen", "lyon"))
    doc = json.loads((tmp_path / "provenance.json").read_text())
    leaves = merkle.leaves_from_provenance(doc)
    assert len(leaves) == 4 + 3 * 2
    assert merkle.final_model_sha256(doc) == digest[7:]
    proofs = merkle.proof_document(leaves, digest[7:])
    assert proofs["format"] == "fedcare-provenance-merkle/v1" and len(proofs["leaves"]) == len(leaves)


@pytest.mark.parametrize("mutate, message", [
    (lambda d: d.update(format="other"), "'format' must be fedcare-provenance/v1"),
    (lambda d: d.update(rounds=[]), "'rounds' is missing or empty"),
    (lambda d: d["rounds"][1]["sites"]["lyon"].update(update_sha256="XYZ"), "rounds[1].sites.lyon.update_sha256"),
    (lambda d: d["rounds"][0].update(round="one"), "rounds[0]: 'round' must be an integer"),
])
def test_malformed_provenance_names_the_field(tmp_path, mutate, message):
    make_model(tmp_path, sites=("rouen", "lyon"))
    doc = json.loads((tmp_path / "provenance.json").read_text())
    mutate(doc)
    with pytest.raises(merkle.ProvenanceError) as err:
        merkle.leaves_from_provenance(doc)
    assert message in str(err.value)


def test_release_digest_is_deterministic_and_documented():
    d = ReleaseDigest("ultrasound-cnn", "1.0.0", "a" * 64, "b" * 64, round_id("default", "r1"))
    assert d.message() == ReleaseDigest(**d.__dict__).message()
    assert d.message().startswith(b'{"format":"fedcare-release-digest/v1","modelName":"ultrasound-cnn"')
    assert json.loads(d.message())["roundId"] == hashlib.sha256(b"default/r1").hexdigest()
    assert round_id(None, None) == hashlib.sha256(b"").hexdigest()


@pytest.mark.parametrize("uri, reason", [
    ("file://relative/model", "UnsupportedURI"), ("file:///a/../etc/passwd", "UnsupportedURI"),
    ("ftp://host/model", "UnsupportedURI"), ("model.safetensors", "UnsupportedURI"),
])
def test_bad_uris_are_refused(uri, reason):
    with pytest.raises(art.ArtifactError) as err:
        art.check_uri(uri)
    assert err.value.reason == reason


async def test_file_artifact_hash_and_missing(tmp_path):
    path, digest = make_model(tmp_path)
    assert await art.sha256_uri(path.as_uri()) == digest[7:]
    with pytest.raises(art.ArtifactError) as err:
        await art.sha256_uri((tmp_path / "nope").as_uri())
    assert err.value.reason == "ArtifactNotFound"
    assert await art.read_uri((tmp_path / "nope.json").as_uri()) is None


@pytest.fixture()
def http_server(tmp_path):
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    thread.join(5)


async def test_http_artifact_and_sibling_files(tmp_path, http_server):
    path, digest = make_model(tmp_path / "m")
    uri = f"{http_server}/m/model.safetensors"
    assert await art.sha256_uri(uri) == digest[7:]
    prov = await art.read_uri(art.sibling(uri, art.PROVENANCE))
    assert json.loads(prov)["format"] == "fedcare-provenance/v1"
    assert await art.read_uri(f"{http_server}/m/missing.json") is None
    with pytest.raises(art.ArtifactError) as err:
        await art.sha256_uri(f"{http_server}/m/missing.safetensors")
    assert err.value.reason == "ArtifactNotFound"
    assert art.write_beside(uri, "x.json", b"{}") is None          # remote stores are read-only to us


async def test_http_server_down_gives_up_after_bounded_retries():
    from fedcare.sandbox.anvil import free_port
    policy = art.FetchPolicy(timeout=1.0, connect_timeout=0.5, attempts=3, base_delay=0.01, max_delay=0.05)
    with pytest.raises(art.ArtifactError) as err:
        await art.sha256_uri(f"http://127.0.0.1:{free_port()}/model", policy)
    assert err.value.reason == "ArtifactUnreachable" and err.value.transient and "3 times" in str(err.value)


def test_key_references_never_show_the_key(tmp_path, monkeypatch):
    key = "0x" + "ab" * 32
    monkeypatch.setenv("K", key)
    loaded = EnvKeyRef("K").load()
    assert loaded.reveal() == key and "ab" * 32 not in repr(loaded) + str(loaded)
    (tmp_path / "k").write_text(key[2:] + "\n")
    assert FileKeyRef(tmp_path / "k").load().reveal() == key
    monkeypatch.setenv("BAD", "not-a-key-" + "cd" * 20)
    with pytest.raises(KeyRefError) as err:
        EnvKeyRef("BAD").load()
    assert "cd" * 20 not in str(err.value) and "env:BAD" in str(err.value)
    with pytest.raises(KeyRefError):
        EnvKeyRef("UNSET_VARIABLE_X").load()
    with pytest.raises(KeyRefError):
        FileKeyRef(tmp_path / "missing").load()
    with pytest.raises(KeyRefError):
        parse_key_ref("vault-typo:x")
    with pytest.raises(KeyRefError):
        SecretKey("12")
