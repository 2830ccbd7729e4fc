"""A round whose participant published a SuperNode key that cannot be registered: the sandbox's
real OpenBao holds an Ed25519 key for one site (Flower accepts NIST P-curve keys only), the real
TLS flower-superlink of the round registers the other site's key. The round waits with
AggregatorReady=False naming the site and the remedy, dispatches nothing, keeps the key that did
register (not sent again), and proceeds once a valid key is published."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import logging

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from fedcare.api.resources import API_VERSION
from fedcare.integrations.kube import Ref
from fedcare.sandbox.federation import federation, round_manifest
from tests.support.harness import eventually

pytestmark = [pytest.mark.usefixtures("bao_installed"),
              pytest.mark.skipif(importlib.util.find_spec("fedcare_workloads") is None,
                                 reason="needs the workloads package: pip install -c constraints.txt -e ./workloads")]

ROUNDS = Ref(API_VERSION, "federatedrounds", "default")
KV = "fedcare"


def cond(obj, ctype):
    return next((c for c in ((obj or {}).get("status") or {}).get("conditions", []) if c["type"] == ctype), {})


def registrations(caplog, site):
    return [r for r in caplog.records if r.name == "fedcare.hub.round_scheduler"
            and r.getMessage().startswith("Round keys: registered the SuperNode key of " + site)]


@pytest.mark.timeout(900)
async def test_a_refused_supernode_key_holds_the_round_until_a_valid_key_is_published(emulator, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="fedcare.hub.round_scheduler")
    async with federation(str(emulator.url), tmp_path, ["rouen", "lyon"], images=20) as fed:
        api, root = fed.api, fed.bao.server.client()
        kv = root.secrets.kv.v2

        async def published():      # the agent writes its pair at start (private first, then public)
            try:
                return (await asyncio.to_thread(kv.read_secret_version, "sites/lyon/supernode-public",
                                                mount_point=KV))["data"]["data"]["public_key"]
            except Exception:       # hvac's InvalidPath until it is there
                return None
        good = await eventually(published, timeout=120, interval=0.5)
        private = kv.read_secret_version("sites/lyon/supernode", mount_point=KV)["data"]["data"]["private_key"]
        bad = ed25519.Ed25519PrivateKey.generate().public_key().public_bytes(
            serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()
        kv.create_or_update_secret("sites/lyon/supernode-public", secret={"public_key": bad}, mount_point=KV)

        await api.create(ROUNDS, round_manifest("keys", sites=2, rounds=1, roundTimeoutSeconds=120,
                                                activeDeadlineSeconds=900))

        async def refused():
            obj = await api.get(Ref(API_VERSION, "federatedrounds", "default", "keys"))
            c = cond(obj, "AggregatorReady")
            return obj if c.get("status") == "False" and "lyon" in c.get("message", "") \
                and "not registered" in c.get("message", "") else None
        held = await eventually(refused, timeout=300, interval=0.5)
        await asyncio.sleep(6)        # several passes of the hub (poll 1 s) while the key stays refused
        held = await api.get(Ref(API_VERSION, "federatedrounds", "default", "keys"))
        ready = cond(held, "AggregatorReady")
        message = ready["message"]
        assert ready["status"] == "False", ready
        assert "1 of 2 SuperNode keys not registered, so no assignment is dispatched" in message, message
        assert "registering the SuperNode key of lyon: not an EC public key (got Ed25519PublicKey)" in message
        assert f"at {KV}/sites/lyon/supernode-public in Vault" in message and "restart the site's agent" in message
        assert "rouen" not in message, message          # its key registered: not named as a problem
        assert held["status"]["phase"] not in ("Failed", "Succeeded"), held["status"]
        assert cond(held, "Ready")["status"] == "False" and "lyon" in cond(held, "Ready")["message"]
        assert await api.list(Ref(API_VERSION, "roundassignments")) == []
        # the key that registered is kept (registered once, never again on the following passes)
        key = f"default.keys.{held['metadata']['uid'][:8]}"
        _, done = fed.hub_ctx.round_config.tls.registered[key]
        assert set(done) == {"rouen"}, done
        assert len(registrations(caplog, "rouen")) == 1, [r.getMessage() for r in registrations(caplog, "rouen")]
        # public keys only, and not even those: no key material or token in the round
        text = json.dumps(held)
        for secret in (private, fed.bao.server.root_token, fed.bao.hub.settings.token or "-"):
            assert secret not in text
        assert bad.split()[1] not in text and good.split()[1] not in text

        # a valid key published (the public half of the site's pair): the round proceeds
        kv.create_or_update_secret("sites/lyon/supernode-public", secret={"public_key": good}, mount_point=KV)

        async def dispatched():
            obj = await api.get(Ref(API_VERSION, "federatedrounds", "default", "keys"))
            ras = await api.list(Ref(API_VERSION, "roundassignments"))
            # the round is read before the listing: its AssignmentsDispatched comes after the creates
            return (obj, ras) if cond(obj, "AggregatorReady").get("status") == "True" and len(ras) == 2 \
                and cond(obj, "AssignmentsDispatched").get("status") == "True" else None
        obj, ras = await eventually(dispatched, timeout=240, interval=0.5)
        assert {ra["spec"]["nodeName"] for ra in ras} == {"rouen", "lyon"}
        assert set(fed.hub_ctx.round_config.tls.registered[key][1]) == {"rouen", "lyon"}
        assert len(registrations(caplog, "rouen")) == 1 and len(registrations(caplog, "lyon")) == 1

        async def running():
            obj = await api.get(Ref(API_VERSION, "federatedrounds", "default", "keys"))
            return obj if (obj.get("status") or {}).get("phase") in ("Running", "Failed", "Succeeded") else None
        obj = await eventually(running, timeout=240, interval=0.5)
        assert obj["status"]["phase"] in ("Running", "Succeeded"), (obj["status"], cond(obj, "Failed"))
        # done here: deleting it stops the SuperLink, the assignments and the training pods
        await api.delete(Ref(API_VERSION, "federatedrounds", "default", "keys"))

        async def nothing_left():
            pods = [p for ns in ("default", "fedcare-training") for p in await api.list(Ref("v1", "pods", ns))]
            return not pods and not await api.list(Ref(API_VERSION, "roundassignments")) and not fed.processes()
        await eventually(nothing_left, timeout=120, interval=0.5)


async def test_sites_that_publish_the_same_key_are_not_registered(tmp_path):
    """Two participants with one public key: the SuperLink would take it once and answer "already
    in use" for the other (what a restarted hub's own re-registration gets, so success there), and
    the ServerApp would refuse the run's site-identities late; the hub registers neither and says
    which sites share the key. A third site's key is tried (here its SuperLink does not answer:
    not a refusal, tried again on the next pass). Real OpenBao (the sandbox's)."""
    from cryptography.hazmat.primitives.asymmetric import ec

    from fedcare.hub.aggregator import AggregatorConfig, AggregatorState
    from fedcare.hub.flower_runs import FlowerCLI
    from fedcare.hub.round_scheduler import Reconciler, RoundConfig
    from fedcare.hub.superlink_tls import SuperLinkTLS
    from fedcare.sandbox import vault_setup
    from tests.support.openbao import free_port

    def openssh(key, comment=""):
        return (key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                              serialization.PublicFormat.OpenSSH).decode() + comment)

    sv = await asyncio.to_thread(vault_setup.start, tmp_path / "openbao")
    try:
        root = sv.server.client()
        shared, own = ec.generate_private_key(ec.SECP384R1()), ec.generate_private_key(ec.SECP256R1())
        for site, public in (("nantes", openssh(shared)), ("brest", openssh(shared, " brest@copy")),
                             ("rennes", openssh(own))):
            root.secrets.kv.v2.create_or_update_secret(f"sites/{site}/supernode-public",
                                                       secret={"public_key": public}, mount_point=KV)
        cfg = RoundConfig(flower=FlowerCLI(tmp_path / "flwr", flwr="/bin/false", attempts=2, base_delay=0.2),
                          app="", aggregator=AggregatorConfig(artifact_dir=str(tmp_path / "artifacts")),
                          tls=SuperLinkTLS(sv.hub))
        rec = Reconciler(None, cfg)     # type: ignore[arg-type]  # registration calls no Kubernetes API
        body = {"metadata": {"namespace": "default", "name": "dup", "uid": "0123456789abcdef"},
                "status": {"participants": [{"node": s} for s in ("nantes", "brest", "rennes")]}}
        state = AggregatorState(True, False, "serving", "dup-superlink", "dup-superlink", "dup-superlink:9092",
                                f"127.0.0.1:{free_port()}", pod_uid="pod-1")
        held = await rec.register_supernodes(body, state)
        assert not held.ready, held
        message = held.message
        assert message.startswith("3 of 3 SuperNode keys not registered, so no assignment is dispatched"), message
        assert "registering the SuperNode key of brest: site nantes published the same public key" in message
        assert "registering the SuperNode key of nantes: site brest published the same public key" in message
        assert "each site needs its own key pair. This will not fix itself" in message
        rennes = message.split("; registering the SuperNode key of rennes: ")[1]    # sorted: the last one
        assert "did not answer RegisterNode" in rennes and rennes.endswith("(trying again on the next pass)")
        assert "will not fix itself" not in rennes
        assert "BEGIN" not in message and openssh(shared).split()[1] not in message
        assert cfg.tls.registered.get(rec.key(body), ("", {}))[1] == {}
    finally:
        await asyncio.to_thread(sv.stop)
