"""One pod on the process kubelet: its containers as process groups, its status, its end.

:class:`PodWorker` is level-based: every change (a watch event, a process exit, a back-off
expiring) wakes its loop, which compares what should run with what runs, acts, and posts
the pod status when it changed. Phases follow the kubelet's ``getPhase``; exit codes are
the process's, or 128+N for a signal N; restarts back off exponentially (``backoff_base``
doubling to ``backoff_cap``: the sandbox default is 1 s → 30 s, a real kubelet's 10 s →
5 min) and reset after a container ran ``2 × backoff_cap``.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import os
import pathlib
import signal
import sys
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..integrations.kube import KubeError, NotFound, Ref
from . import kubelet_shim
from .kubelet_images import ImageNotFound, resolve_image, venv_environment
from .kubelet_probes import ProbeRunner
from .kubelet_spec import Volume, Waiting, container_env, mount_map, pod_volumes
from .kubelet_translate import Translator, expand, resolve_target, service_names

if TYPE_CHECKING:
    from .kubelet import ProcessKubelet

log = logging.getLogger(__name__)
SHIM = kubelet_shim.__file__
GPU = "nvidia.com/gpu"
TERMINAL = ("Succeeded", "Failed")


def now() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def gpu_request(pod: dict[str, Any]) -> int:
    total = 0
    for c in (pod.get("spec") or {}).get("containers") or []:
        res = c.get("resources") or {}
        total += int((res.get("limits") or {}).get(GPU) or (res.get("requests") or {}).get(GPU) or 0)
    return total


@dataclass
class Container:
    """One container's runtime record; ``state``/``last_state`` are Kubernetes ContainerState dicts."""

    spec: dict[str, Any]
    restart_count: int = 0
    state: dict[str, Any] = field(default_factory=lambda: {"waiting": {"reason": "ContainerCreating"}})
    last_state: dict[str, Any] = field(default_factory=dict)
    proc: asyncio.subprocess.Process | None = None
    exited: asyncio.Event = field(default_factory=asyncio.Event)
    started_mono: float = 0.0
    crashes: int = 0          # consecutive quick failures: the back-off exponent
    not_before: float = 0.0   # monotonic time of the next allowed start
    ran_once: bool = False
    final: bool = False       # terminated and will not restart
    ready: bool = False       # readiness (no readinessProbe: started and running)
    started: bool = False     # startupProbe passed (no startupProbe: running)
    probes: ProbeRunner | None = None
    init: bool = False        # an init container: runs to completion before the app containers

    @property
    def name(self) -> str:
        return self.spec["name"]

    @property
    def running(self) -> bool:
        return self.proc is not None and not self.exited.is_set()


