"""Round TLS pieces without processes: SuperLink and SuperNode manifests under TLS, the key
identity the hub passes the ServerApp, certificate names and TTL, the flwr CLI's trust."""

from __future__ import annotations

import datetime as dt
import json

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from fedcare.api.validation import parse
from fedcare.hub import aggregator as agg
from fedcare.hub import superlink_tls as sl
from fedcare.hub.flower_runs import FlowerCLI, FlowerError
from fedcare.sandbox.federation import round_manifest
from fedcare.site import supernode_credentials as creds
from fedcare.site import training_pod as tp
from tests.unit.test_round_execution_units import NODE, assignment


def body():
    b = round_manifest("r1", sites=2, rounds=1)
    b["metadata"].update(uid="u-1234567890", generation=1)
    return b


def superlink(insecure: bool) -> dict:
    b = body()
    return dict(agg.manifests(b, parse("FederatedRound", b), agg.AggregatorConfig(insecure=insecure)))["pods"]


def test_superlink_under_tls_mounts_the_rounds_secret_and_authenticates_supernodes():
    pod = superlink(False)
    box = pod["spec"]["containers"][0]
    args = box["args"]
    assert "--insecure" not in args and "--enable-supernode-auth" in args
    assert args[args.index("--ssl-keyfile") + 1] == f"{sl.MOUNT}/tls.key"
    assert args[args.index("--host") + 1] == "0.0.0.0"      # its SuperExec dials 127.0.0.1, a SAN
    tls = next(v for v in pod["spec"]["volumes"] if v["name"] == "tls")
    assert tls["secret"]["secretName"] == "r1-superlink-tls"
    assert {"key": "tls.key", "path": "tls.key", "mode": 0o400} in tls["secret"]["items"]
    assert {"name": "tls", "mountPath": sl.MOUNT, "readOnly": True} in box["volumeMounts"]
    assert box["readinessProbe"]["httpGet"]["scheme"] == "HTTPS"
    plain = superlink(True)
    assert "--insecure" in plain["spec"]["containers"][0]["args"]
    assert not [v for v in plain["spec"]["volumes"] if v["name"] == "tls"]


def test_supernode_under_tls_reads_ca_and_key_from_its_own_secret():
    ra = assignment()
    ra["spec"]["superLink"]["insecure"] = False
    pod = tp.pod_manifest(ra, NODE, site="rouen", namespace="fl", retry=2, insecure=False)
    box = pod["spec"]["containers"][0]
    assert box["args"][box["args"].index("--root-certificates") + 1] == f"{creds.MOUNT}/ca.crt"
    assert box["args"][box["args"].index("--auth-supernode-private-key") + 1] == f"{creds.MOUNT}/supernode.key"
    vol = next(v for v in pod["spec"]["volumes"] if v["name"] == "flower-credentials")
    assert vol["secret"]["secretName"] == creds.secret_name(pod["metadata"]["name"]) == "rouen-r1-abc-a1-r2-flower"
    assert "PRIVATE" not in json.dumps(pod)
    plain = tp.pod_manifest(assignment(), NODE, site="rouen", namespace="fl", retry=0, insecure=True)
    assert not [v for v in plain["spec"]["volumes"] if v["name"] == "flower-credentials"]


def test_key_identity_is_what_the_serverapp_sees_for_the_registered_key():
    from flwr.supercore.primitives.asymmetric import public_key_to_bytes
    from fedcare_workloads.trust import key_fingerprint

    keys = [ec.generate_private_key(ec.SECP384R1()).public_key() for _ in range(2)]
    ssh = [k.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode() for k in keys]
    assert sl.key_identity(ssh[0]) == key_fingerprint(public_key_to_bytes(keys[0]))
    line = sl.site_identities({"rouen": ssh[0], "lyon": ssh[1]})
    assert line == f"lyon={sl.key_identity(ssh[1])},rouen={sl.key_identity(ssh[0])}"
    from fedcare_workloads.settings import _site_identities
    assert set(_site_identities(line).values()) == {"rouen", "lyon"}


def test_certificate_names_and_lifetime():
    assert sl.dns_names("r1-superlink", "default", "") == ["r1-superlink.default.svc",
                                                            "r1-superlink.default.svc.cluster.local"]
    assert sl.dns_names("s", "ns", "fl.example.org:443")[-1] == "fl.example.org"
    assert sl.dns_names("s", "ns", "10.1.2.3:443") == ["s.ns.svc", "s.ns.svc.cluster.local"]   # an IP SAN instead
    assert sl.cluster_ip({"spec": {"clusterIP": "None"}}) == "" and sl.cluster_ip({"spec": {"clusterIP": "10.96.0.9"}})
    soon = {"status": {"deadline": (dt.datetime.now(dt.UTC) - dt.timedelta(minutes=1)).isoformat()}}
    far = {"status": {"deadline": (dt.datetime.now(dt.UTC) + dt.timedelta(days=30)).isoformat()}}
    assert sl._ttl(soon) == 600 and sl._ttl(far) == sl.MAX_TTL


def test_flwr_cli_refuses_tls_without_the_rounds_ca_and_names_it_once_trusted(tmp_path):
    cli = FlowerCLI(tmp_path, flwr="/bin/false")
    with pytest.raises(FlowerError, match="no CA certificate"):
        cli._config("k", "127.0.0.1:9092", insecure=False)
    cli.trust("k", "-----BEGIN CERTIFICATE-----\nx\n-----END CERTIFICATE-----\n")
    cli._config("k", "127.0.0.1:9092", insecure=False)
    text = (tmp_path / "k" / "config.toml").read_text()
    assert f'root-certificates = "{tmp_path / "k" / "superlink-ca.pem"}"' in text and "insecure" not in text
