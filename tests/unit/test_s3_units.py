"""Pure parts of the artifact store's S3 option: URIs, settings, which files are copied, backoff."""

from __future__ import annotations

import pytest

from fedcare.hub.artifact_upload import S3ResultStore, result_files
from fedcare.integrations.s3 import ObjectStoreError, S3Store, endpoint_from_env, join, parse_uri, region_from_env
from fedcare.release import artifact as art


def test_s3_uris():
    assert parse_uri("s3://models/fedcare/a/model.safetensors") == ("models", "fedcare/a/model.safetensors")
    assert parse_uri("s3://models") == ("models", "")
    for bad, why in (("s3://UPPER/x", "valid bucket name"), ("s3://ab/x", "valid bucket name"),
                     ("s3://models/a/../b", "'..'"), ("s3://models/x?versionId=1", "no query"),
                     ("gs://models/x", "not an s3://"), ("s3://key:topsecret@models/x", "no user info")):
        with pytest.raises(ObjectStoreError, match=why.replace("?", r"\?").replace(".", r"\.")):
            parse_uri(bad)
    with pytest.raises(ObjectStoreError) as err:
        parse_uri("s3://key:topsecret@models/x")
    assert "topsecret" not in str(err.value)
    assert join("", "/p/", "default/r-1/attempt-1", "model.safetensors") == "p/default/r-1/attempt-1/model.safetensors"
    assert art.sibling("s3://models/a/model.safetensors", art.PROOFS) == "s3://models/a/provenance-proofs.json"
    art.check_uri("s3://models/p/a/model.safetensors")
    with pytest.raises(art.ArtifactError) as err:
        art.check_uri("ftp://m/x")
    assert "s3://bucket/key" in str(err.value)


def test_endpoint_and_region_from_the_environment():
    assert endpoint_from_env({}) == "https://s3.amazonaws.com" and region_from_env({}) == "us-east-1"
    env = {"AWS_ENDPOINT_URL": "http://a:1", "AWS_ENDPOINT_URL_S3": "http://b:2", "AWS_DEFAULT_REGION": "x-1"}
    assert endpoint_from_env(env) == "http://b:2" and region_from_env(env) == "x-1"
    assert endpoint_from_env({**env, "MINE": "http://c:3"}, "MINE") == "http://c:3"
    for bad in ("minio:9000", "ftp://minio", "http://minio:9000/bucket", "http://key:topsecret@minio:9000"):
        with pytest.raises(ObjectStoreError) as err:
            S3Store(bad)
        assert err.value.reason == "InvalidEndpoint" and "http(s)://host" in str(err.value)
        assert "topsecret" not in str(err.value)


def test_credentials_stay_out_of_repr():
    store = S3Store("http://minio:9000", access_key="AKIAEXAMPLEKEY", secret_key="very-secret")
    assert "AKIAEXAMPLEKEY" not in repr(store) and "very-secret" not in repr(store)
    assert "very-secret" not in repr(art.FetchPolicy(s3=store))


def test_result_files_model_last_no_dotfiles_no_links(tmp_path):
    (tmp_path / "rounds").mkdir()
    for name in ("model.safetensors", "model.safetensors.sha256", "provenance.json", "model-card.json",
                 "rounds/global-round-001.safetensors", ".provenance.json.tmp", "rounds/model.safetensors"):
        (tmp_path / name).write_text(name)
    (tmp_path / "outside").symlink_to("/etc/hostname")
    names = [p.relative_to(tmp_path).as_posix() for p in result_files(tmp_path)]
    assert names[-1] == "model.safetensors"
    assert sorted(names) == sorted(["model.safetensors", "model.safetensors.sha256", "provenance.json",
                                    "model-card.json", "rounds/global-round-001.safetensors",
                                    "rounds/model.safetensors"])


def test_failures_back_off_up_to_a_cap():
    st = S3ResultStore(S3Store("http://minio:9000"), "models", retry_base=5, retry_max=30)
    assert st.wait_left("r") == 0
    assert [st.failed("r") for _ in range(5)] == [5, 10, 20, 30, 30]
    assert 0 < st.wait_left("r") <= 30 and st.wait_left("other") == 0
    assert st.url == "s3://models"


