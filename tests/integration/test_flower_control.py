"""The hub registers SuperNode keys with a real flower-superlink (TLS, SuperNode
authentication) over the Control API in its own process (hub/flower_control.py): a node id
the first time, '' for a key it already has, and clear bounded failures."""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import os
import pathlib
import ssl
import subprocess
import sys
import time
import urllib.request

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import NameOID

from fedcare.hub import flower_control as control
from fedcare.hub.flower_runs import FlowerCLI, FlowerError, KeyRefused, RunUnknown
from fedcare.sandbox.openbao import free_port

pytestmark = pytest.mark.slow
BIN = pathlib.Path(sys.executable).parent


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _ca_and_server(folder: pathlib.Path) -> tuple[pathlib.Path, pathlib.Path, pathlib.Path]:
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP384R1())
    ca = (x509.CertificateBuilder().subject_name(_name("test ca")).issuer_name(_name("test ca"))
          .public_key(ca_key.public_key()).serial_number(1).not_valid_before(now)
          .not_valid_after(now + dt.timedelta(hours=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True).sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP384R1())
    cert = (x509.CertificateBuilder().subject_name(_name("localhost")).issuer_name(_name("test ca"))
            .public_key(key.public_key()).serial_number(2).not_valid_before(now)
            .not_valid_after(now + dt.timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                        x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False).sign(ca_key, hashes.SHA256()))
    paths = folder / "ca.pem", folder / "server.pem", folder / "server.key"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return paths


def _openssh(key) -> str:
    return key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                         serialization.PublicFormat.OpenSSH).decode()


