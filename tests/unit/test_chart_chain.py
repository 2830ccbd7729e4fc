"""Helm values for ModelRelease anchoring reach the hub pod; the key is referenced, never a value."""

from __future__ import annotations

from tests.unit.test_chart import container_of, helm, render, render_error  # noqa: F401 (fixture)

CHAIN = {"chain.rpcUrl": "https://rpc.example.org", "chain.chainId": "11155111",
         "chain.contractAddress": "0x" + "ab" * 20, "chain.confirmations": "6",
         "chain.keyRef": "file:/etc/fedcare/chain/key", "chain.keySecret": "fedcare-chain-key",
         "releaseStore.existingClaim": "models"}


def env_of(container) -> dict[str, str]:
    return {e["name"]: e.get("value") for e in container["env"]}


def test_chain_values_reach_the_hub(helm):
    pod, container = container_of(render(helm, CHAIN))
    env = env_of(container)
    assert env["FEDCARE_CHAIN_RPC_URL"] == "https://rpc.example.org"
    assert env["FEDCARE_CHAIN_ID"] == "11155111" and env["FEDCARE_CHAIN_CONFIRMATIONS"] == "6"
    assert env["FEDCARE_CHAIN_CONTRACT"] == "0x" + "ab" * 20 and env["FEDCARE_CHAIN_GAS_CAP"] == "2000000"
    assert env["FEDCARE_CHAIN_KEY_REF"] == "file:/etc/fedcare/chain/key"
    assert {"name": "chain-key", "mountPath": "/etc/fedcare/chain", "readOnly": True} in container["volumeMounts"]
    secret = next(v["secret"] for v in pod["volumes"] if v["name"] == "chain-key")
    assert secret == {"secretName": "fedcare-chain-key", "items": [{"key": "key", "path": "key"}],
                      "defaultMode": 0o440}
    claim = next(v for v in pod["volumes"] if v["name"] == "release-store")
    assert claim["persistentVolumeClaim"]["claimName"] == "models"


def test_chain_env_not_in_site_mode(helm):
    _, container = container_of(render(helm, {"mode": "site", "site.name": "rouen",
                                              "site.hubKubeconfigSecret": "hub-kubeconfig", **CHAIN}))
    assert not [k for k in env_of(container) if k.startswith("FEDCARE_CHAIN")]


def test_bad_chain_values_are_refused(helm):
    assert "contractAddress" in render_error(helm, {"chain.contractAddress": "0x1234"})
    assert "keyRef" in render_error(helm, {"chain.keyRef": "0xdeadbeef"})


def test_artifact_store_is_mounted_in_the_hub_where_pvc_uris_resolve(helm):
    pod, container = container_of(render(helm, {"artifactStore.existingClaim": "fedcare-artifacts"}))
    env = env_of(container)
    assert env["FEDCARE_ARTIFACT_CLAIM"] == "fedcare-artifacts"
    assert env["FEDCARE_ARTIFACT_DIR"] == "/var/lib/fedcare/artifacts"
    assert {"name": "artifact-store", "mountPath": "/var/lib/fedcare/artifacts"} in container["volumeMounts"]
    claim = next(v for v in pod["volumes"] if v["name"] == "artifact-store")
    assert claim["persistentVolumeClaim"]["claimName"] == "fedcare-artifacts"
    _, plain = container_of(render(helm, {}))
    assert "FEDCARE_ARTIFACT_DIR" not in env_of(plain)
    assert "artifactStore" in render_error(helm, {"artifactStore.existingClaim": "Bad_Name"})


def test_batch_window_reaches_the_hub_only_when_set(helm):
    _, container = container_of(render(helm, {**CHAIN, "chain.batchWindow": "0.2"}))
    assert env_of(container)["FEDCARE_CHAIN_BATCH_WINDOW"] == "0.2"
    _, plain = container_of(render(helm, CHAIN))
    assert "FEDCARE_CHAIN_BATCH_WINDOW" not in env_of(plain)
    assert "batchWindow" in render_error(helm, {"chain.batchWindow": "-1"})
