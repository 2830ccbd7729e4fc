"""The hub on a real kind cluster: install by helm, enroll a hospital, check the site's RBAC
fence with the API server's own authorizer, unenroll. Skipped without the kind-fedcare context.

Uses the release docs/kind.md installs (fedcare-hub in fedcare-system): on a fresh cluster the
test installs it and uninstalls it at the end; where it exists, the test upgrades it in place and
leaves it. It never deletes what it did not create: a HospitalNode named rouen must not exist yet.
The image comes from FEDCARE_E2E_IMAGE (default fedcare:dev, loaded with `kind load`).
"""

from __future__ import annotations

import json
import os
import ssl
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest

from kindcluster import ROOT, Cluster, eventually

pytestmark = pytest.mark.e2e

RELEASE, NAMESPACE = "fedcare-hub", "fedcare-system"
SITE, OTHER_SITE = "rouen", "lyon"
SITE_NS = f"fedcare-site-{SITE}"
AGENT = f"system:serviceaccount:{SITE_NS}:fedcare-agent"
IMAGE = os.environ.get("FEDCARE_E2E_IMAGE", "fedcare:dev")


def refuse_a_second_hub(cluster: Cluster) -> None:
    """Two hubs would reconcile the same objects, and helm refuses CRDs owned by another release."""
    if cluster.exists("crd", "hospitalnodes.fedcare.io"):
        notes = cluster.json("get", "crd", "hospitalnodes.fedcare.io")["metadata"].get("annotations", {})
        owner = (notes.get("meta.helm.sh/release-name"), notes.get("meta.helm.sh/release-namespace"))
        if owner != (RELEASE, NAMESPACE):
            held = f"helm release {owner[0]} in namespace {owner[1]}" if owner[0] else "no helm release (kubectl apply?)"
            pytest.fail(f"the fedcare CRDs already exist, owned by {held}: use a fresh kind cluster, or uninstall "
                        "that release and delete the CRDs (`kubectl delete crd -l app.kubernetes.io/part-of=fedcare`: "
                        "this deletes every fedcare object)", pytrace=False)
    hubs = cluster.json("get", "deployments", "-A", "-l", "app.kubernetes.io/component=hub")["items"]
    others = [f"{d['metadata']['namespace']}/{d['metadata']['name']}" for d in hubs
              if d["metadata"]["namespace"] != NAMESPACE]
    if others:
        pytest.fail(f"a fedcare hub already runs in this cluster ({', '.join(others)}): uninstall it first",
                    pytrace=False)


@pytest.fixture(scope="module")
def hub(cluster: Cluster) -> Iterator[Cluster]:
    refuse_a_second_hub(cluster)
    if cluster.exists("hospitalnode", SITE):
        pytest.fail(f"HospitalNode {SITE} already exists (a previous run, or yours): this test enrolls and deletes "
                    f"it, so delete it first: `kubectl --context kind-fedcare delete hospitalnode {SITE}`",
                    pytrace=False)
    installed_here = RELEASE not in cluster.helm("list", "-n", NAMESPACE, "-q").stdout.split()
    repository, _, tag = IMAGE.rpartition(":")
    try:
        cluster.helm("upgrade", "--install", RELEASE, str(ROOT / "charts" / "fedcare"), "-n", NAMESPACE,
                     "--create-namespace", "--wait", "--timeout", "180s",
                     "--set", f"mode=hub,image.repository={repository},image.tag={tag},image.pullPolicy=Never",
                     timeout=240)
    except AssertionError as err:
        pods = cluster.kubectl("get", "pods", "-n", NAMESPACE, "-o", "wide", check=False).stdout
        pytest.fail(f"{err}\n{pods}\nIs {IMAGE} loaded? `docker build -t {IMAGE} . && "
                    f"kind load docker-image {IMAGE} --name fedcare`", pytrace=False)
    yield cluster
    # The hub must still run while the node goes: its finalizer removes the site namespace.
    cluster.kubectl("delete", "hospitalnode", SITE, "--ignore-not-found", "--timeout=120s", check=False, timeout=150)
    if installed_here:
        cluster.helm("uninstall", RELEASE, "-n", NAMESPACE, "--wait", "--timeout", "120s", timeout=150)


