"""FederatedRounds through the operator with TLS and SuperNode authentication, every credential
from a real OpenBao (the sandbox federation's): real Flower processes as pods of the process
kubelet on the emulator.

One round proves, in order of the issue: the SuperLink serves TLS with a certificate from Vault
PKI mounted from a Secret owned by the round and authenticates SuperNodes; each SuperNode starts
with the CA and its private key from a short-lived Secret the agent wrote from Vault; a
SuperNode whose key nobody registered is refused; a SuperNode claiming another site's name is
attributed to the site its authenticated key belongs to; Vault is read at most once per secret
per site; and every credential Secret is gone after the round."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import importlib.util
import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from fedcare.api.resources import API_VERSION
from fedcare.hub.superlink_tls import ABSENT_MAX_DELAY
from fedcare.integrations.kube import Ref
from fedcare.sandbox import vault_setup
from fedcare.sandbox.federation import WORK_NAMESPACE, federation, round_manifest
from fedcare.site import training_pod as tp
from tests.support.harness import eventually
from tests.support.openbao import free_port

pytestmark = [pytest.mark.usefixtures("bao_installed"),
              pytest.mark.skipif(importlib.util.find_spec("fedcare_workloads") is None,
                                 reason="needs the workloads package: pip install -c constraints.txt -e ./workloads")]

ROUNDS = Ref(API_VERSION, "federatedrounds", "default")
BIN = pathlib.Path(sys.executable).parent


def phase(api, name, *phases):
    async def check():
        obj = await api.get_or_none(Ref(API_VERSION, "federatedrounds", "default", name))
        return obj if obj and (obj.get("status") or {}).get("phase") in phases else None
    return check


def unregistered_supernode(address: str, ca: str, workdir: pathlib.Path) -> tuple[int, str]:
    """A SuperNode with a fresh key nobody registered, dialling the round's SuperLink over TLS:
    (exit code, its output). Its output goes to a file (its SuperExec child would hold a pipe
    open after it exits); its process group is killed afterwards."""
    workdir.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP384R1())
    (workdir / "intruder.key").write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                                             serialization.PrivateFormat.OpenSSH,
                                                             serialization.NoEncryption()))
    (workdir / "ca.pem").write_text(ca)
    env = {**os.environ, "FLWR_HOME": str(workdir / "home"), "PATH": f"{BIN}:{os.environ.get('PATH', '')}"}
    log = workdir / "intruder.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([str(BIN / "flower-supernode"), "--superlink", address, "--root-certificates",
                                 str(workdir / "ca.pem"), "--auth-supernode-private-key", str(workdir / "intruder.key"),
                                 "--node-config", 'site="rouen"', "--host", "127.0.0.1", "--port", str(free_port())],
                                env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        code = proc.wait(timeout=120)
    except subprocess.TimeoutExpired:
        code = None
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert code is not None, "an unregistered SuperNode was not refused within 120 s:\n" + log.read_text()[-2000:]
    return code, log.read_text(errors="replace")


@pytest.mark.timeout(1500)
async def test_tls_round_authenticates_supernodes_and_attributes_by_key(emulator, tmp_path, monkeypatch):
    real_config = tp.node_config

    def forged(assignment, site, privacy=None):    # lyon's SuperNode claims to be rouen in what it reports
        return real_config(assignment, "rouen" if site == "lyon" else site, privacy)

    monkeypatch.setattr(tp, "node_config", forged)
    async with federation(str(emulator.url), tmp_path, ["rouen", "lyon"], images=40) as fed:
        api = fed.api
        assert fed.tls and fed.vault is not None and fed.bao is not None
        audit_start = vault_setup.line_count(fed.bao.audit_log)
        body = round_manifest("tls", sites=2, rounds=1,
                              strategy={"name": "FedAvg", "fractionEvaluate": "0.0", "minTrainNodes": 1})
        created = time.monotonic()
        await api.create(ROUNDS, body)
        running = await eventually(phase(api, "tls", "Running", "Failed"), timeout=420, interval=0.5)
        waited = time.monotonic() - created     # how long the hub may have looked for keys
        assert running["status"]["phase"] == "Running", running["status"]
        uid = running["metadata"]["uid"]

        # The SuperLink: TLS flags, files from the round's Secret, no key material in its spec.
        [superlink] = await api.list(Ref("v1", "pods", "default"))
        args = superlink["spec"]["containers"][0]["args"]
        assert "--enable-supernode-auth" in args and "--ssl-certfile" in args and "--insecure" not in args
        secret = await api.get(Ref("v1", "secrets", "default", "tls-superlink-tls"))
        assert secret["metadata"]["ownerReferences"][0]["uid"] == uid
        assert set(secret["data"]) == {"tls.crt", "tls.key", "ca.crt"}
        server_key = base64.b64decode(secret["data"]["tls.key"]).decode()
        assert "PRIVATE KEY" in server_key and server_key not in json.dumps(superlink)
        assert superlink["status"]["podIP"] in secret["metadata"]["annotations"]["fedcare.io/ip-sans"]

        # The SuperNodes: CA and private key from their own short-lived Secret, owned by the pod.
        async def two_pods():      # Running means the run was submitted; the agents start their pods next
            listed = await api.list(Ref("v1", "pods", WORK_NAMESPACE))
            return listed if len(listed) == 2 else None
        pods = await eventually(two_pods, timeout=180, interval=0.5)
        for pod in pods:
            c = pod["spec"]["containers"][0]
            assert "--root-certificates" in c["args"] and "--auth-supernode-private-key" in c["args"]
            assert "--insecure" not in c["args"]
            creds = await api.get(Ref("v1", "secrets", WORK_NAMESPACE, f"{pod['metadata']['name']}-flower"))
            assert creds["metadata"]["ownerReferences"][0]["uid"] == pod["metadata"]["uid"]
            site = pod["metadata"]["labels"]["fedcare.io/site"]
            private = fed.bao.server.client().secrets.kv.v2.read_secret_version(
                f"sites/{site}/supernode", mount_point="fedcare")["data"]["data"]["private_key"]
            assert base64.b64decode(creds["data"]["supernode.key"]).decode() == private
            assert private not in json.dumps(pod)

        # A SuperNode with an unregistered key is refused by the SuperLink (Flower's code 2004).
        ca = base64.b64decode(secret["data"]["ca.crt"]).decode()
        address = running["status"]["aggregator"]["controlAddress"]
        code, out = await asyncio.to_thread(unregistered_supernode, address, ca, tmp_path / "intruder")
        assert code != 0 and "2004" in out, out[-2000:]

        done = await eventually(phase(api, "tls", "Succeeded", "Failed"), timeout=900, interval=1.0)
        st = done["status"]
        assert st["phase"] == "Succeeded", st
        # lyon said "rouen": its reply is lyon's (its key), rejected for the false claim; rouen's counts.
        sites = {s["site"]: s for s in st["serverRounds"][0]["sites"]}
        assert set(sites) == {"rouen", "lyon"}, sites
        assert sites["rouen"]["status"] == "ok"
        assert sites["lyon"]["status"] != "ok" and "another site" in sites["lyon"]["reason"], sites["lyon"]
        model = fed.artifact_dir / st["result"]["storageUri"].removeprefix("pvc://fedcare-artifacts/")
        provenance = json.loads((model.parent / "provenance.json").read_text())
        assert "site-identities" in json.dumps(provenance), provenance

        # Vault: at most one read per secret per identity during the round. The agents publish their
        # keys while the round starts (their Vault roles are seconds old): an agent looks for its
        # own key once (then creates it); the hub's lookups of a key not there yet back off (1 s
        # doubling to ABSENT_MAX_DELAY), so they are bounded by the time it waited.
        counts = vault_setup.reads(fed.bao.audit_log, since_line=audit_start)
        assert counts, "the audit log recorded no read"
        assert all(n <= 1 for n in counts.values()), counts
        misses = vault_setup.reads(fed.bao.audit_log, since_line=audit_start, missed=True)
        for (who, secret), n in misses.items():
            bound = 4 + waited / ABSENT_MAX_DELAY if "fedcare-hub" in who else 1
            assert n <= bound, (who, secret, n, bound, misses)
        assert any("fedcare-hub" in who and s.endswith("rouen/supernode-public") for who, s in counts)
        assert any("fedcare-site-lyon" in who and s.endswith("lyon/supernode") for who, s in counts) or \
            any(s.endswith("lyon/supernode") for _, s in counts), counts

        # Afterwards: no SuperLink Secret, no SuperNode credentials left.
        async def no_secrets():
            left = [s["metadata"]["name"] for ns in ("default", WORK_NAMESPACE)
                    for s in await api.list(Ref("v1", "secrets", ns))]
            return not left or None
        await eventually(no_secrets, timeout=120, interval=0.5)


async def test_vault_unreachable_keeps_the_aggregator_waiting_and_says_why(emulator, tmp_path):
    """No certificate without Vault: the round waits (AggregatorReady=False naming Vault and the
    remedy), nothing crashes, no plaintext fallback; the deadline bounds the wait."""
    import datetime as dt

    from fedcare.hub.aggregator import AggregatorConfig
    from fedcare.hub.flower_runs import FlowerCLI
    from fedcare.hub.round_scheduler import Reconciler, RoundConfig
    from fedcare.hub.superlink_tls import SuperLinkTLS
    from fedcare.integrations.kube import Kube
    from fedcare.integrations.vault import RetryPolicy, VaultClient, VaultSettings

    kube = Kube.from_url(str(emulator.url))
    try:
        vault = VaultClient(VaultSettings(addr=f"http://127.0.0.1:{free_port()}", auth_method="token",
                                          token="s.not-a-real-token-0000", retry=RetryPolicy(
                                              attempts=2, base_delay=0.01, max_delay=0.02, timeout=0.5)))
        cfg = RoundConfig(flower=FlowerCLI(tmp_path / "flwr"), app="",
                          aggregator=AggregatorConfig(artifact_dir=str(tmp_path / "artifacts")),
                          tls=SuperLinkTLS(vault))
        rec = Reconciler(kube, cfg)
        body = await kube.create(ROUNDS, round_manifest("down", sites=1, rounds=1))
        now = dt.datetime.now(dt.UTC).replace(microsecond=0)
        body = await rec.write(body, [], startTime=now.isoformat(), attempt=1,
                               deadline=(now + dt.timedelta(hours=1)).isoformat(),
                               participants=[{"node": "rouen", "state": "Selected", "reason": "", "lastRound": 0}])
        spec = __import__("fedcare.api.validation", fromlist=["parse"]).parse("FederatedRound", body)
        assert await rec.run_aggregator(body, spec) is None          # pod created; it has no IP yet
        pod = await kube.get(Ref("v1", "pods", "default", "down-superlink"))
        assert "--enable-supernode-auth" in pod["spec"]["containers"][0]["args"]
        # what a kubelet reports for a pod waiting on its Secret volume: an IP, still Pending
        await kube.patch(Ref("v1", "pods", "default", "down-superlink"),
                         {"status": {"podIP": "127.0.0.9", "phase": "Pending"}}, status=True)
        body = await kube.get(Ref(API_VERSION, "federatedrounds", "default", "down"))
        assert await rec.run_aggregator(body, spec) is None
        body = await kube.get(Ref(API_VERSION, "federatedrounds", "default", "down"))
        cond = next(c for c in body["status"]["conditions"] if c["type"] == "AggregatorReady")
        assert cond["status"] == "False" and "Vault" in cond["message"] and "unreachable" in cond["message"], cond
        assert "not-a-real-token" not in json.dumps(body)
        assert await kube.get_or_none(Ref("v1", "secrets", "default", "down-superlink-tls")) is None
        assert body["status"].get("phase") != "Failed"
    finally:
        await kube.close()
