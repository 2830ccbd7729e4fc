"""A real Flower deployment (flower-superlink + flower-supernode) with TLS and SuperNode
authentication, every certificate and key issued by fedcare's Vault code against OpenBao."""

from __future__ import annotations

import ssl
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from fedcare.hub import vault_footprint as fp
from fedcare.integrations import flower_credentials as fc
from fedcare.integrations import vault as v
from tests.support.flower_tls import BIN, TLSDeployment
from tests.support.openbao import DevServer
from tests.support.sa_issuer import SAIssuer
from tests.vault.conftest import fast_retry

SERVICE_DNS = "fedcare-superlink.fedcare.svc"
APP_DIR = Path(__file__).resolve().parents[2] / "workloads"


@pytest.fixture()
def federation(openbao: DevServer, root_client: v.VaultClient, unique: str, tmp_path: Path):
    """Hub and two sites with their own Vault identities (JWT), a PKI mount and role."""
    issuer = SAIssuer()
    fs = fp.FootprintSettings(auth_method="jwt", auth_mount=f"jwt-{unique}", audience=issuer.audience)
    issuer.configure(openbao.client(), fs.mount)
    pki = f"pki-{unique}"
    root = openbao.client()
    root.sys.create_or_update_acl_policy(f"hub-{unique}", fp.hub_policy_hcl("fedcare", fs, pki_mount=pki))
    token = root.auth.token.create(policies=[f"hub-{unique}"], ttl="30m")["auth"]["client_token"]
    hub = v.VaultClient(v.VaultSettings(addr=openbao.addr, auth_method="token", token=token, pki_mount=pki,
                                        retry=fast_retry()))
    fc.ensure_pki(root_client, mount=pki)                  # the administrator's part (root)
    fc.ensure_superlink_role(root_client, allowed_domains=[SERVICE_DNS, "localhost"], mount=pki)
    sites = {}
    for name in (f"{unique}a", f"{unique}b"):
        sv = fp.site_vault({"metadata": {"name": name}, "spec": {}}, "fedcare")
        assert fp.ensure(hub, sv, fs).ok
        jwt = issuer.write(tmp_path / f"{name}.jwt", sv.namespace, sv.service_account)
        sites[name] = v.VaultClient(v.VaultSettings(addr=openbao.addr, auth_method="jwt", role=sv.role,
                                                    auth_mount=fs.mount, jwt_path=str(jwt), retry=fast_retry()),
                                    site=name)
    return hub, sites


def test_superlink_certificate_has_the_sans_and_a_short_ttl(federation) -> None:
    from cryptography import x509

    hub, _ = federation
    cert = fc.issue_superlink_certificate(hub, common_name=SERVICE_DNS, dns_names=["localhost"],
                                          ip_sans=["127.0.0.1", "10.96.0.12"], ttl="30m")
    parsed = x509.load_pem_x509_certificate(cert.certificate.encode())
    san = parsed.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(san.get_values_for_type(x509.DNSName)) == {SERVICE_DNS, "localhost"}
    assert {str(ip) for ip in san.get_values_for_type(x509.IPAddress)} == {"127.0.0.1", "10.96.0.12"}
    lifetime = (parsed.not_valid_after_utc - parsed.not_valid_before_utc).total_seconds()
    assert lifetime <= 31 * 60
    assert "private_key" not in repr(cert) and cert.private_key not in repr(cert)
    again = fc.issue_superlink_certificate(hub, common_name=SERVICE_DNS, ttl="30m")
    assert again.serial_number != cert.serial_number                      # per round: fresh each time
    with pytest.raises(v.VaultInvalidRequest):                             # outside the role's domains
        fc.issue_superlink_certificate(hub, common_name="evil.example.com")


def test_private_keys_stay_with_their_site(federation) -> None:
    hub, sites = federation
    (a, ca), (b, cb) = sites.items()
    pub_a = fc.ensure_supernode_key(ca, a)
    assert fc.ensure_supernode_key(ca, a) == pub_a                     # once
    assert pub_a.startswith("ecdsa-sha2-nistp384 ")
    assert fc.supernode_public_key(hub, a) == pub_a                      # the hub reads the public half
    with pytest.raises(v.VaultForbidden):
        hub.read(f"sites/{a}/supernode")                                 # ...never the private one
    with pytest.raises(v.VaultPathRefused):
        cb.read(f"sites/{a}/supernode")                                  # another site: refused locally
    with pytest.raises(v.VaultForbidden):
        v.VaultClient(cb.settings).read(f"sites/{a}/supernode")          # and by the server's policy