def condition(node: dict, kind: str) -> str | None:
    found = [c for c in node.get("status", {}).get("conditions", []) if c["type"] == kind]
    return found[0]["status"] if found else None


@pytest.fixture(scope="module")
def enrolled(hub: Cluster) -> Cluster:
    hub.kubectl("apply", "-f", str(ROOT / "examples" / f"hospitalnode-{SITE}.yaml"))
    eventually(lambda: condition(hub.json("get", "hospitalnode", SITE), "Enrolled") == "True", timeout=60,
               what=f"HospitalNode {SITE} has condition Enrolled=True")
    return hub


def test_enrollment_creates_the_site_identity(enrolled):
    # the RoleBinding binds the chart's ClusterRole fedcare:site-agent: no per-site Role any more
    for kind, name in [("namespace", SITE_NS), ("serviceaccount", "fedcare-agent"), ("rolebinding", "fedcare-site")]:
        args = (kind, name) if kind == "namespace" else (kind, name, "-n", SITE_NS)
        eventually(lambda: enrolled.exists(*args), timeout=60, what=f"{kind} {name} in {SITE_NS}")


def can_i(cluster: Cluster, verb: str, resource: str, namespace: str) -> str:
    done = cluster.kubectl("auth", "can-i", verb, resource, "-n", namespace, f"--as={AGENT}", check=False)
    return done.stdout.strip()


def test_the_authorizer_fences_the_agent_into_its_namespace(enrolled):
    assert can_i(enrolled, "get", "roundassignments", SITE_NS) == "yes"   # control: the fence has a gate
    assert can_i(enrolled, "get", "roundassignments", f"fedcare-site-{OTHER_SITE}") == "no"
    assert can_i(enrolled, "create", "roundassignments", SITE_NS) == "no"
    assert can_i(enrolled, "list", "secrets", SITE_NS) == "no"


def get_as(cluster: Cluster, token: str, path: str) -> tuple[int, dict]:
    """GET with only a bearer token: kubectl --token would still present kind's admin client cert."""
    server, ca = cluster.server()
    assert ca, f"context has no CA for {server}: a token is never sent without verifying the server"
    https = urllib.request.HTTPSHandler(context=ssl.create_default_context(cadata=ca.decode()))
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}), https)
    request = urllib.request.Request(server + path, headers={"Authorization": f"Bearer {token}"})
    try:
        with opener.open(request, timeout=15) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"{}")


def test_a_real_token_is_forbidden_in_another_site(enrolled):
    token = enrolled.kubectl("create", "token", "fedcare-agent", "-n", SITE_NS, "--duration=10m").stdout.strip()
    path = "/apis/fedcare.io/v1alpha1/namespaces/{}/roundassignments"
    status, _ = get_as(enrolled, token, path.format(SITE_NS))
    assert status == 200, "the agent's token must read its own assignments (control)"
    status, body = get_as(enrolled, token, path.format(f"fedcare-site-{OTHER_SITE}"))
    assert status == 403 and body.get("reason") == "Forbidden", body
    assert AGENT in body.get("message", "")


def test_unenrolling_removes_the_site_namespace(enrolled):
    enrolled.kubectl("delete", "hospitalnode", SITE, "--wait=false")

    def namespace_going() -> bool:
        done = enrolled.kubectl("get", "namespace", SITE_NS, "--ignore-not-found", "-o", "json", check=False)
        return not done.stdout.strip() or json.loads(done.stdout)["status"].get("phase") == "Terminating"

    eventually(namespace_going, timeout=120, what=f"namespace {SITE_NS} gone or terminating")
    eventually(lambda: not enrolled.exists("clusterrole", f"fedcare-site-{SITE}"), timeout=60,
               what=f"ClusterRole fedcare-site-{SITE} deleted")
    eventually(lambda: not enrolled.exists("hospitalnode", SITE), timeout=120,
               what=f"HospitalNode {SITE} gone (the hub released its finalizer)")