class PodWorker:
    def __init__(self, kubelet: "ProcessKubelet", pod: dict[str, Any]):
        self.kubelet = kubelet
        self.pod = pod
        md = pod["metadata"]
        self.uid, self.namespace, self.name = md["uid"], md["namespace"], md["name"]
        self.dir = kubelet.dir / "pods" / f"{self.namespace}_{self.name}_{self.uid}"
        self.containers = {c["name"]: Container(c) for c in pod["spec"].get("containers") or []}
        self.inits = [Container(c, init=True) for c in pod["spec"].get("initContainers") or []]
        self.wake = asyncio.Event()
        self.gone = False             # the API object is deleted
        self.shutdown = False         # the kubelet stops
        self.ip = ""
        self.gpus: list[int] = []
        self.start_time = (pod.get("status") or {}).get("startTime") or now()
        self.phase = (pod.get("status") or {}).get("phase") or "Pending"
        self.admission_error: tuple[str, str] | None = None
        self.volumes: dict[str, Volume] | None = None
        self.last_status: dict[str, Any] | None = None
        self.task: asyncio.Task[None] | None = None
        self._adopt(pod.get("status") or {})

    # ---- inputs -------------------------------------------------------------------------
    def update(self, pod: dict[str, Any]) -> None:
        self.pod = pod
        self.wake.set()

    def deleted(self) -> None:
        self.gone = True
        self.wake.set()

    @property
    def terminal(self) -> bool:
        return self.phase in TERMINAL

    @property
    def deleting(self) -> bool:
        return self.gone or bool(self.pod["metadata"].get("deletionTimestamp"))

    def _adopt(self, status: dict[str, Any]) -> None:
        """A pod this node ran before a kubelet restart: its processes are gone (they died
        with the previous kubelet), so each container that ran is terminated, as a kubelet
        reports a container it cannot find (ContainerStatusUnknown, 137)."""
        inits = {c.name: c for c in self.inits}
        for cs in [*(status.get("initContainerStatuses") or []), *(status.get("containerStatuses") or [])]:
            c = self.containers.get(cs.get("name")) or inits.get(cs.get("name"))
            if c is None:
                continue
            c.restart_count = int(cs.get("restartCount") or 0)
            state = cs.get("state") or {}
            c.last_state = cs.get("lastState") or {}
            if "terminated" in state:
                c.state, c.ran_once = state, True
            elif "running" in state:
                c.ran_once = True
                c.state = {"terminated": {"exitCode": 137, "reason": "ContainerStatusUnknown", "finishedAt": now(),
                                          "message": "The container could not be located when the kubelet restarted",
                                          "startedAt": state["running"].get("startedAt")}}
            elif c.last_state.get("terminated"):   # it was backing off before a restart
                c.ran_once = True
                c.state = {"terminated": c.last_state["terminated"]}
            c.exited.set()
            if c.ran_once:
                self._after_exit(c, back_off=0.0)

    # ---- the loop -----------------------------------------------------------------------
    async def run(self) -> None:
        try:
            await self._setup()
            while True:
                self.wake.clear()
                if self.deleting or self.shutdown:
                    await self._terminate()
                    return
                try:
                    delay = await self._sync()
                    await self._post_status()
                except (KubeError, asyncio.TimeoutError) as err:
                    log.warning("Pod %s/%s: %s; retrying", self.namespace, self.name, err)
                    delay = 1.0
                except Exception:   # a bug must not leave a pod unattended: log it, retry
                    log.exception("Pod %s/%s: unexpected error; retrying", self.namespace, self.name)
                    delay = 5.0
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay):   # (not wait_for: it can swallow a stop on 3.11)
                        await self.wake.wait()
        except asyncio.CancelledError:
            await self._kill_all(0)
            raise
        finally:
            self.kubelet.forget(self)

    async def _setup(self) -> None:
        status = self.pod.get("status") or {}
        host_net = bool(self.pod["spec"].get("hostNetwork"))
        if host_net:
            self.ip = "127.0.0.1"
        elif status.get("podIP") and self.kubelet.network.owns(status["podIP"]):
            self.ip = status["podIP"]
            self.kubelet.network.claim(self.ip)
        else:
            self.ip = self.kubelet.network.allocate()
        if self.terminal:
            return
        need = gpu_request(self.pod)
        if need:
            got = self.kubelet.gpus.allocate(self.uid, need)
            if got is None:
                self.admission_error = ("UnexpectedAdmissionError", (
                    f"Allocate failed due to requested number of devices unavailable for {GPU}. "
                    f"Requested: {need}, Available: {self.kubelet.gpus.free}"))
                self.phase = "Failed"
                log.warning("Pod %s/%s rejected: %s", self.namespace, self.name, self.admission_error[1])
            else:
                self.gpus = got
        (self.dir / "logs").mkdir(parents=True, exist_ok=True)
        for key in ("securityContext",):
            if self.pod["spec"].get(key) or any(c.get(key) for c in self.containers_spec()):
                log.info("Pod %s/%s: %s ignored (the sandbox runs processes as the kubelet's user)",
                         self.namespace, self.name, key)

    def containers_spec(self) -> list[dict[str, Any]]:
        return [c.spec for c in self.containers.values()]

    async def _sync(self) -> float:
        """Start or restart what should run; return how long to sleep at most."""
        if self.terminal:
            return 3600.0
        delay = 3600.0
        t = time.monotonic()
        if not self._initialized():
            delay = await self._sync_init(t)
            self.phase = self._phase()
            if self.terminal:
                self.kubelet.gpus.release(self.uid)
                log.info("Pod %s/%s %s (an init container failed)", self.namespace, self.name, self.phase)
            return delay
        for c in self.containers.values():
            if c.running or c.final:
                continue
            if t < c.not_before:
                delay = min(delay, c.not_before - t)
                continue
            retry = await self._start(c)
            if retry:
                delay = min(delay, retry)
        self.phase = self._phase()
        if self.terminal:
            self.kubelet.gpus.release(self.uid)
            log.info("Pod %s/%s %s", self.namespace, self.name, self.phase)
        return delay

    def _initialized(self) -> bool:
        return all(c.final and (c.state.get("terminated") or {}).get("exitCode") == 0 for c in self.inits)

    async def _sync_init(self, t: float) -> float:
        """Init containers run one at a time, in order; the app containers wait (PodInitializing)."""
        for c in self.containers.values():
            if not c.ran_once:
                c.state = {"waiting": {"reason": "PodInitializing"}}
        for c in self.inits:
            if c.final and (c.state.get("terminated") or {}).get("exitCode") == 0:
                continue
            if c.spec.get("restartPolicy") == "Always":
                c.state = {"waiting": {"reason": "CreateContainerConfigError", "message": (
                    "sidecar init containers (restartPolicy: Always) are not supported by the sandbox kubelet")}}
                return 3600.0
            if c.running or c.final:
                return 3600.0
            if t < c.not_before:
                return c.not_before - t
            return await self._start(c) or 3600.0
        return 0.0

    def _should_restart(self, c: Container) -> bool:
        policy = self.pod["spec"].get("restartPolicy", "Always")
        code = ((c.state.get("terminated") or {}).get("exitCode"))
        if c.init:   # an init container is retried until it succeeds, unless the policy is Never
            return policy != "Never" and code != 0
        return policy == "Always" or (policy == "OnFailure" and code != 0)

    # ---- one container ------------------------------------------------------------------
    async def _start(self, c: Container) -> float | None:
        """Start ``c``; on a Waiting condition record it and return when to retry (None: never)."""
        try:
            argv, env, cwd = await self._prepare(c)
        except Waiting as w:
            if c.state.get("waiting") != {"reason": w.reason, "message": w.message}:
                self.kubelet.events.pod(self.pod, "Failed" if w.reason != "ContainerCreating" else "FailedMount"
                                        if "MountVolume" in w.message else "Waiting",
                                        f"container {c.name}: {w.reason}: {w.message}",
                                        warning=w.reason != "ContainerCreating")
            c.state = {"waiting": {"reason": w.reason, "message": w.message}}
            return 1.0 if w.retry else None
        if c.ran_once:
            c.restart_count += 1
        log_path = self.dir / "logs" / c.name / f"{c.restart_count}.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        grace = self.grace()
        with open(log_path, "ab") as out:
            try:
                c.proc = await asyncio.create_subprocess_exec(
                    sys.executable, "-I", "-S", SHIM, str(os.getpid()), str(grace), "--", *argv,
                    stdin=asyncio.subprocess.DEVNULL, stdout=out, stderr=asyncio.subprocess.STDOUT,
                    cwd=cwd, env=env, start_new_session=True)
            except OSError as exc:
                c.state = {"waiting": {"reason": "RunContainerError", "message": f"cannot start the shim: {exc}"}}
                return 5.0
        c.exited = asyncio.Event()
        c.ran_once = True
        c.started_mono = time.monotonic()
        c.state = {"running": {"startedAt": now()}}
        c.ready = c.started = False
        c.probes = self._probes(c, env, cwd)
        c.probes.start()
        self.kubelet.processes.add(c.proc.pid)
        log.info("Pod %s/%s container %s started (pid %d, restart %d): %s", self.namespace, self.name, c.name,
                 c.proc.pid, c.restart_count, argv[0])
        self.kubelet.events.pod(self.pod, "Started", f"Started container {c.name}")
        asyncio.get_running_loop().create_task(self._reap(c, c.proc))
        return None

    def _probes(self, c: Container, env: dict[str, str], cwd: str) -> ProbeRunner:
        def on_ready(value: bool) -> None:
            if c.ready != value:
                c.ready = value
                self.wake.set()

        def on_started() -> None:
            c.started = True
            if "readinessProbe" not in c.spec:
                c.ready = True
            self.wake.set()

        async def on_failure(kind: str, why: str) -> None:
            proc = c.proc
            if proc is None or c.exited.is_set():
                return
            log.info("Pod %s/%s container %s: %s probe failed (%s); restarting it", self.namespace, self.name,
                     c.name, kind, why[:200])
            self.kubelet.events.pod(self.pod, "Unhealthy", f"{kind} probe failed: {why[:300]}", warning=True)
            self.kubelet.events.pod(self.pod, "Killing", f"Container {c.name} failed {kind.lower()} probe, "
                                    "will be restarted")
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGTERM)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(c.exited.wait(), timeout=self.grace())
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)

        return ProbeRunner(c.spec, self.ip, env, cwd, on_ready=on_ready, on_started=on_started,
                           on_failure=on_failure)

    async def _prepare(self, c: Container) -> tuple[list[str], dict[str, str], str]:
        spec = c.spec
        try:
            image = resolve_image(spec.get("image", ""))
        except ImageNotFound as exc:
            raise Waiting("ErrImagePull", str(exc), retry=False) from None
        if self.volumes is None:
            self.volumes = await pod_volumes(self.kubelet.kube, self._with_status(), self.dir, self.kubelet.dir)
        mounts = mount_map(spec, self.volumes)
        for m in spec.get("volumeMounts") or []:
            vol = self.volumes[m["name"]]
            if m.get("readOnly") and not vol.always_read_only:
                log.info("Pod %s/%s: readOnly mount %s of volume %s is not enforced (no mount namespaces)",
                         self.namespace, self.name, m["mountPath"], m["name"])
        pod_env = await container_env(self.kubelet.kube, self._with_status(), spec)
        # Kubernetes: command replaces ENTRYPOINT (and drops CMD); args replace CMD.
        command = list(spec.get("command") or image.entrypoint)
        if spec.get("args") is not None:
            args = list(spec["args"])
        else:
            args = [] if spec.get("command") else list(image.cmd)
        command = [expand(x, pod_env) for x in command]
        args = [expand(x, pod_env) for x in args]
        argv = command + args
        if not argv:
            raise Waiting("CreateContainerError", f'container "{c.name}": no command, and the image '
                          f'"{spec.get("image")}" has no default command in the sandbox image table: set command',
                          retry=False)
        strings = [*argv, *pod_env.values(), spec.get("workingDir") or ""]
        services = {}
        for ns, svc in sorted(service_names(strings)):
            target = await self._service(ns, svc)
            if target is None:
                raise Waiting("ContainerCreating", f'waiting for Service {ns}/{svc} to select a Ready pod '
                              "(the sandbox kubelet translates its DNS name to that pod's IP)")
            services[(ns, svc)] = target
        tr = Translator(self.ip, services, mounts)
        home = self.dir / "home"
        home.mkdir(exist_ok=True)
        env = {"HOME": str(home), "HOSTNAME": self.name, **image.env, **venv_environment()}
        if self.gpus:
            env["NVIDIA_VISIBLE_DEVICES"] = ",".join(map(str, self.gpus))
        env.update({k: tr(v) for k, v in pod_env.items()})
        cwd = self._working_dir(spec.get("workingDir") or "", tr, home)
        return [tr(x) for x in argv], env, cwd

    def _working_dir(self, wanted: str, tr: Translator, home: pathlib.Path) -> str:
        """Inside a volume: that folder (created, as a runtime creates a missing workingDir);
        an existing host folder: itself; anything else: a folder of the pod's own
        (``rootfs/<path>``), since the host's filesystem is not the container's."""
        if not wanted:
            return str(home)
        local = tr(wanted)
        if local != wanted or not pathlib.Path(local).is_dir():
            path = pathlib.Path(local) if local != wanted else self.dir / "rootfs" / wanted.lstrip("/")
            path.mkdir(parents=True, exist_ok=True)
            return str(path)
        return local

    def _with_status(self) -> dict[str, Any]:
        pod = dict(self.pod)
        pod["status"] = {**(pod.get("status") or {}), "podIP": self.ip, "podIPs": [{"ip": self.ip}],
                         "hostIP": "127.0.0.1", "hostIPs": [{"ip": "127.0.0.1"}]}
        return pod

    async def _service(self, ns: str, name: str):
        kube = self.kubelet.kube
        svc = await kube.get_or_none(Ref("v1", "services", ns, name))
        selector = ((svc or {}).get("spec") or {}).get("selector") or {}
        if svc is None or not selector:
            return None
        query = {"labelSelector": ",".join(f"{k}={v}" for k, v in sorted(selector.items()))}
        pods = (await kube.request("GET", Ref("v1", "pods", ns).path, query=query)).get("items") or []
        return resolve_target(svc, pods)

    async def _reap(self, c: Container, proc: asyncio.subprocess.Process) -> None:
        code = await proc.wait()
        if c.probes is not None:
            c.probes.stop()
        c.ready = c.started = False
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)   # anything the container left behind
        self.kubelet.processes.discard(proc.pid)
        exit_code = code if code >= 0 else 128 - code
        started = (c.state.get("running") or {}).get("startedAt", now())
        c.state = {"terminated": {"exitCode": exit_code, "reason": "Completed" if exit_code == 0 else "Error",
                                  "startedAt": started, "finishedAt": now(),
                                  "containerID": f"process://{proc.pid}"}}
        ran = time.monotonic() - c.started_mono
        c.crashes = 0 if ran > 2 * self.kubelet.backoff_cap else c.crashes + 1
        back_off = min(self.kubelet.backoff_cap, self.kubelet.backoff_base * 2 ** max(0, c.crashes - 1))
        self._after_exit(c, back_off)
        log.info("Pod %s/%s container %s exited with %d", self.namespace, self.name, c.name, exit_code)
        c.exited.set()
        self.wake.set()

    def _after_exit(self, c: Container, back_off: float) -> None:
        """``c.state`` is terminated: restart it after ``back_off`` (CrashLoopBackOff) or keep it final."""
        if self._should_restart(c) and not (self.deleting or self.shutdown):
            if back_off > 0:
                self.kubelet.events.pod(self.pod, "BackOff", f"Back-off {back_off:g}s restarting failed container "
                                        f"{c.name} (exit code {c.state['terminated']['exitCode']})", warning=True)
            c.not_before = time.monotonic() + back_off
            c.last_state = {"terminated": c.state["terminated"]}
            c.state = {"waiting": {"reason": "CrashLoopBackOff", "message": (
                f"back-off {back_off:g}s restarting failed container={c.name} "
                f"pod={self.name}_{self.namespace}({self.uid})")}}
        else:
            c.final = True

    # ---- the end ------------------------------------------------------------------------
    def grace(self) -> int:
        md = self.pod["metadata"]
        if md.get("deletionGracePeriodSeconds") is not None:
            return int(md["deletionGracePeriodSeconds"])
        return int(self.pod["spec"].get("terminationGracePeriodSeconds", 30))

    async def _kill_all(self, grace: float) -> None:
        """SIGTERM every container's process group, SIGKILL what is left after ``grace`` s."""
        running = [c for c in [*self.inits, *self.containers.values()] if c.running]
        for c in running:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(c.proc.pid, signal.SIGTERM)
        if running:
            log.info("Pod %s/%s: stopping %d container(s), grace %gs", self.namespace, self.name, len(running), grace)
            for c in running:
                self.kubelet.events.pod(self.pod, "Killing", f"Stopping container {c.name}")
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.gather(*(c.exited.wait() for c in running)), timeout=grace)
        for c in running:
            if c.running:
                log.info("Pod %s/%s container %s ignored SIGTERM for %gs: SIGKILL", self.namespace, self.name,
                         c.name, grace)
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(c.proc.pid, signal.SIGKILL)
        for c in running:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(c.exited.wait(), timeout=5)

    async def _terminate(self) -> None:
        grace = self.grace() if not self.shutdown else min(self.grace(), self.kubelet.shutdown_grace)
        await self._kill_all(grace)
        for c in [*self.inits, *self.containers.values()]:
            c.final = True
        self.kubelet.gpus.release(self.uid)
        if self.shutdown and not self.deleting:
            with contextlib.suppress(KubeError, asyncio.TimeoutError):
                await asyncio.wait_for(self._post_status(), timeout=3)
            return
        if not self.gone:   # a graceful deletion: the kubelet removes the object for good
            with contextlib.suppress(KubeError):
                await self._post_status()
            try:
                await self.kubelet.kube.request("DELETE", Ref("v1", "pods", self.namespace, self.name).path,
                                                body={"gracePeriodSeconds": 0, "preconditions": {"uid": self.uid}})
                log.info("Pod %s/%s deleted", self.namespace, self.name)
            except NotFound:
                pass
            except KubeError as err:
                log.warning("Pod %s/%s: final deletion failed (%s)", self.namespace, self.name, err)
        self.kubelet.network.release(self.ip)

    # ---- status -------------------------------------------------------------------------
    def _phase(self) -> str:
        """The kubelet's getPhase: Pending while a container never started, Running while one
        runs or restarts, then Succeeded/Failed by the restart policy and the exit codes."""
        if self.admission_error:
            return "Failed"
        if not self._initialized():
            failed = any(c.final and (c.state.get("terminated") or {}).get("exitCode") != 0 for c in self.inits)
            return "Failed" if failed else "Pending"
        waiting = running = stopped = succeeded = 0
        for c in self.containers.values():
            if "running" in c.state:
                running += 1
            elif "terminated" in c.state:
                stopped += 1
                succeeded += c.state["terminated"]["exitCode"] == 0
            elif c.ran_once:   # backing off before a restart
                stopped += 1
            else:
                waiting += 1
        if waiting or not self.containers:
            return "Pending"
        if running:
            return "Running"
        policy = self.pod["spec"].get("restartPolicy", "Always")
        if policy == "Always" or (policy == "OnFailure" and stopped != succeeded):
            return "Running"
        return "Succeeded" if stopped == succeeded else "Failed"

    @staticmethod
    def _container_status(c: Container) -> dict[str, Any]:
        state = c.state
        return {"name": c.name, "image": c.spec.get("image", ""), "imageID": "",
                "containerID": f"process://{c.proc.pid}" if c.proc else "",
                "ready": "running" in state and c.ready, "started": "running" in state and c.started,
                "restartCount": c.restart_count, "state": state, "lastState": c.last_state}

    def status(self) -> dict[str, Any]:
        statuses = [self._container_status(c) for c in self.containers.values()]
        initialized = self._initialized()
        pending_inits = [c.name for c in self.inits if not (c.final and "terminated" in c.state
                                                             and c.state["terminated"]["exitCode"] == 0)]
        ready = bool(statuses) and all(s["ready"] for s in statuses) and not self.terminal
        unready = [s["name"] for s in statuses if not s["ready"]]
        old = {c["type"]: c for c in (self.pod.get("status") or {}).get("conditions") or []}

        def cond(ctype: str, ok: bool, reason: str = "", message: str = "") -> dict[str, Any]:
            prev = old.get(ctype) or {}
            value = "True" if ok else "False"
            out = {"type": ctype, "status": value, "lastProbeTime": None,
                   "lastTransitionTime": prev.get("lastTransitionTime") if prev.get("status") == value else now()}
            if reason:
                out.update(reason=reason, message=message)
            return out

        not_ready = ("PodCompleted", "") if self.terminal else ("ContainersNotReady",
                                                                 f"containers with unready status: [{' '.join(unready)}]")
        init_cond = (cond("Initialized", True) if initialized else cond(
            "Initialized", False, "ContainersNotInitialized",
            f"containers with incomplete status: [{' '.join(pending_inits)}]"))
        mine = [cond("PodReadyToStartContainers", True), init_cond,
                cond("Ready", ready, *(("", "") if ready else not_ready)),
                cond("ContainersReady", ready, *(("", "") if ready else not_ready))]
        if "PodScheduled" not in old:
            mine.append(cond("PodScheduled", True))
        owned = {c["type"] for c in mine}
        conditions = mine + [c for t, c in old.items() if t not in owned]
        status: dict[str, Any] = {"phase": self.phase, "hostIP": "127.0.0.1", "hostIPs": [{"ip": "127.0.0.1"}],
                                  "podIP": self.ip, "podIPs": [{"ip": self.ip}], "startTime": self.start_time,
                                  "conditions": conditions, "containerStatuses": statuses,
                                  "qosClass": (self.pod.get("status") or {}).get("qosClass") or "BestEffort"}
        if self.inits:
            status["initContainerStatuses"] = [self._container_status(c) for c in self.inits]
        if self.admission_error:
            status["reason"], status["message"] = self.admission_error
        return status

    async def _post_status(self) -> None:
        status = self.status()
        comparable = status
        if comparable == self.last_status:
            return
        try:
            pod = await self.kubelet.kube.patch(Ref("v1", "pods", self.namespace, self.name),
                                                {"status": status}, status=True)
            self.last_status = comparable
            if pod.get("metadata", {}).get("uid") == self.uid:
                self.pod = {**self.pod, "status": pod.get("status")}
        except NotFound:
            self.deleted()
        except KubeError as err:
            log.warning("Pod %s/%s: status update failed (%s); will retry", self.namespace, self.name, err)
            self.wake.set()
            await asyncio.sleep(1)
