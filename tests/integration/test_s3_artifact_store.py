"""The artifact store's S3-compatible option against a real S3 server (S3Proxy).

The client (integrations/s3.py), the release pipeline's s3:// artifacts (release/artifact.py),
the hub's copy of a round's result (hub/artifact_upload.py, Reconciler.complete) and its
failures: server down or hanging, wrong credentials, a missing bucket, a digest mismatch.
"""

from __future__ import annotations

import asyncio
import copy
import hashlib
import json
import logging
import pathlib
import re
import socket
import time

import pytest
import yaml

from fedcare import cli
from fedcare.api.resources import API_VERSION
from fedcare.api.validation import parse
from fedcare.hub import round_progress as progress
from fedcare.hub.aggregator import AggregatorConfig
from fedcare.hub.artifact_upload import S3ResultStore
from fedcare.hub.flower_runs import FlowerCLI
from fedcare.hub.round_scheduler import ROUND_UID_LABEL, Reconciler, RoundConfig
from fedcare.api.resources import site_namespace
from fedcare.integrations.kube import Ref
from fedcare.integrations.s3 import ObjectStoreError, S3Policy, S3Store
from fedcare.release import artifact as art
from fedcare.release.checks import Refused, verify
from fedcare.api.model_release import ModelReleaseSpec
from fedcare.sandbox.anvil import free_port
from fedcare.sandbox.kubeconfig import write_kubeconfig
from tests.integration.test_release_pipeline import condition, config
from tests.support.harness import eventually
from tests.support.releases import make_model
from tests.support.s3 import BUCKET, s3  # noqa: F401

ROOT = pathlib.Path(__file__).resolve().parents[2]
ROUND = yaml.safe_load((ROOT / "examples" / "federatedround-ultrasound.yaml").read_text())
ROUNDS = Ref(API_VERSION, "federatedrounds", "default")
CLAIM = "fedcare-artifacts"
QUICK = S3Policy(connect_timeout=0.5, read_timeout=0.5, attempts=3, backoff=0.05, max_backoff=0.2)


