"""A real Kubernetes control plane on this machine: ``fedcare sandbox cluster --dir DIR``.

The binary (``tools/kube``, built by ``make kube`` into ``.tools/bin/fedcare-kube``) runs etcd,
kube-apiserver, kube-controller-manager and kube-scheduler from the Kubernetes Go modules. This
module finds it, starts it, waits for its ``ready:`` line and stops it; tests, benchmarks and
the CLI share it. The emulator (``sandbox/emulator.py``) stays the fast tier; this is the
fidelity tier for install-path, RBAC and API-semantics claims.
"""

from __future__ import annotations

import os
import pathlib
import re
import shutil
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field

ROOT = pathlib.Path(__file__).resolve().parents[3]
BUILD_HINT = ("build it with `make kube` (needs Go >= 1.24 and the Go module proxy; the first build takes "
              "25-35 minutes on 2 cores, later ones seconds)")
_READY = re.compile(r"^ready: Kubernetes (?P<version>\S+) API at (?P<server>\S+) in (?P<secs>[0-9.]+)s; "
                    r"kubeconfig (?P<kubeconfig>\S+)$")


class ClusterError(RuntimeError):
    """The control plane could not be found, started or stopped; the message says how to fix it."""


def find_binary() -> str:
    """``$FEDCARE_KUBE``, else ``.tools/bin/fedcare-kube`` of this checkout, else ``fedcare-kube`` on PATH."""
    candidates = [os.environ.get("FEDCARE_KUBE", ""), str(ROOT / ".tools" / "bin" / "fedcare-kube"),
                  shutil.which("fedcare-kube") or ""]
    for path in candidates:
        if path and os.access(path, os.X_OK):
            return path
    raise ClusterError(f"the control-plane binary fedcare-kube is not built: {BUILD_HINT}")


@dataclass
class RealCluster:
    """One running control plane. ``start()`` blocks until the API answers, ``stop()`` ends it."""

    dir: pathlib.Path
    port: int = 0
    ready_timeout: float = 180.0
    server: str = ""
    kubeconfig: pathlib.Path = field(default_factory=pathlib.Path)
    version: str = ""
    startup_seconds: float = 0.0
    process: subprocess.Popen[str] | None = None
    _output: list[str] = field(default_factory=list)

    def start(self) -> RealCluster:
        binary = find_binary()
        self.dir.mkdir(parents=True, exist_ok=True)
        began = time.monotonic()
        self.process = subprocess.Popen(
            [binary, "cluster", "--dir", str(self.dir), "--port", str(self.port),
             "--ready-timeout", f"{int(self.ready_timeout)}s"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
        ready = threading.Event()

        def read() -> None:   # one reader for the whole life of the process: the pipe never fills
            assert self.process is not None and self.process.stdout is not None
            for line in self.process.stdout:
                line = line.rstrip("\n")
                self._output.append(line)
                if match := _READY.match(line):
                    self.server, self.version = match["server"], match["version"]
                    self.kubeconfig = pathlib.Path(match["kubeconfig"])
                    ready.set()
            ready.set()

        threading.Thread(target=read, name="fedcare-kube-output", daemon=True).start()
        try:
            ready.wait(self.ready_timeout + 10)
        except BaseException:      # a signal or Ctrl-C while starting: leave nothing running
            self.stop()
            raise
        if not self.server:
            self.stop()
            tail = "\n".join(self._output[-15:]) or "(no output)"
            raise ClusterError(f"the control plane did not become ready within {self.ready_timeout:.0f}s:\n{tail}")
        self.startup_seconds = time.monotonic() - began
        return self

    @property
    def output(self) -> str:
        return "\n".join(self._output)

    def stop(self, timeout: float = 90.0) -> int | None:
        """SIGTERM, wait; SIGKILL the whole process group if it hangs. Returns the exit code."""
        proc = self.process
        if proc is None or proc.poll() is not None:
            return None if proc is None else proc.returncode
        proc.send_signal(signal.SIGTERM)
        try:
            return proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
            raise ClusterError(f"fedcare-kube did not stop within {timeout:.0f}s of SIGTERM; killed") from None

    def __enter__(self) -> RealCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main(directory: str, port: int = 0) -> int:
    """Foreground mode for people: replace this process with the binary, so signals reach it."""
    try:
        binary = find_binary()
    except ClusterError as err:
        print(f"fedcare sandbox cluster: {err}", flush=True)
        return 2
    os.execv(binary, [binary, "cluster", "--dir", directory, "--port", str(port)])
    return 0   # not reached


def _kubectl(kubeconfig: str, *args: str, input: str | None = None) -> str:
    kubectl = ROOT / ".tools" / "bin" / "kubectl"
    exe = str(kubectl) if kubectl.exists() else (shutil.which("kubectl") or "")
    if not exe:
        raise ClusterError("kubectl not found in .tools/bin or on PATH: run `make tools`")
    try:
        proc = subprocess.run([exe, "--kubeconfig", kubeconfig, *args], capture_output=True, text=True,
                              timeout=180, input=input)
    except subprocess.TimeoutExpired:
        raise ClusterError(f"kubectl {' '.join(args[:3])} did not answer within 180s") from None
    if proc.returncode != 0:
        raise ClusterError(f"kubectl {' '.join(args)} failed: {proc.stderr.strip()}")
    return proc.stdout


def _site_kubeconfig(cluster: RealCluster, site: str, token: str) -> pathlib.Path:
    import json

    path = cluster.dir / f"site-{site}.kubeconfig"
    path.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": site,
        "clusters": [{"name": "hub", "cluster": {"server": cluster.server,
                                                 "certificate-authority": str(cluster.dir / "pki" / "ca.crt")}}],
        "users": [{"name": f"fedcare-agent@{site}", "user": {"token": token}}],
        "contexts": [{"name": site, "context": {"cluster": "hub", "user": f"fedcare-agent@{site}",
                                                "namespace": f"fedcare-site-{site}"}}]}))
    path.chmod(0o600)
    return path