async def test_a_round_starts_from_the_claims_copy_of_an_s3_release(tmp_path):
    import copy
    import pathlib

    import yaml

    from fedcare.api.validation import parse
    from fedcare.hub import initial_model
    from fedcare.hub.aggregator import AggregatorConfig

    root = pathlib.Path(__file__).resolve().parents[2]
    body = yaml.safe_load((root / "examples" / "federatedround-ultrasound.yaml").read_text())
    body["metadata"].update(namespace="default", uid="u" * 8)
    cfg = AggregatorConfig(artifact_dir=str(tmp_path), artifact_claim="fedcare-artifacts")
    s3 = S3ResultStore(S3Store("http://minio:9000"), "models", "fedcare/prod")
    model = tmp_path / "default" / "r0-1a2b3c4d" / "attempt-1" / "model.safetensors"
    model.parent.mkdir(parents=True)
    model.write_bytes(b"weights")

    async def start(uri: str, store=s3):
        b = copy.deepcopy(body)
        b["spec"]["model"]["initialModel"] = {"storageUri": uri, "digest": "sha256:" + "a" * 64}
        return await initial_model.resolve(None, b, parse("FederatedRound", b), cfg, store)

    ok = await start("s3://models/fedcare/prod/default/r0-1a2b3c4d/attempt-1/model.safetensors")
    assert ok.problem == "" and ok.run_config["initial-model"] == str(model)
    for uri in ("s3://other/fedcare/prod/default/r0-1a2b3c4d/attempt-1/model.safetensors",
                "s3://models/elsewhere/default/r0-1a2b3c4d/attempt-1/model.safetensors"):
        assert "(the hub's S3 copy)" in (await start(uri)).problem
    assert "is not in the hub's artifact store" in \
        (await start("s3://models/fedcare/prod/default/r0-1a2b3c4d/attempt-1/model.safetensors", None)).problem
    gone = await start("s3://models/fedcare/prod/default/r9-1a2b3c4d/attempt-1/model.safetensors")
    assert "does not exist in the artifact store" in gone.problem and "not S3" in gone.problem
    # a presigned URL as the initial model: refused without its signature or key id in the round's status
    signed = await start("https://models.s3.amazonaws.com/m.safetensors?X-Amz-Credential=AKIAEXAMPLEKEY"
                         "&X-Amz-Signature=deadbeefsig")
    assert "is not in the hub's artifact store" in signed.problem
    assert "deadbeefsig" not in signed.problem and "AKIAEXAMPLEKEY" not in signed.problem


def test_a_failure_that_cannot_fix_itself_waits_long_and_stale_entries_go(monkeypatch):
    import time as _time
    st = S3ResultStore(S3Store("http://minio:9000"), "models", retry_base=5, retry_max=30, retry_fatal=600)
    assert st.failed("r", transient=False) == 600 and st.wait_left("r") > 500
    assert st.failed("t") == 5
    st.verified["t"] = "a verified result"
    now = _time.monotonic()
    monkeypatch.setattr("fedcare.hub.artifact_upload.time.monotonic", lambda: now + 4 * 3600)
    st.failed("new")            # entries whose next try passed an hour ago (a round gone) are dropped
    assert set(st._backoff) == {"new"} and st.verified == {}


def test_redact_drops_query_fragment_and_user_info():
    from fedcare.integrations.s3 import redact
    url = ("https://user:pa55@bucket.s3.amazonaws.com/m/model.safetensors?X-Amz-Algorithm=AWS4-HMAC-SHA256"
           "&X-Amz-Credential=AKIAEXAMPLEKEY%2F20260101&X-Amz-Signature=deadbeefsig#frag")
    assert redact(url) == "https://bucket.s3.amazonaws.com/m/model.safetensors"
    for bad in (url.replace("https", "s3"), "s3://models/x?X-Amz-Signature=deadbeefsig"):
        with pytest.raises(ObjectStoreError) as err:
            parse_uri(bad)
        assert "deadbeefsig" not in str(err.value) and "AKIAEXAMPLEKEY" not in str(err.value)
        assert "pa55" not in str(err.value)
    with pytest.raises(ObjectStoreError) as err:
        S3Store("http://minio:9000/?X-Amz-Security-Token=tok3n")
    assert "tok3n" not in str(err.value) and err.value.reason == "InvalidEndpoint"


async def test_a_presigned_http_url_never_reaches_an_error():
    from fedcare.sandbox.anvil import free_port
    url = (f"http://127.0.0.1:{free_port()}/m/model.safetensors?X-Amz-Credential=AKIAEXAMPLEKEY"
           "&X-Amz-Signature=deadbeefsig")
    with pytest.raises(art.ArtifactError) as err:
        await art.read_uri(url, art.FetchPolicy(timeout=1, connect_timeout=0.5, attempts=2, base_delay=0.01))
    assert "127.0.0.1" in str(err.value)
    assert "deadbeefsig" not in str(err.value) and "AKIAEXAMPLEKEY" not in str(err.value)


def test_local_file_errors_are_not_blamed_on_the_endpoint(tmp_path):
    store = S3Store("http://127.0.0.1:9", access_key="k", secret_key="s")
    with pytest.raises(ObjectStoreError) as err:
        store.ensure_file(tmp_path / "missing.safetensors", "models", "k", "0" * 64)
    assert err.value.reason == "LocalFileError" and "endpoint URL" not in str(err.value)
    assert "missing.safetensors" in str(err.value) and not err.value.transient
    with pytest.raises(ObjectStoreError) as err:
        store.download("models", "k", tmp_path / "no-such-dir" / "model.safetensors")
    assert err.value.reason == "LocalFileError" and "endpoint URL" not in str(err.value)


async def test_a_publish_stops_at_its_budget(tmp_path):
    from fedcare.hub import round_progress as progress
    (tmp_path / "model.safetensors").write_bytes(b"w")
    st = S3ResultStore(S3Store("http://127.0.0.1:9", access_key="k", secret_key="s"), "models")
    with pytest.raises(ObjectStoreError) as err:      # the round's deadline passed: no S3 call at all
        await st.publish(tmp_path, "r", progress.Result("file:///x", "sha256:" + "0" * 64, ""), "r", budget=-5)
    assert err.value.reason == "UploadTimedOut" and err.value.transient and "0 of 1" in str(err.value)