def sha(path: pathlib.Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def secrets_of(srv, *extra: str) -> list[str]:
    return [srv.access_key, srv.secret_key, *extra]


# -- the client ----------------------------------------------------------------------------------
async def test_upload_download_round_trip_with_digest_and_no_second_upload(s3, tmp_path):
    store = s3.store()
    path, digest = make_model(tmp_path / "m", size=6 << 20)       # above the SDK's 5 MiB part size: multipart
    key = "trip/model.safetensors"
    assert await asyncio.to_thread(store.ensure_file, path, BUCKET, key, digest[7:]) is True
    stat = store.stat(BUCKET, key)
    assert stat is not None and stat.size == path.stat().st_size and stat.sha256 == digest[7:]
    first = (s3.basedir / BUCKET / key).stat().st_mtime_ns
    assert await asyncio.to_thread(store.ensure_file, path, BUCKET, key, digest[7:]) is False   # there already
    assert (s3.basedir / BUCKET / key).stat().st_mtime_ns == first                               # not rewritten
    got = await asyncio.to_thread(store.download, BUCKET, key, tmp_path / "back.safetensors")
    assert got == digest[7:] and (tmp_path / "back.safetensors").read_bytes() == path.read_bytes()
    # the same object through the release pipeline's URI functions
    policy = art.FetchPolicy(s3=store)
    uri = f"s3://{BUCKET}/{key}"
    assert await art.sha256_uri(uri, policy) == digest[7:]
    assert art.sibling(uri, art.PROVENANCE) == f"s3://{BUCKET}/trip/provenance.json"
    assert await art.read_uri(art.sibling(uri, art.PROVENANCE), policy) is None
    assert await art.put_beside(uri, art.PROOFS, b'{"leaves": []}', policy) == f"s3://{BUCKET}/trip/{art.PROOFS}"
    assert await art.read_uri(art.sibling(uri, art.PROOFS), policy) == b'{"leaves": []}'
    assert store.stat(BUCKET, "trip/absent") is None


async def test_a_digest_mismatch_is_refused(s3, tmp_path):
    store = s3.store()
    path, digest = make_model(tmp_path / "m")
    with pytest.raises(ObjectStoreError) as err:          # the read-back does not match what the caller verified
        await asyncio.to_thread(store.ensure_file, path, BUCKET, "mismatch/model.safetensors", "0" * 64)
    assert err.value.reason == "DigestMismatch" and "not trusted" in str(err.value)
    # an object changed in the bucket after the release named it: verification refuses it
    key = "changed/model.safetensors"
    await asyncio.to_thread(store.ensure_file, path, BUCKET, key, digest[7:])
    await asyncio.to_thread(store.put_bytes, BUCKET, "changed/provenance.json",
                            (path.parent / "provenance.json").read_bytes())
    spec = ModelReleaseSpec.model_validate({"modelName": "m", "version": "1.0.0",
                                            "artifact": {"storageUri": f"s3://{BUCKET}/{key}", "digest": digest}})
    policy = art.FetchPolicy(s3=store)
    assert (await verify(spec, "default", None, policy)).model_sha256 == digest[7:]
    await asyncio.to_thread(store.put_bytes, BUCKET, key, b"tampered", "application/octet-stream")
    with pytest.raises(Refused) as refused:
        await verify(spec, "default", None, policy)
    assert refused.value.reason == "DigestMismatch" and "Nothing was signed or anchored" in str(refused.value)


async def test_server_down_or_hanging_gives_up_after_bounded_retries(tmp_path):
    path, digest = make_model(tmp_path / "m")
    port = free_port()                                  # nothing listens: connection refused
    down = S3Store(f"http://127.0.0.1:{port}", policy=QUICK, access_key="k", secret_key="s")
    start = time.monotonic()
    with pytest.raises(ObjectStoreError) as err:
        await asyncio.to_thread(down.ensure_file, path, BUCKET, "x/model.safetensors", digest[7:])
    assert err.value.reason == "ObjectStoreUnreachable" and err.value.transient
    assert f"s3://{BUCKET}/x/model.safetensors at http://127.0.0.1:{port}" in str(err.value)
    assert "after 3 tries" in str(err.value) and "check the endpoint URL" in str(err.value)
    assert time.monotonic() - start < 30
    with socket.socket() as silent:                     # accepts connections, never answers: read timeouts
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        hang = S3Store(f"http://127.0.0.1:{silent.getsockname()[1]}", policy=QUICK, access_key="k", secret_key="s")
        start = time.monotonic()
        with pytest.raises(art.ArtifactError) as err:       # what the release pipeline sees
            await art.sha256_uri(f"s3://{BUCKET}/x/model.safetensors", art.FetchPolicy(s3=hang))
        took = time.monotonic() - start
    assert err.value.reason == "ObjectStoreUnreachable" and err.value.transient
    assert "ReadTimeoutError" in str(err.value)
    assert took < 30, took


async def test_wrong_credentials_say_where_and_leak_nothing(s3, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    path, digest = make_model(tmp_path / "m")
    wrong = "W" + s3.secret_key[1:]
    for store in (s3.store(secret_key=wrong), S3Store(s3.endpoint, access_key="AKIAWRONGKEY0000", secret_key=wrong)):
        with pytest.raises(ObjectStoreError) as err:
            await asyncio.to_thread(store.ensure_file, path, BUCKET, "creds/model.safetensors", digest[7:])
        text = str(err.value)
        assert err.value.reason == "AccessDenied" and not err.value.transient
        assert s3.endpoint in text and f"bucket {BUCKET!r}" in text and "AWS_SECRET_ACCESS_KEY" in text, text
        for secret in secrets_of(s3, wrong, "AKIAWRONGKEY0000"):
            assert secret not in text and secret not in repr(err.value) and secret not in repr(store)
    for secret in secrets_of(s3, wrong, "AKIAWRONGKEY0000"):
        assert secret not in caplog.text
    # no credentials at all: said so
    with pytest.raises(ObjectStoreError) as err:
        await asyncio.to_thread(S3Store(s3.endpoint).stat, BUCKET, "creds/x")
    assert "no credentials were found" in str(err.value)


async def test_a_missing_bucket_is_named(s3, tmp_path):
    path, digest = make_model(tmp_path / "m")
    for call in (lambda st: st.ensure_file(path, "no-such-bucket", "k/model.safetensors", digest[7:]),
                 lambda st: st.sha256("no-such-bucket", "k/model.safetensors")):
        with pytest.raises(ObjectStoreError) as err:
            await asyncio.to_thread(call, s3.store())
        assert err.value.reason == "BucketNotFound"
        assert "bucket 'no-such-bucket' does not exist" in str(err.value) and s3.endpoint in str(err.value)


def test_settings_from_the_environment_and_bad_urls():
    env = {"FEDCARE_ARTIFACT_S3_URL": "s3://models/fedcare/prod", "FEDCARE_ARTIFACT_S3_ENDPOINT": "http://minio:9000",
           "AWS_REGION": "eu-west-3"}
    st = S3ResultStore.from_env(env)
    assert (st.bucket, st.prefix, st.store.endpoint, st.store.region) == ("models", "fedcare/prod",
                                                                          "http://minio:9000", "eu-west-3")
    assert S3ResultStore.from_env({}) is None
    for url, why in (("s3://Bad_Bucket/x", "not a valid bucket name"), ("s3://models/../x", "contains '..'"),
                     ("https://bucket/x", "not an s3://bucket/key URI")):
        with pytest.raises(ValueError) as err:
            S3ResultStore.from_env({"FEDCARE_ARTIFACT_S3_URL": url})
        assert "FEDCARE_ARTIFACT_S3_URL" in str(err.value)
        assert why in str(err.value), str(err.value)
    # a bad endpoint: one clear error naming the variable and the Helm value, not a traceback
    with pytest.raises(ValueError) as err:
        S3ResultStore.from_env({"FEDCARE_ARTIFACT_S3_URL": "s3://models/p",
                                "FEDCARE_ARTIFACT_S3_ENDPOINT": "minio:9000?X-Amz-Security-Token=tok3n"})
    assert "FEDCARE_ARTIFACT_S3_ENDPOINT" in str(err.value) and "artifactStore.s3.endpoint" in str(err.value)
    assert "tok3n" not in str(err.value)
    with pytest.raises(ObjectStoreError, match="no user info"):
        S3Store("http://user:pw@minio:9000")
    with pytest.raises(art.ArtifactError, match="names no object"):
        art.check_uri("s3://models/")


# -- the hub: a finished round's result copied, its failures on the round -------------------------
def round_config(store: pathlib.Path, s3store: S3ResultStore | None) -> RoundConfig:
    return RoundConfig(flower=FlowerCLI(store.parent / "flwr-home"), app="",
                       aggregator=AggregatorConfig(artifact_dir=str(store), artifact_claim=CLAIM), s3=s3store)


async def finished_run(api, store: pathlib.Path, name: str = "s3r", release: bool = False):
    """A round whose Flower run finished: its result where the ServerApp writes it, status as the
    reconciler leaves it before complete()."""
    body = copy.deepcopy(ROUND)
    body["metadata"]["name"] = name
    if release:
        body["spec"]["release"] = {"create": True, "modelName": "ultrasound-cnn"}
    body = await api.create(ROUNDS, body)
    md = body["metadata"]
    folder = progress.out_dir(str(store), md["namespace"], md["name"], md["uid"], 1)
    path, digest = make_model(folder)
    (folder / "model.safetensors.sha256").write_text(f"{digest[7:]}  model.safetensors\n")
    (folder / "model-card.json").write_text('{"name": "ultrasound-cnn"}')
    (folder / "rounds").mkdir()
    (folder / "rounds" / "global-round-001.safetensors").write_bytes(b"round one")
    (folder / ".provenance.json.tmp").write_text("a writer's temporary: not uploaded")
    status = {"attempt": 1, "startTime": "2026-01-01T00:00:00Z", "deadline": "2099-01-01T00:00:00Z",
              "runId": "7", "runStatus": "finished:completed",
              "conditions": [{"type": t, "status": "True", "reason": "Reconciled", "message": "set by the test",
                              "lastTransitionTime": "2026-01-01T00:00:00Z"}
                             for t in ("Valid", "ParticipantsSelected", "AggregatorReady", "AssignmentsDispatched",
                                       "QuorumHealthy")]}
    body = await api.patch(Ref(API_VERSION, "federatedrounds", "default", name), {"status": status}, status=True)
    sites = [{"site": s, "status": "ok", "examples": 10, "reason": ""} for s in ("rouen", "lyon", "lille")]
    fields = {"runStatus": "finished:completed", "serverRounds": [{"round": 1, "sites": sites}],
              "roundsCompleted": 1, "currentRound": 1, "serverRound": "1/1", "participants": []}
    return body, folder, digest, fields


def cond(obj, ctype):
    return next((c for c in (obj or {}).get("status", {}).get("conditions", []) if c["type"] == ctype), {})


async def test_a_round_result_is_copied_once_and_s3_failures_hold_the_round(s3, api, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    store = tmp_path / "artifacts"
    ref = Ref(API_VERSION, "federatedrounds", "default", "s3r")
    # 1. wrong credentials: the round stays Running, Complete=False says where, why and what to do
    wrong = "W" + s3.secret_key[1:]
    bad = S3ResultStore(s3.store(secret_key=wrong, policy=QUICK), BUCKET, "rounds", retry_base=0.1)
    body, folder, digest, fields = await finished_run(api, store)
    spec = parse("FederatedRound", body)
    # a site's assignment of the round (its training pod): the run is over, so it goes even if the upload fails
    ra = Ref(API_VERSION, "roundassignments", site_namespace("rouen"), "s3r-rouen")
    await api.create(Ref("v1", "namespaces"), {"apiVersion": "v1", "kind": "Namespace",
                                               "metadata": {"name": site_namespace("rouen")}})
    await api.create(Ref(API_VERSION, "roundassignments", site_namespace("rouen")), {
        "apiVersion": API_VERSION, "kind": "RoundAssignment",
        "metadata": {"name": "s3r-rouen", "labels": {ROUND_UID_LABEL: body["metadata"]["uid"]}},
        "spec": {"roundRef": {"namespace": "default", "name": "s3r"}, "nodeName": "rouen",
                 "training": {"image": ROUND["spec"]["training"]["image"], "gpusPerSite": 1}}})
    await Reconciler(api, round_config(store, bad)).complete(body, spec, folder, fields)
    assert await api.get_or_none(ra) is None, "a failed upload must not keep the sites' training pods"
    held = await api.get(ref)
    st = held["status"]
    assert st.get("phase") != "Succeeded" and "result" not in st, st
    c = cond(held, "Complete")
    assert (c["status"], c["reason"]) == ("False", "ArtifactUploadFailed"), c
    assert f"s3://{BUCKET}/rounds" in c["message"] and s3.endpoint in c["message"], c["message"]
    assert "credentials were refused" in c["message"] and "AWS_SECRET_ACCESS_KEY" in c["message"]
    assert cond(held, "Ready")["reason"] == "ArtifactUploadFailed"
    # not transient: says what to fix, and is not retried at the short backoff
    assert "will not fix itself" in c["message"] and "artifactStore.s3.credentialsSecret" in c["message"]
    assert "restart the hub" in c["message"] and bad.wait_left(Reconciler(api, round_config(store, bad)).upload_key(body)) > 60
    # while it waits, a pass neither hashes the model nor calls S3
    calls = []
    real = progress.read_result
    progress.read_result = lambda *a: calls.append(a) or real(*a)
    try:
        await Reconciler(api, round_config(store, bad)).complete(await api.get(ref), spec, folder, fields)
    finally:
        progress.read_result = real
    assert calls == []
    # the hub's next pass of the round goes straight to the pending upload: no new SuperLink, no
    # assignments again, and the round is not failed for want of a SuperLink (this test's hub has no Vault)
    await api.patch(ref, {"status": {"aggregator": {"controlAddress": "127.0.0.1:9"}, "participants": [
        {"node": "rouen", "assignment": "s3r-rouen", "state": "Running", "reason": "", "lastRound": 1}]}},
                    status=True)
    await Reconciler(api, round_config(store, bad)).reconcile(await api.get(ref))
    after = await api.get(ref)
    assert after["status"].get("phase") not in ("Failed", "Succeeded"), after["status"]
    assert cond(after, "Complete")["reason"] == "ArtifactUploadFailed" and await api.get_or_none(ra) is None
    assert calls == [] and [p["metadata"]["name"] for p in await api.list(Ref("v1", "pods", "default"))] == []
    everything = json.dumps(held) + caplog.text
    for secret in secrets_of(s3, wrong):
        assert secret not in everything
    # 2. the server unreachable: same, transient, bounded
    down = S3ResultStore(S3Store(f"http://127.0.0.1:{free_port()}", policy=QUICK, access_key="k", secret_key="s"),
                         BUCKET, "rounds", retry_base=0.1)
    body = await api.get(ref)
    await Reconciler(api, round_config(store, down)).complete(body, spec, folder, fields)
    c = cond(await api.get(ref), "Complete")
    assert c["reason"] == "ArtifactUploadFailed" and "unreachable after 3 tries" in c["message"], c
    assert "Trying again in 0.1s" in c["message"] and "will not fix itself" not in c["message"], c
    # 3. the store works: every result file under the round's fixed keys, read back, status names S3
    good = S3ResultStore(s3.store(), BUCKET, "rounds")
    body = await api.get(ref)
    await Reconciler(api, round_config(store, good)).complete(body, spec, folder, fields)
    done = await api.get(ref)
    st = done["status"]
    assert st["phase"] == "Succeeded" and cond(done, "Complete")["status"] == "True", st
    relative = folder.relative_to(store).as_posix()
    assert st["result"]["storageUri"] == f"s3://{BUCKET}/rounds/{relative}/model.safetensors"
    assert st["result"]["digest"] == digest
    client = s3.store()
    keys = sorted(o.object_name for o in client.client().list_objects(BUCKET, prefix=f"rounds/{relative}/",
                                                                       recursive=True)
                  if not o.object_name.endswith("/"))     # jclouds' filesystem backend lists folders too
    assert keys == [f"rounds/{relative}/{f}" for f in ("model-card.json", "model.safetensors",
                                                       "model.safetensors.sha256", "provenance.json",
                                                       "rounds/global-round-001.safetensors")], keys
    for key in keys:
        local = folder / key.removeprefix(f"rounds/{relative}/")
        assert client.sha256(BUCKET, key) == sha(local)
    # 4. a restarted hub publishing again sends nothing (same keys, same bytes)
    stored, sent = await S3ResultStore(s3.store(), BUCKET, "rounds").publish(
        folder, relative, progress.read_result(folder, CLAIM, str(store)))
    assert sent == 0 and stored.storage_uri == st["result"]["storageUri"]
    # ... and an object changed in the bucket is replaced
    client.put_bytes(BUCKET, f"rounds/{relative}/provenance.json", b"{}")
    _, sent = await S3ResultStore(s3.store(), BUCKET, "rounds").publish(
        folder, relative, progress.read_result(folder, CLAIM, str(store)))
    assert sent == 1 and client.sha256(BUCKET, f"rounds/{relative}/provenance.json") == sha(folder / "provenance.json")


async def test_round_release_from_s3_is_verified_anchored_and_passes_fedcare_verify(
        s3, hub, api, emulator, anvil, dev_key, registry, tmp_path, capsys, monkeypatch):
    store = tmp_path / "artifacts"
    rc = round_config(store, S3ResultStore(s3.store(), BUCKET, "fedcare"))
    cfg = config(anvil, dev_key, chain_id=anvil.chain_id, contract_address=registry, confirmations=1)
    async with hub(release=cfg, round_config=rc) as logs:
        assert logs.ctx.release.fetch_policy.s3 is rc.s3.store     # the release pipeline reads the same store
        body, folder, digest, fields = await finished_run(api, store, "s3rel", release=True)
        await Reconciler(api, rc).complete(body, parse("FederatedRound", body), folder, fields)
        rnd = await api.get(Ref(API_VERSION, "federatedrounds", "default", "s3rel"))
        uri = rnd["status"]["result"]["storageUri"]
        assert uri.startswith(f"s3://{BUCKET}/fedcare/default/s3rel-") and rnd["status"]["phase"] == "Succeeded"
        name = rnd["status"]["result"]["modelReleaseRef"]
        obj = await condition(api, name, "Anchored", timeout=60)
        # release.json lost from the bucket (say the PUT failed after anchoring): the next pass writes it again
        manifest_key = uri.removeprefix(f"s3://{BUCKET}/").rsplit("/", 1)[0] + f"/{art.MANIFEST}"
        s3.store().client().remove_object(BUCKET, manifest_key)
        await api.patch(Ref(API_VERSION, "modelreleases", "default", name), {"spec": {"stage": "Staging"}})
        await eventually(lambda: asyncio.to_thread(s3.store().stat, BUCKET, manifest_key), timeout=30, interval=0.3,
                         message="release.json written again")
    assert obj["spec"]["artifact"] == {"storageUri": uri, "digest": digest}
    assert cond(obj, "Verified")["status"] == "True" and f"s3://{BUCKET}/" in cond(obj, "Verified")["message"]
    # the pipeline wrote its files beside the artifact, in the bucket
    client = s3.store()
    prefix = uri.removeprefix(f"s3://{BUCKET}/").rsplit("/", 1)[0]
    proofs = json.loads(client.read(BUCKET, f"{prefix}/{art.PROOFS}", 1 << 20))
    manifest = json.loads(client.read(BUCKET, f"{prefix}/{art.MANIFEST}", 1 << 20))
    assert proofs["root"] == obj["status"]["provenanceRoot"] and manifest["chain"]["txHash"].startswith("0x")
    # anyone with read access verifies it straight from the bucket (standard AWS variables)
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", s3.endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3.secret_key)
    scratch = tmp_path / "scratch"        # where `fedcare verify` downloads to: emptied again afterwards
    scratch.mkdir()
    monkeypatch.setattr("tempfile.tempdir", str(scratch))
    code = await asyncio.to_thread(cli.main, ["verify", uri, "--rpc", anvil.url, "--contract", registry])
    out = re.sub(r"\s+", " ", capsys.readouterr().out)
    assert code == 0, out
    assert list(scratch.iterdir()) == [], "fedcare verify left its download behind"
    assert "VERIFIED" in out and "FAIL" not in out
    # ... and `fedcare verify --release` reads the release from the cluster, the model from the bucket
    kubeconfig = str(write_kubeconfig(emulator.url, tmp_path / "kubeconfig"))
    code = await asyncio.to_thread(cli.main, ["verify", "--release", name, "--namespace", "default", "--kubeconfig",
                                              kubeconfig, "--rpc", anvil.url])
    out = re.sub(r"\s+", " ", capsys.readouterr().out)
    assert code == 0 and "VERIFIED" in out and "FAIL" not in out, out
    assert "no --rpc/--contract given" not in out and "confirmations" in out, out
    assert list(scratch.iterdir()) == [], "fedcare verify --release left its download behind"
    # a tampered object fails it
    client.put_bytes(BUCKET, uri.removeprefix(f"s3://{BUCKET}/"), b"tampered", "application/octet-stream")
    code = await asyncio.to_thread(cli.main, ["verify", uri, "--rpc", anvil.url, "--contract", registry])
    out = re.sub(r"\s+", " ", capsys.readouterr().out)
    assert code == 1 and "VERIFICATION FAILED" in out, out


async def test_an_https_endpoint_that_speaks_plain_http_says_tls_failed(s3, tmp_path):
    tls = S3Store(s3.endpoint.replace("http://", "https://"), policy=QUICK, access_key=s3.access_key,
                  secret_key=s3.secret_key)
    with pytest.raises(ObjectStoreError) as err:
        await asyncio.to_thread(tls.stat, BUCKET, "x")
    assert "TLS handshake failed" in str(err.value) and "SSL_CERT_FILE" in str(err.value), str(err.value)


async def test_s3_calls_do_not_wait_for_the_default_executor(s3, tmp_path):
    """A publish runs on the S3 store's own threads: the loop's default executor (Vault reads,
    Flower Control API calls) all busy does not hold it, and it does not occupy that executor."""
    import concurrent.futures
    import threading

    folder = tmp_path / "res"
    path, digest = make_model(folder)
    (folder / "model-card.json").write_text("{}")
    loop = asyncio.get_running_loop()
    busy = concurrent.futures.ThreadPoolExecutor(1)
    release = threading.Event()
    loop.set_default_executor(busy)
    blocker = loop.run_in_executor(None, release.wait, 60)        # the default executor's only worker, taken
    try:
        st = S3ResultStore(s3.store(), BUCKET, "pool")
        result = progress.Result("pvc://c/x", digest, "")
        stored, sent = await asyncio.wait_for(st.publish(folder, "r", result, "k"), 30)
        assert sent == 3 and stored.storage_uri == f"s3://{BUCKET}/pool/r/model.safetensors"
    finally:
        release.set()
        await blocker


async def test_a_full_local_disk_is_not_blamed_on_the_endpoint(s3):
    import errno
    store = s3.store()
    store.put_bytes(BUCKET, "disk/model.safetensors", b"w" * 1000, "application/octet-stream")

    def full_disk(chunk: bytes) -> None:      # what writing to a full disk raises
        raise OSError(errno.ENOSPC, "No space left on device")
    with pytest.raises(ObjectStoreError) as err:
        await asyncio.to_thread(store._stream, "GET", BUCKET, "disk/model.safetensors", full_disk)
    assert err.value.reason == "LocalFileError" and not err.value.transient
    assert "No space left on device" in str(err.value) and "endpoint URL" not in str(err.value)
