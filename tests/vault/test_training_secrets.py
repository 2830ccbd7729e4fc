"""Training pod secrets: a TTL-bound, least-privilege child token in a Secret, removed after use."""

from __future__ import annotations

from pathlib import Path

import hvac
import hvac.exceptions as hx
import pytest

from fedcare.hub import vault_footprint as fp
from fedcare.integrations import vault as v
from fedcare.integrations.kube import Kube, Ref, RetryPolicy
from fedcare.site import training_secrets as ts
from tests.support.sa_issuer import SAIssuer
from tests.vault.conftest import fast_retry


def test_injector_annotations_carry_paths_not_values() -> None:
    ann = ts.injector_annotations(role="fedcare-site-rouen", secrets={"dataset-key": "sites/rouen/training/key"})
    assert ann["vault.hashicorp.com/agent-inject"] == "true"
    assert ann["vault.hashicorp.com/agent-inject-secret-dataset-key"] == "fedcare/data/sites/rouen/training/key"
    assert ann["vault.hashicorp.com/agent-pre-populate-only"] == "true"


async def test_pod_secret_is_short_lived_least_privilege_and_removed(emulator, openbao, root_client, unique,
                                                                    tmp_path: Path) -> None:
    issuer = SAIssuer()
    fs = fp.FootprintSettings(auth_method="jwt", auth_mount=f"jwt-{unique}", audience=issuer.audience)
    issuer.configure(openbao.client(), fs.mount)
    sv = fp.site_vault({"metadata": {"name": unique}, "spec": {}}, "fedcare")
    assert fp.ensure(root_client, sv, fs).ok
    root_client.write(sv.path("training/dataset-key"), {"key": "k-" + unique})
    root_client.write(sv.path("hub-credential"), {"token": "hub-" + unique})
    jwt = issuer.write(tmp_path / "jwt", sv.namespace, sv.service_account)
    agent = v.VaultClient(v.VaultSettings(addr=openbao.addr, auth_method="jwt", role=sv.role, auth_mount=fs.mount,
                                          jwt_path=str(jwt), retry=fast_retry()), site=unique)
    kube = Kube.from_url(str(emulator.url), policy=RetryPolicy(attempts=2, base_delay=0.05, timeout=5))
    try:
        async with ts.pod_secret(kube, agent, name="train-1", namespace="default", policy=sv.training_policy,
                                 ttl="5m") as name:
            secret = await kube.get(Ref("v1", "secrets", "default", name))
            import base64
            data = {k: base64.b64decode(x).decode() for k, x in (secret.get("data") or {}).items()} \
                or secret.get("stringData")
            token = data[ts.TOKEN_KEY]
            pod = hvac.Client(url=data[ts.ADDR_KEY], token=token)
            info = pod.auth.token.lookup_self()["data"]
            assert info["ttl"] <= 300 and not info["renewable"]
            assert sorted(info["policies"]) == ["default", sv.training_policy]
            assert pod.secrets.kv.v2.read_secret_version(sv.path("training/dataset-key"), mount_point="fedcare",
                                                         raise_on_deleted_version=True)["data"]["data"]["key"]
            with pytest.raises(hx.Forbidden):                     # least privilege: not the hub credential
                pod.secrets.kv.v2.read_secret_version(sv.path("hub-credential"), mount_point="fedcare",
                                                      raise_on_deleted_version=True)
        assert await kube.get_or_none(Ref("v1", "secrets", "default", "train-1")) is None
        with pytest.raises(hx.Forbidden):                         # revoked
            hvac.Client(url=openbao.addr, token=token).auth.token.lookup_self()
    finally:
        await kube.close()