class _Stop(Exception):
    """SIGTERM or Ctrl-C: unwind, stopping the processes first and the control plane last."""


def _raise_stop(*_: object) -> None:
    raise _Stop()


def _stop_all(procs: list[subprocess.Popen[bytes]]) -> None:
    for proc in reversed(procs):
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for proc in reversed(procs):
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)


def run_with_sites(directory: str, sites: list[str], port: int = 0) -> int:
    """A real control plane, the hub and one site agent per site, until Ctrl-C or SIGTERM.

    Each agent holds only a short-lived token of its enrolled ServiceAccount (TokenRequest),
    exactly as in production. The chart's admission policy is applied (with helm from
    `make tools`), so a site cannot write the hub's conditions; without helm this says so.
    A signal at any moment stops the hub and the agents first, then the control plane.
    """
    import json
    import sys

    import yaml

    log_dir = pathlib.Path(directory).resolve() / "logs"
    procs: list[subprocess.Popen[bytes]] = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, _raise_stop)
    try:
        with RealCluster(pathlib.Path(directory).resolve(), port=port) as cluster:
            try:
                return _serve_sites(cluster, sites, log_dir, procs, json, sys, yaml)
            finally:
                _stop_all(procs)          # while the API still answers: the agents stop cleanly
    except _Stop:
        print("stopped", flush=True)
        return 0
    except ClusterError as err:
        print(f"fedcare sandbox cluster: {err}", flush=True)
        return 2


def _serve_sites(cluster: RealCluster, sites: list[str], log_dir: pathlib.Path,
                 procs: list[subprocess.Popen[bytes]], json, sys, yaml) -> int:  # noqa: ANN001
    kc = str(cluster.kubeconfig)
    log_dir.mkdir(parents=True, exist_ok=True)
    print(f"control plane ready in {cluster.startup_seconds:.1f}s at {cluster.server}", flush=True)
    _kubectl(kc, "apply", "--server-side", "--field-manager=fedcare-sandbox", "-f", str(ROOT / "crds"))
    _kubectl(kc, "wait", "--for=condition=Established", "--timeout=60s", "crd", "--all")
    helm = ROOT / ".tools" / "bin" / "helm"
    if helm.exists():
        try:
            policy = subprocess.run([str(helm), "template", "fedcare", str(ROOT / "charts" / "fedcare"),
                                     "--set", "mode=hub", "--show-only", "templates/admission-policy.yaml"],
                                    capture_output=True, text=True, timeout=60, check=True).stdout
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as err:
            raise ClusterError(f"helm could not render the chart's admission policy: {err}") from None
        _kubectl(kc, "apply", "-f", "-", input=policy)
    else:
        print("WARNING: helm is not in .tools/bin (run `make tools`): the admission policy that keeps site "
              "agents off the hub's conditions is NOT applied", flush=True)
    env = {k: v for k, v in os.environ.items() if k != "KUBECONFIG"}
    procs.append(subprocess.Popen([sys.executable, "-m", "fedcare.cli", "hub", "--kubeconfig", kc,
                                   "--liveness", "", "--metrics", ""], env=env,
                                  stdout=(log_dir / "hub.log").open("wb"), stderr=subprocess.STDOUT,
                                  start_new_session=True))
    example = yaml.safe_load((ROOT / "examples" / "hospitalnode-rouen.yaml").read_text())
    for site in sites:
        node = dict(example, metadata={"name": site, "labels": example["metadata"].get("labels", {})})
        node["spec"] = dict(example["spec"], gpu={"count": 0})     # CPU-only: no GPU on this machine
        _kubectl(kc, "apply", "-f", "-", input=json.dumps(node))
    for site in sites:
        _kubectl(kc, "wait", "--for=condition=Enrolled", f"hospitalnode/{site}", "--timeout=120s")
        token = _kubectl(kc, "create", "token", "fedcare-agent", "-n", f"fedcare-site-{site}",
                         "--duration=24h").strip()
        site_kc = _site_kubeconfig(cluster, site, token)
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "fedcare.cli", "agent", "--site", site, "--hub-kubeconfig", str(site_kc),
             "--site-kubeconfig", "", "--liveness", "", "--metrics", ""], env=env,
            stdout=(log_dir / f"agent-{site}.log").open("wb"), stderr=subprocess.STDOUT,
            start_new_session=True))
    for site in sites:
        _kubectl(kc, "wait", "--for=condition=Ready", f"hospitalnode/{site}", "--timeout=120s")
    print(f"hub and {len(sites)} site agent(s) running; try:\n"
          f"  export KUBECONFIG={kc}\n"
          f"  kubectl get fedcare\n"
          f"  kubectl --kubeconfig {cluster.dir}/site-{sites[0]}.kubeconfig get hospitalnode {sites[0]}"
          f"   # the agent's own identity\n"
          f"logs: {log_dir}; Ctrl-C stops everything", flush=True)
    while True:
        time.sleep(1)
        if any(p.poll() is not None for p in procs):
            print(f"a fedcare process exited; see {log_dir}", flush=True)
            return 1
