"""Helm values of the artifact store's S3-compatible option reach the hub; credentials only from a Secret."""

from __future__ import annotations

from tests.unit.test_chart import container_of, helm, render, render_error  # noqa: F401 (fixture)

S3 = {"artifactStore.existingClaim": "fedcare-artifacts", "artifactStore.s3.url": "s3://models/fedcare/prod",
      "artifactStore.s3.endpoint": "http://minio.storage:9000", "artifactStore.s3.region": "eu-west-3",
      "artifactStore.s3.credentialsSecret": "fedcare-s3"}


def env_of(container) -> dict[str, dict]:
    return {e["name"]: e for e in container["env"]}


def test_s3_values_reach_the_hub_with_credentials_from_the_secret(helm):
    _, container = container_of(render(helm, S3))
    env = env_of(container)
    assert env["FEDCARE_ARTIFACT_S3_URL"]["value"] == "s3://models/fedcare/prod"
    assert env["FEDCARE_ARTIFACT_S3_ENDPOINT"]["value"] == "http://minio.storage:9000"
    assert env["FEDCARE_ARTIFACT_S3_REGION"]["value"] == "eu-west-3"
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        assert "value" not in env[key]
        assert env[key]["valueFrom"] == {"secretKeyRef": {"name": "fedcare-s3", "key": key}}
    assert env["FEDCARE_ARTIFACT_CLAIM"]["value"] == "fedcare-artifacts"     # the claim stays the first store
    # temporary keys: the session token the S3 client reads, from the same Secret when it has one
    assert env["AWS_SESSION_TOKEN"]["valueFrom"] == {"secretKeyRef": {"name": "fedcare-s3", "key": "AWS_SESSION_TOKEN",
                                                                      "optional": True}}


def test_without_s3_nothing_changes(helm):
    _, container = container_of(render(helm, {"artifactStore.existingClaim": "fedcare-artifacts"}))
    assert not [k for k in env_of(container) if "S3" in k or k.startswith("AWS_")]
    _, site = container_of(render(helm, {"mode": "site", "site.name": "rouen",
                                         "site.hubKubeconfigSecret": "hub-kubeconfig", **S3}))
    assert not [k for k in env_of(site) if "S3" in k or k.startswith("AWS_")]


def test_bad_s3_values_are_refused(helm):
    assert "needs artifactStore.existingClaim" in render_error(helm, {"artifactStore.s3.url": "s3://models/x"})
    assert "/artifactStore/s3/url" in render_error(helm, {**S3, "artifactStore.s3.url": "https://models/x"})
    assert "/artifactStore/s3/url" in render_error(helm, {**S3, "artifactStore.s3.url": "s3://Bad_Bucket/x"})
    assert "/artifactStore/s3/endpoint" in render_error(helm, {**S3, "artifactStore.s3.endpoint":
                                                                 "http://key:secret@minio:9000"})
    assert "additional properties" in render_error(helm, {**S3, "artifactStore.s3.secretAccessKey": "x"}).lower() \
        or "secretAccessKey" in render_error(helm, {**S3, "artifactStore.s3.secretAccessKey": "x"})