def test_insecure_needs_the_explicit_development_flag(caplog) -> None:
    with pytest.raises(ValueError, match="development flag"):
        fc.transport_args(None)
    with caplog.at_level("WARNING"):
        assert fc.transport_args(None, insecure_dev=True, who="SuperLink") == ["--insecure"]
    assert "WITHOUT TLS" in caplog.text


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_real_flower_deployment_with_tls_and_node_authentication(federation, tmp_path: Path) -> None:
    hub, sites = federation
    from fedcare_workloads.synth import generate_federation

    data = tmp_path / "data"
    summary = generate_federation(data, num_sites=2, images_per_site=24, holdout=8, image_size=32, seed=0)
    site_dirs = [k for k in summary if k != "holdout"]
    with TLSDeployment(tmp_path / "flower") as dep:
        cert = fc.issue_superlink_certificate(hub, common_name=SERVICE_DNS, dns_names=["localhost"],
                                              ip_sans=["127.0.0.1"], ttl="1h")
        tls = fc.write_superlink_tls(cert, tmp_path / "superlink-tls")
        assert oct(tls.keyfile.stat().st_mode & 0o777) == "0o600"
        ca = tmp_path / "ca.pem"
        ca.write_text(fc.ca_certificate(hub))
        dep.start_superlink(fc.transport_args(fc.superlink_args(tls)), ca)
        dep.configure_cli(ca)

        # Plain HTTP is refused: the SuperLink speaks TLS only.
        with pytest.raises(OSError):
            urllib.request.urlopen(f"http://127.0.0.1:{dep.port}/health", timeout=3)
        # A client that does not trust our CA is refused.
        with pytest.raises(urllib.error.URLError, match="CERTIFICATE_VERIFY_FAILED"):
            urllib.request.urlopen(f"https://127.0.0.1:{dep.port}/health", timeout=3,
                                   context=ssl.create_default_context())

        node_ids = {}
        for i, (site, client) in enumerate(sites.items()):
            pub = fc.ensure_supernode_key(client, site)                    # at the site
            node_ids[site] = fc.register_supernode(str(BIN / "flwr"), fc.supernode_public_key(hub, site), "tls",
                                                   name=site, workdir=dep.workdir, env=dep.env)
            key = fc.write_supernode_key(client, site, tmp_path / site / "supernode.key")
            assert oct(key.stat().st_mode & 0o777) == "0o600" and pub
            dep.start_supernode(site, fc.supernode_args(ca, key),
                                f'site="{site}" data-path="{data / site_dirs[i]}" data-root="{data}" torch-threads=1')

        def online() -> set[str]:
            nodes = dep.flwr("supernode", "list", "tls")["nodes"]
            return {str(n["node-id"]) for n in nodes if n.get("status") == "online"}

        deadline = time.monotonic() + 90
        while online() != set(node_ids.values()):
            assert time.monotonic() < deadline, f"SuperNodes not online: {dep.flwr('supernode', 'list', 'tls')}\n" \
                                                f"{dep.logs()}"
            dep.check_alive()
            time.sleep(1)

        # An unregistered key (valid TLS, same CA) is refused by node authentication.
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        rogue = tmp_path / "rogue.key"
        rogue.write_bytes(ec.generate_private_key(ec.SECP384R1()).private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()))
        proc = dep.start_supernode("rogue", fc.supernode_args(ca, rogue), 'site="rogue"')
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            pytest.fail(f"an unregistered SuperNode was not refused\n{dep.logs()}")
        assert proc.returncode != 0
        assert "2004" in (dep.workdir / "rogue.log").read_text(errors="replace")
        assert online() == set(node_ids.values())

        # A real round over TLS with authenticated SuperNodes: the fedcare workload, one round.
        out = tmp_path / "out"
        run = dep.flwr("run", str(APP_DIR), "tls", "-c",
                       f'num-server-rounds=1 fraction-evaluate=0.0 min-train-nodes=2 min-available-nodes=2 '
                       f'image-size=32 batch-size=8 node-wait-timeout=60.0 round-timeout=120.0 out-dir="{out}"',
                       timeout=120)
        assert run.get("success"), run
        deadline = time.monotonic() + 180
        while True:
            runs = dep.flwr("ls", "tls", "--run-id", run["run-id"])["runs"]
            status = str((runs[0] if runs else {}).get("status", ""))
            if status.startswith("finished"):
                break
            assert time.monotonic() < deadline, f"run not finished: {runs}\n{dep.logs()}"
            time.sleep(2)
        assert status == "finished:completed", f"{runs}\n{dep.logs()}"
        assert (out / "model.safetensors").exists()