@pytest.fixture(scope="module")
def superlink(tmp_path_factory):
    folder = tmp_path_factory.mktemp("superlink")
    ca, cert, key = _ca_and_server(folder)
    port = free_port()
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", "FLWR_HOME": str(folder / "home")}
    with open(folder / "superlink.log", "w") as log:
        proc = subprocess.Popen([str(BIN / "flower-superlink"), "--host", "127.0.0.1", "--port", str(port),
                                 "--ssl-certfile", str(cert), "--ssl-keyfile", str(key), "--ssl-ca-certfile", str(ca),
                                 "--enable-supernode-auth", "--database", str(folder / "state.db"),
                                 "--disable-runtime-dependency-installation"],
                                stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    context = ssl.create_default_context(cafile=str(ca))
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"https://127.0.0.1:{port}/health", context=context, timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            assert proc.poll() is None, (folder / "superlink.log").read_text()[-2000:]
            assert time.monotonic() < deadline, "flower-superlink did not answer /health within 120 s"
            time.sleep(0.3)
        yield f"127.0.0.1:{port}", ca.read_text()
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_a_key_is_registered_once_and_again_is_no_error(superlink):
    address, ca = superlink
    public = _openssh(ec.generate_private_key(ec.SECP384R1()))
    node = asyncio.run(control.register(address, ca, public, "rouen"))
    assert node.isdigit() and int(node) > 0
    assert asyncio.run(control.register(address, ca, public, "rouen")) == ""    # already there: success


def test_the_hubs_flower_client_registers_through_the_rounds_ca(superlink, tmp_path):
    address, ca = superlink
    cli = FlowerCLI(tmp_path, flwr="/bin/false")      # no CLI process is started for this
    with pytest.raises(FlowerError, match="no CA certificate"):
        asyncio.run(cli.register("round-a", address, "lyon", _openssh(ec.generate_private_key(ec.SECP256R1()))))
    cli.trust("round-a", ca)
    assert asyncio.run(cli.register("round-a", address, "lyon",
                                    _openssh(ec.generate_private_key(ec.SECP256R1())))).isdigit()


def test_a_key_that_is_not_an_ec_key_is_refused_before_any_call(superlink, tmp_path):
    address, ca = superlink
    with pytest.raises(control.ControlError, match="not an EC public key"):
        asyncio.run(control.register(address, ca, _openssh(ed25519.Ed25519PrivateKey.generate()), "nantes"))
    with pytest.raises(control.ControlError, match="not an OpenSSH public key") as err:
        asyncio.run(control.register(address, ca, "ssh-rsa garbage", "nantes"))
    assert err.value.refused            # no retry changes it: the round says to fix the key
    cli = FlowerCLI(tmp_path, flwr="/bin/false")
    cli.trust("round-k", ca)
    with pytest.raises(KeyRefused, match="registering the SuperNode key of nantes: not an EC public key"):
        asyncio.run(cli.register("round-k", address, "nantes", _openssh(ed25519.Ed25519PrivateKey.generate())))


def test_a_certificate_from_another_ca_is_refused_after_bounded_tries(superlink, tmp_path):
    address, _ = superlink
    other_ca = _ca_and_server(tmp_path)[0].read_text()
    policy = control.ControlPolicy(timeout=5, attempts=2, base_delay=0.1)
    with pytest.raises(control.ControlError, match=f"SuperLink at {address} did not answer RegisterNode: "
                                                   "ConnectError: .*CERTIFICATE_VERIFY_FAILED"):
        asyncio.run(control.register(address, other_ca, _openssh(ec.generate_private_key(ec.SECP384R1())), "x",
                                     policy))


def test_a_superlink_that_is_not_there_fails_after_bounded_retries(superlink):
    _, ca = superlink
    policy = control.ControlPolicy(timeout=2, attempts=3, base_delay=0.2, max_delay=0.4)
    started = time.monotonic()
    with pytest.raises(control.ControlError, match=r"127\.0\.0\.1:\d+ did not answer RegisterNode: ConnectError"):
        asyncio.run(control.register(f"127.0.0.1:{free_port()}", ca,
                                     _openssh(ec.generate_private_key(ec.SECP384R1())), "x", policy))
    assert time.monotonic() - started < 10          # 3 tries and two short pauses, not a hang


def test_runs_are_listed_over_the_control_api_with_the_rounds_ca(superlink, tmp_path):
    address, ca = superlink
    cli = FlowerCLI(tmp_path, flwr="/bin/false")
    with pytest.raises(FlowerError, match="no CA certificate"):
        asyncio.run(cli.runs("round-b", address, insecure=False))
    cli.trust("round-b", ca)
    assert asyncio.run(cli.runs("round-b", address, insecure=False)) == []      # no run submitted here
    with pytest.raises(RunUnknown, match="does not know run 4242"):     # HTTP 404 "Run ID not found"
        asyncio.run(cli.run("round-b", address, "4242", insecure=False))
    with pytest.raises(FlowerError, match=r"did not answer ListRuns: ConnectError"):
        asyncio.run(FlowerCLI(tmp_path, flwr="/bin/false", attempts=2, base_delay=0.2)
                    .runs("round-b", f"127.0.0.1:{free_port()}", insecure=False))
    with pytest.raises(FlowerError, match="did not answer RegisterNode") as err:    # no answer: not a refusal
        asyncio.run(FlowerCLI(tmp_path, flwr="/bin/false", attempts=2, base_delay=0.2).register(
            "round-b", f"127.0.0.1:{free_port()}", "x", _openssh(ec.generate_private_key(ec.SECP256R1()))))
    assert not isinstance(err.value, KeyRefused)


def test_an_unreadable_ca_is_a_clear_error_not_a_crash(superlink):
    address, _ = superlink
    with pytest.raises(control.ControlError, match="RegisterNode at .*SSLError"):
        asyncio.run(control.register(address, "-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n",
                                     _openssh(ec.generate_private_key(ec.SECP384R1())), "x"))


def test_a_refusal_is_not_retried_and_says_refused(superlink, tmp_path):
    address, ca = superlink
    started = time.monotonic()
    with pytest.raises(control.ControlError, match=r"refused ListRuns: HTTP 404") as err:
        asyncio.run(control._call(address, ca, "ListRuns", lambda: __import__(
            "flwr.proto.control_pb2", fromlist=["ListRunsRequest"]).ListRunsRequest(run_id=99),
            control.ControlPolicy(attempts=3, base_delay=2.0)))
    assert err.value.status == 404 and time.monotonic() - started < 2.0     # no backoff: one answer
    # Flower's code says what it is (a run not found), and it is not a refused key: only Flower's
    # PUBLIC_KEY_NOT_VALID (or the hub's own check) tells a round to fix a site's key
    assert err.value.code == control.RUN_NOT_FOUND and not err.value.refused


def test_an_error_body_that_is_not_an_object_is_read_as_text():
    import httpx
    assert control._error_code(httpx.Response(502, text='["bad gateway"]')) == (None, '["bad gateway"]')
    assert control._error_code(httpx.Response(412, json={"code": 23, "detail": "in use"})) == (23, "in use")


async def test_a_404_that_is_not_flowers_run_not_found_is_not_a_lost_run(emulator):
    """A wrong address or route (here: a Kubernetes-style API server answering 404 with its own
    Status body) must not read as "the SuperLink lost the run", which fails a round for good."""
    address = str(emulator.url).removeprefix("http://")
    with pytest.raises(control.ControlError, match="refused ListRuns: HTTP 404") as err:
        await control.list_runs(address, None, run_id="5", policy=control.ControlPolicy(attempts=1))
    assert err.value.status == 404 and err.value.code != control.RUN_NOT_FOUND and not err.value.refused
