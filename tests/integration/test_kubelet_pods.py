"""Process kubelet: command/args/env/volumes, restart policies, images, config errors."""

from __future__ import annotations

import base64
import json
import logging

import pytest

from fedcare.integrations.kube import Ref
from fedcare.sandbox.kubelet import running_kubelet
from tests.support.kubelet import (IMAGE, clean_up, container, create, fast_kubelet_kwargs, log_text, phase, pod,
                                   wait_pod)

NODE = "node-a"
DUMP = ("import json, os, sys; print(json.dumps({'argv': sys.argv[1:], 'cwd': os.getcwd(), "
        "'env': {k: v for k, v in os.environ.items()}}))")


@pytest.fixture()
async def kubelet(api, tmp_path):
    try:
        async with running_kubelet(api, NODE, tmp_path / "kubelet", **fast_kubelet_kwargs()) as k:
            yield k
    finally:
        await clean_up(api, NODE)


def dumped(kubelet, name: str) -> dict:
    return json.loads(log_text(kubelet, name).strip().splitlines()[-1])


@pytest.mark.tiers
async def test_command_args_env_expansion_and_field_refs(apiserver, api, kubelet):
    await create(api, {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cfg", "namespace": "default"},
                       "data": {"mode": "fast", "extra": "1"}})
    await create(api, {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "tok", "namespace": "default"},
                       "data": {"token": base64.b64encode(b"s3cret-value").decode()}})
    env = [{"name": "GREETING", "value": "hello"},
           {"name": "MESSAGE", "value": "$(GREETING) world, $$(GREETING) stays, $(UNDEFINED) too"},
           {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
           {"name": "NS", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
           {"name": "IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
           {"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
           {"name": "APP", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['app']"}}},
           {"name": "MODE", "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "mode"}}},
           {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "tok", "key": "token"}}},
           {"name": "LISTEN", "value": "0.0.0.0:9092"}]
    spec = {"name": "main", "image": "fedcare:1.2.3@sha256:" + "a" * 64, "command": ["python", "-c", DUMP],
            "args": ["--greet=$(GREETING)", "--bind", "[::]:8080", "$(MODE)"], "env": env,
            "envFrom": [{"configMapRef": {"name": "cfg"}, "prefix": "CFG_"}], "workingDir": "/work/dir",
            "volumeMounts": [{"name": "w", "mountPath": "/work"}]}
    await create(api, pod("env", containers=[spec], node=NODE, labels={"app": "demo"},
                          volumes=[{"name": "w", "emptyDir": {}}]))
    done = await wait_pod(api, "env", lambda p: phase(p) in ("Succeeded", "Failed"))
    assert phase(done) == "Succeeded", done["status"]
    out = dumped(kubelet, "env")
    ip = done["status"]["podIP"]
    e = out["env"]
    assert out["argv"] == ["--greet=hello", "--bind", f"{ip}:8080", "fast"]
    assert e["MESSAGE"] == "hello world, $(GREETING) stays, $(UNDEFINED) too"
    assert (e["POD"], e["NS"], e["IP"], e["NODE"], e["APP"]) == ("env", "default", ip, NODE, "demo")
    assert (e["MODE"], e["TOKEN"], e["CFG_mode"], e["CFG_extra"]) == ("fast", "s3cret-value", "fast", "1")
    assert e["LISTEN"] == f"{ip}:9092"
    assert e["HOSTNAME"] == "env" and e["PATH"].split(":")[0].endswith("/bin")
    assert out["cwd"].startswith(str(kubelet.dir)) and out["cwd"].endswith("/volumes/empty-dir/w/dir")


@pytest.mark.tiers
async def test_volumes_map_to_folders_and_paths_are_translated(apiserver, api, kubelet, tmp_path):
    await create(api, {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "files", "namespace": "default"},
                       "data": {"app.toml": "x = 1\n", "other": "o"}})
    await create(api, {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "keys", "namespace": "default"},
                       "data": {"key.pem": base64.b64encode(b"PRIVATE").decode()}})
    await create(api, {"apiVersion": "v1", "kind": "PersistentVolumeClaim",
                       "metadata": {"name": "data", "namespace": "default"},
                       "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}})
    host = tmp_path / "host"
    host.mkdir()
    (host / "input.txt").write_text("from the host")
    code = ("import os, sys\n"
            "print(open('/etc/app/conf.toml').read().strip())\n"
            "print(open('/keys/key.pem').read())\n"
            "print(open('/host/input.txt').read())\n"
            "open('/data/out.txt', 'w').write('kept')\n"
            "open('/scratch/shared.txt', 'w').write('between containers')\n"
            "import stat\nprint(oct(stat.S_IMODE(os.stat('/etc/app/conf.toml').st_mode)))\n"
            "print(sys.argv[1])\n")
    mounts = [{"name": "cfg", "mountPath": "/etc/app", "readOnly": True},
              {"name": "keys", "mountPath": "/keys"}, {"name": "data", "mountPath": "/data"},
              {"name": "host", "mountPath": "/host", "readOnly": True}, {"name": "scratch", "mountPath": "/scratch"}]
    containers = [{"name": "main", "image": IMAGE, "command": ["python", "-c", code, "--out=/data/model"],
                   "volumeMounts": mounts},
                  {"name": "second", "image": IMAGE, "volumeMounts": [{"name": "scratch", "mountPath": "/s"}],
                   "command": ["python", "-c", "import time, os\nwhile not os.path.exists('/s/shared.txt'): "
                               "time.sleep(0.05)\nprint(open('/s/shared.txt').read())"]}]
    volumes = [{"name": "cfg", "configMap": {"name": "files", "items": [{"key": "app.toml", "path": "conf.toml"}]}},
               {"name": "keys", "secret": {"secretName": "keys"}},
               {"name": "data", "persistentVolumeClaim": {"claimName": "data"}},
               {"name": "host", "hostPath": {"path": str(host), "type": "Directory"}},
               {"name": "scratch", "emptyDir": {}}]
    await create(api, pod("vols", containers=containers, node=NODE, volumes=volumes))
    done = await wait_pod(api, "vols", lambda p: phase(p) in ("Succeeded", "Failed"))
    assert phase(done) == "Succeeded", (done["status"], log_text(kubelet, "vols"))
    lines = log_text(kubelet, "vols").splitlines()
    uid = (await api.get(Ref("v1", "persistentvolumeclaims", "default", "data")))["metadata"]["uid"]
    claim = kubelet.dir / "volumes" / "pvc" / "default" / f"data-{uid[:8]}"
    assert lines == ["x = 1", "PRIVATE", "from the host", "0o444", f"--out={claim}/model"]
    assert (claim / "out.txt").read_text() == "kept"    # a claim's folder outlives the pod
    assert log_text(kubelet, "vols", "second").strip() == "between containers"


async def test_a_claim_made_again_under_the_same_name_is_a_new_empty_volume(api, kubelet):
    """As with a dynamically provisioned volume: a resumed round's SuperLink must not find the
    previous attempt's state in a claim deleted and created again with the same name."""
    claim = {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "state", "namespace": "default"},
             "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}}
    code = ("import os\nprint(sorted(os.listdir('/state')))\nopen('/state/db', 'w').write('attempt')\n")
    spec = {"name": "main", "image": IMAGE, "command": ["python", "-c", code],
            "volumeMounts": [{"name": "state", "mountPath": "/state"}]}
    volumes = [{"name": "state", "persistentVolumeClaim": {"claimName": "state"}}]
    for attempt in (1, 2):
        await create(api, json.loads(json.dumps(claim)))
        name = f"attempt{attempt}"
        await create(api, pod(name, containers=[dict(spec)], node=NODE, volumes=volumes))
        done = await wait_pod(api, name, lambda p: phase(p) in ("Succeeded", "Failed"))
        assert phase(done) == "Succeeded", (done["status"], log_text(kubelet, name))
        assert log_text(kubelet, name).strip() == "[]", f"attempt {attempt} found the previous claim's files"
        await api.delete(Ref("v1", "pods", "default", name))
        await api.delete(Ref("v1", "persistentvolumeclaims", "default", "state"))


@pytest.mark.tiers
async def test_on_failure_restarts_with_backoff_until_success(apiserver, api, kubelet):
    code = ("import os, sys\np = '/state/n'\nn = int(open(p).read()) if os.path.exists(p) else 0\n"
            "open(p, 'w').write(str(n + 1))\nsys.exit(0 if n >= 2 else 7)")
    spec = {"name": "main", "image": IMAGE, "command": ["python", "-c", code],
            "volumeMounts": [{"name": "state", "mountPath": "/state"}]}
    await create(api, pod("flaky", containers=[spec], node=NODE, restart="OnFailure",
                          volumes=[{"name": "state", "emptyDir": {}}]))
    backoff = await wait_pod(api, "flaky", lambda p: container(p).get("state", {}).get("waiting", {}).get("reason")
                             == "CrashLoopBackOff")
    assert phase(backoff) == "Running"
    assert container(backoff)["lastState"]["terminated"]["exitCode"] == 7
    done = await wait_pod(api, "flaky", lambda p: phase(p) == "Succeeded")
    assert container(done)["restartCount"] == 2
    assert container(done)["state"]["terminated"]["exitCode"] == 0
    assert container(done)["lastState"]["terminated"]["exitCode"] == 7


async def test_always_restarts_even_after_success(api, kubelet):
    await create(api, pod("again", "print('tick')", node=NODE, restart="Always"))
    p = await wait_pod(api, "again", lambda p: container(p).get("restartCount", 0) >= 2)
    assert phase(p) == "Running"


async def test_never_keeps_a_failed_container_failed(api, kubelet):
    await create(api, pod("once", "raise SystemExit(5)", node=NODE, restart="Never"))
    done = await wait_pod(api, "once", lambda p: phase(p) == "Failed")
    assert container(done)["restartCount"] == 0
    assert container(done)["state"]["terminated"]["exitCode"] == 5


async def test_a_signal_death_reports_128_plus_the_signal(api, kubelet):
    await create(api, pod("killed", "import os, signal; os.kill(os.getpid(), signal.SIGKILL)", node=NODE))
    done = await wait_pod(api, "killed", lambda p: phase(p) == "Failed")
    assert container(done)["state"]["terminated"]["exitCode"] == 137


@pytest.mark.tiers
async def test_an_unknown_image_never_runs(apiserver, api, kubelet):
    await create(api, pod("mystery", "open('/tmp/never', 'w')", node=NODE, image="docker.io/library/busybox:1.36"))
    p = await wait_pod(api, "mystery", lambda p: "waiting" in container(p).get("state", {}))
    waiting = container(p)["state"]["waiting"]
    assert waiting["reason"] == "ErrImagePull"
    assert "docker.io/library/busybox:1.36" in waiting["message"] and "image table" in waiting["message"]
    assert phase(p) == "Pending" and not kubelet.processes
    assert kubelet.log_path("default", "mystery", "main") is None


async def test_the_training_image_has_no_default_command(api, kubelet):
    spec = {"name": "main", "image": "ghcr.io/fedcare/ultrasound-train@sha256:" + "b" * 64}
    await create(api, pod("nocmd", containers=[spec], node=NODE))
    p = await wait_pod(api, "nocmd", lambda p: "waiting" in container(p).get("state", {}))
    assert container(p)["state"]["waiting"]["reason"] == "CreateContainerError"
    assert "set command" in container(p)["state"]["waiting"]["message"]


async def test_a_missing_secret_waits_then_starts_and_is_never_logged(api, kubelet, caplog_all):
    env = [{"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "late", "key": "token"}}}]
    spec = {"name": "main", "image": IMAGE, "env": env,
            "command": ["python", "-c", "import os; print(len(os.environ['TOKEN']))"]}
    await create(api, pod("late", containers=[spec], node=NODE))
    p = await wait_pod(api, "late", lambda p: "waiting" in container(p).get("state", {}))
    waiting = container(p)["state"]["waiting"]
    assert waiting["reason"] == "CreateContainerConfigError" and 'secret "late" not found' in waiting["message"]
    await create(api, {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "late", "namespace": "default"},
                       "data": {"token": base64.b64encode(b"hunter2-very-secret").decode()}})
    done = await wait_pod(api, "late", lambda p: phase(p) == "Succeeded")
    assert log_text(kubelet, "late").strip() == str(len("hunter2-very-secret"))
    assert "hunter2-very-secret" not in json.dumps(done)
    assert not [r for r in caplog_all if "hunter2-very-secret" in r.getMessage()]


@pytest.fixture()
def caplog_all():
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    handler = Keep(logging.DEBUG)
    root = logging.getLogger()
    old = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    yield records
    root.removeHandler(handler)
    root.setLevel(old)


async def test_gpus_are_capacity_devices_and_admission(api, tmp_path):
    async with running_kubelet(api, "gpu-node", tmp_path / "k", **fast_kubelet_kwargs(gpus=2)) as kubelet:
        node = await api.get(Ref("v1", "nodes", None, "gpu-node"))
        assert node["status"]["capacity"]["nvidia.com/gpu"] == "2"
        assert node["status"]["allocatable"]["nvidia.com/gpu"] == "2"
        spec = {"name": "main", "image": IMAGE, "resources": {"limits": {"nvidia.com/gpu": "1"}},
                "command": ["python", "-c", "import os; print(os.environ['NVIDIA_VISIBLE_DEVICES'])"]}
        await create(api, pod("one-gpu", containers=[spec], node="gpu-node"))
        await wait_pod(api, "one-gpu", lambda p: phase(p) == "Succeeded")
        assert log_text(kubelet, "one-gpu").strip() == "0"
        big = {**spec, "resources": {"limits": {"nvidia.com/gpu": "3"}}}
        await create(api, pod("too-many", containers=[big], node="gpu-node"))
        p = await wait_pod(api, "too-many", lambda p: phase(p) == "Failed")
        assert p["status"]["reason"] == "UnexpectedAdmissionError"
        assert "Requested: 3, Available: 2" in p["status"]["message"]
        await create(api, pod("unbound-big", containers=[big]))   # the binder never binds what cannot fit
        await create(api, pod("unbound-ok", containers=[spec]))
        await wait_pod(api, "unbound-ok", lambda p: phase(p) == "Succeeded")
        assert not (await api.get(Ref("v1", "pods", "default", "unbound-big")))["spec"].get("nodeName")


@pytest.mark.tiers
async def test_init_containers_run_in_order_before_the_app(apiserver, api, kubelet):
    flaky = ("import os, sys\np = '/w/tries'\nn = int(open(p).read()) if os.path.exists(p) else 0\n"
             "open(p, 'w').write(str(n + 1))\nassert open('/w/first').read() == 'one'\nsys.exit(0 if n else 4)")
    mount = [{"name": "w", "mountPath": "/w"}]
    inits = [{"name": "first", "image": IMAGE, "volumeMounts": mount,
              "command": ["python", "-c", "open('/w/first', 'w').write('one')"]},
             {"name": "second", "image": IMAGE, "volumeMounts": mount, "command": ["python", "-c", flaky]}]
    app = [{"name": "main", "image": IMAGE, "volumeMounts": mount,
            "command": ["python", "-c", "print(open('/w/first').read(), open('/w/tries').read())"]}]
    await create(api, pod("inits", containers=app, initContainers=inits, node=NODE, restart="OnFailure",
                          volumes=[{"name": "w", "emptyDir": {}}]))
    early = await wait_pod(api, "inits", lambda p: (p.get("status") or {}).get("initContainerStatuses"))
    assert phase(early) in ("Pending", "Succeeded")
    done = await wait_pod(api, "inits", lambda p: phase(p) == "Succeeded")
    assert log_text(kubelet, "inits").strip() == "one 2"
    second = done["status"]["initContainerStatuses"][1]
    assert second["restartCount"] == 1 and second["lastState"]["terminated"]["exitCode"] == 4
    assert {c["type"]: c["status"] for c in done["status"]["conditions"]}["Initialized"] == "True"


async def test_a_failed_init_container_fails_a_never_pod_and_the_app_never_runs(api, kubelet):
    inits = [{"name": "check", "image": IMAGE, "command": ["python", "-c", "raise SystemExit(9)"]}]
    await create(api, pod("bad-init", "print('must not run')", initContainers=inits, node=NODE, restart="Never"))
    done = await wait_pod(api, "bad-init", lambda p: phase(p) == "Failed")
    assert done["status"]["initContainerStatuses"][0]["state"]["terminated"]["exitCode"] == 9
    assert container(done)["state"]["waiting"]["reason"] == "PodInitializing"
    initialized = next(c for c in done["status"]["conditions"] if c["type"] == "Initialized")
    assert initialized["status"] == "False" and "check" in initialized["message"]
    assert kubelet.log_path("default", "bad-init", "main") is None
