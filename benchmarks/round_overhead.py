"""What running a federated round through fedcare costs over running Flower by hand.

In one run, on the same synthetic data, the same Flower app (workloads/), the same sites and
the same run configuration (built by the hub's own ``Reconciler.run_config``):

(a) bare Flower: ``flower-superlink`` and one ``flower-supernode`` per site as local
    processes, ``flwr run``, finished when the ServerApp's provenance says so and ``flwr ls``
    confirms it (the hub's own end test), then the processes stopped;
(b) fedcare: a FederatedRound applied to the sandbox (emulated API, the real hub and site
    agents, a process kubelet per hospital running the SuperLink and SuperNode pods), from
    ``create`` to ``phase: Succeeded`` and to every pod gone.

Both run plaintext (``--insecure``; the sandbox's development mode). Target: (b)/(a) ≤ 1.15.
The fedcare timeline comes from watches on the round and the pods (first time each state is
seen) and from the ServerApp's provenance.json (polled every 0.1 s in both runs): scheduling,
SuperLink pod start, health wait, SuperNode pods, run submit, training, end detection, teardown.

    python benchmarks/round_overhead.py [--sites 3] [--rounds 3] [--epochs 3] [--images 120] [--repeat 1]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import logging
import os
import pathlib
import signal
import subprocess
import sys
import tempfile
import time
from typing import Any

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "operator"), str(ROOT / "workloads")]

from fedcare.api.resources import API_VERSION  # noqa: E402
from fedcare.api.validation import parse  # noqa: E402
from fedcare.hub.flower_runs import FlowerCLI  # noqa: E402
from fedcare.hub.round_scheduler import Reconciler, RoundConfig  # noqa: E402
from fedcare.hub.round_settings import default_app  # noqa: E402
from fedcare.integrations.kube import KubeError, Ref  # noqa: E402
from fedcare.sandbox.demo import EPOCHS as DEMO_EPOCHS  # noqa: E402
from fedcare.sandbox.emulator import fedcare_emulator  # noqa: E402
from fedcare.sandbox.federation import WORK_NAMESPACE, federation, round_manifest, synth  # noqa: E402
from fedcare.sandbox.kubelet_images import venv_bin, venv_environment  # noqa: E402
from fedcare.sandbox.openbao import free_port  # noqa: E402

NAMES = ["rouen", "lyon", "lille", "nantes", "brest", "caen", "reims", "dijon"]
SAMPLE = 0.1        # seconds between looks at provenance.json (both runs alike)


def provenance_state(folder: pathlib.Path) -> str:
    try:
        return str(json.loads((folder / "provenance.json").read_text()).get("status") or "")
    except (OSError, ValueError):
        return ""


def run_config(sites: int, rounds: int, epochs: int, holdout: pathlib.Path, out: pathlib.Path) -> dict[str, Any]:
    """The run configuration the hub submits for the fedcare round of this benchmark."""
    body = round_manifest("bench", sites=sites, rounds=rounds, epochs=epochs, holdout=str(holdout))
    body["metadata"]["uid"] = "00000000-bench"
    deadline = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=body["spec"]["activeDeadlineSeconds"])
    body["status"] = {"deadline": deadline.isoformat().replace("+00:00", "Z"), "attempt": 1}
    cfg = RoundConfig(flower=FlowerCLI(out / "unused"), app=default_app())
    return Reconciler(None, cfg).run_config(body, parse("FederatedRound", body), str(out))  # type: ignore[arg-type]


# -- (a) bare Flower -----------------------------------------------------------------------------
async def bare(work: pathlib.Path, data: pathlib.Path, sites: list[str], rounds: int,
               epochs: int) -> dict[str, float]:
    work.mkdir(parents=True)
    out = work / "out"
    out.mkdir()
    env = {**os.environ, **venv_environment(), "PYTHONUNBUFFERED": "1", "PYTHONDONTWRITEBYTECODE": "1"}
    home = work / "flwr-home"
    home.mkdir()
    port = free_port()
    procs: list[subprocess.Popen] = []

    def spawn(name: str, args: list[str], extra: dict[str, str]) -> None:
        with (work / f"{name}.log").open("wb") as fh:
            procs.append(subprocess.Popen(args, cwd=work, env={**env, **extra}, stdout=fh, stderr=subprocess.STDOUT,
                                          start_new_session=True))

    (home / "config.toml").write_text(f'[superlink]\ndefault = "round"\n\n[superlink.round]\n'
                                      f'address = "127.0.0.1:{port}"\ninsecure = true\n')
    cli = FlowerCLI(work / "cli-home", timeout=120.0)
    marks: dict[str, float] = {}
    t0 = time.monotonic()
    try:
        spawn("superlink", [str(venv_bin() / "flower-superlink"), "--host", "127.0.0.1", "--port", str(port),
                            "--database", str(work / "state.db"), "--disable-runtime-dependency-installation",
                            "--insecure"], {"FLWR_HOME": str(work / "link-home")})
        import aiohttp
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=3)) as session:
            while True:
                with contextlib.suppress(aiohttp.ClientError, asyncio.TimeoutError, OSError):
                    async with session.get(f"http://127.0.0.1:{port}/health") as resp:
                        if resp.status == 200:
                            break
                if procs[0].poll() is not None:
                    raise RuntimeError(f"flower-superlink exited: {(work / 'superlink.log').read_text()[-2000:]}")
                await asyncio.sleep(0.3)       # as the sandbox's probe loop and flower_tls.py
        marks["superlink_healthy"] = time.monotonic() - t0
        for i, site in enumerate(sites):
            folder = data / f"site-{chr(97 + i)}"
            spawn(site, [str(venv_bin() / "flower-supernode"), "--superlink", f"127.0.0.1:{port}", "--insecure",
                         "--port", str(free_port()), "--node-config",
                         f'site="{site}" data-path="{folder}" data-root="{folder}"'],
                  {"FLWR_HOME": str(work / f"home-{site}")})
        marks["supernodes_started"] = time.monotonic() - t0
        config = run_config(len(sites), rounds, epochs, data / "holdout", out)
        run_id = await cli.submit("bare", f"127.0.0.1:{port}", default_app(), config, insecure=True)
        marks["run_submitted"] = time.monotonic() - t0
        while provenance_state(out) == "":
            await asyncio.sleep(SAMPLE)
        marks["serverapp_started"] = time.monotonic() - t0
        marks["cpu_serverapp_started"] = time.process_time()
        while provenance_state(out) not in ("completed", "failed"):
            if time.monotonic() - t0 > 1800:
                raise TimeoutError("bare run not finished within 1800 s")
            await asyncio.sleep(SAMPLE)
        marks["serverapp_finished"] = time.monotonic() - t0
        marks["cpu_serverapp_finished"] = time.process_time()
        info = await cli.run("bare", f"127.0.0.1:{port}", run_id, insecure=True)
        while not info.finished:
            await asyncio.sleep(1.0)
            info = await cli.run("bare", f"127.0.0.1:{port}", run_id, insecure=True)
        if info.status != "finished:completed":
            raise RuntimeError(f"bare run {info.status}: {info.details}")
        marks["done"] = time.monotonic() - t0
    finally:
        for p in reversed(procs):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGTERM)
        for p in procs:
            try:
                await asyncio.to_thread(p.wait, 15)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGKILL)
                await asyncio.to_thread(p.wait, 5)
        cli.forget("bare")
    marks["torn_down"] = time.monotonic() - t0
    return marks


# -- (b) the same through fedcare ----------------------------------------------------------------
class Timeline:
    """First time (s after t0) each state is seen on the watches and in provenance.json."""

    def __init__(self, t0: float, sites: int):
        self.t0, self.sites, self.marks = t0, sites, {}
        self.pods: dict[str, dict[str, Any]] = {}
        self.seen_pods: set[str] = set()

    def mark(self, key: str) -> None:
        if key not in self.marks and key in ("serverapp_started", "serverapp_finished"):
            self.marks[f"cpu_{key}"] = time.process_time()    # this process: emulator, hub, agents, kubelets
        self.marks.setdefault(key, time.monotonic() - self.t0)

    def pod(self, kind: str, obj: dict[str, Any]) -> None:
        md = obj["metadata"]
        key = f"{md['namespace']}/{md['name']}"
        if kind == "DELETED":
            self.pods.pop(key, None)
        else:
            self.pods[key] = obj
            self.seen_pods.add(key)
        links = [p for k, p in self.pods.items() if not k.startswith(WORK_NAMESPACE + "/")]
        nodes = [p for k, p in self.pods.items() if k.startswith(WORK_NAMESPACE + "/")]
        if links:
            self.mark("superlink_pod_created")
            if any((p.get("status") or {}).get("phase") == "Running" for p in links):
                self.mark("superlink_pod_running")
        if len(nodes) >= self.sites:
            self.mark("supernode_pods_created")
            if all((p.get("status") or {}).get("phase") == "Running" for p in nodes):
                self.mark("supernode_pods_running")
        if "succeeded" in self.marks and not self.pods:
            self.mark("torn_down")

    def round(self, obj: dict[str, Any]) -> None:
        st = obj.get("status") or {}
        if any(c["type"] == "AggregatorReady" and c["status"] == "True" for c in st.get("conditions") or []):
            self.mark("aggregator_ready")
        if st.get("runId"):
            self.mark("run_submitted")
        if st.get("phase") == "Succeeded":
            self.mark("succeeded")
            if not self.pods and self.seen_pods:
                self.mark("torn_down")
        elif st.get("phase") == "Failed":
            raise RuntimeError(f"the round failed: {st.get('conditions')}")


async def _watch(api: Any, ref: Ref, handle: Any, stop: asyncio.Event) -> None:
    version = ""
    while not stop.is_set():
        try:
            if not version:
                listing = await api.request("GET", ref.path)
                version = listing["metadata"].get("resourceVersion", "")
                for item in listing.get("items") or []:
                    handle("ADDED", item)
            async for kind, obj in api.watch(ref, resource_version=version, timeout_seconds=60):
                if kind == "BOOKMARK":
                    version = obj["metadata"].get("resourceVersion", version)
                    continue
                if kind == "ERROR":
                    version = ""
                    break
                version = obj["metadata"].get("resourceVersion", version)
                handle(kind, obj)
        except KubeError:
            version = ""
            await asyncio.sleep(0.2)


async def through_fedcare(fed: Any, sites: int, rounds: int, epochs: int, name: str) -> dict[str, float]:
    api = fed.api
    body = round_manifest(name, sites=sites, rounds=rounds, epochs=epochs, holdout=str(fed.data / "holdout"))
    stop = asyncio.Event()
    t0 = time.monotonic()
    tl = Timeline(t0, sites)
    watches = [asyncio.create_task(_watch(api, Ref("v1", "pods"), tl.pod, stop)),
               asyncio.create_task(_watch(api, Ref(API_VERSION, "federatedrounds", "default"),
                                          lambda _k, o: tl.round(o) if o["metadata"]["name"] == name else None,
                                          stop))]
    try:
        await api.create(Ref(API_VERSION, "federatedrounds", "default"), body)
        folder: pathlib.Path | None = None
        while "torn_down" not in tl.marks:
            for task in watches:
                if task.done() and task.exception():
                    raise task.exception()  # type: ignore[misc]
            if folder is None:
                found = sorted((fed.artifact_dir / "default").glob(f"{name}-*/attempt-*"))
                folder = found[-1] if found else None
            if folder is not None:
                state = provenance_state(folder)
                if state:
                    tl.mark("serverapp_started")
                if state in ("completed", "failed"):
                    tl.mark("serverapp_finished")
            if time.monotonic() - t0 > 1800:
                raise TimeoutError(f"round not finished within 1800 s: {tl.marks}")
            await asyncio.sleep(SAMPLE)
    finally:
        stop.set()
        for task in watches:
            task.cancel()
        await asyncio.gather(*watches, return_exceptions=True)
    return tl.marks


async def measure(sites: list[str], rounds: int, epochs: int, images: int, repeat: int,
                  poll: float, inventory_poll: float = 15.0) -> list[dict[str, Any]]:
    results = []
    with tempfile.TemporaryDirectory(prefix="round-overhead-") as tmp:
        work = pathlib.Path(tmp)
        await asyncio.to_thread(synth, work / "data", len(sites), images)
        for i in range(repeat):
            a = await bare(work / f"bare-{i}", work / "data", sites, rounds, epochs)
            print(f"bare Flower, try {i + 1}: {a['done']:.1f} s to the result, {a['torn_down']:.1f} s torn down "
                  f"(load average {os.getloadavg()[0]:.1f})", flush=True)
            async with fedcare_emulator(max_history=5000) as k:
                async with federation(str(k.url), work, sites, images=images, poll=poll,
                                      inventory_poll=inventory_poll) as fed:
                    b = await through_fedcare(fed, len(sites), rounds, epochs, f"bench-{i}")
            print(f"fedcare, try {i + 1}: {b['succeeded']:.1f} s to Succeeded, {b['torn_down']:.1f} s torn down "
                  f"(load average {os.getloadavg()[0]:.1f})", flush=True)
            results.append({"bare": a, "fedcare": b})
    return results


def report(results: list[dict[str, Any]], poll: float) -> None:
    for i, r in enumerate(results):
        a, b = r["bare"], r["fedcare"]
        print(f"\n### try {i + 1}")
        print(f"{'':44} {'bare':>8} {'fedcare':>8}")
        rows = [
            ("start -> SuperLink answers /health", a["superlink_healthy"], b.get("aggregator_ready")),
            ("start -> run submitted", a["run_submitted"], b.get("run_submitted")),
            ("start -> ServerApp started (provenance)", a["serverapp_started"], b.get("serverapp_started")),
            ("ServerApp started -> finished (training)", a["serverapp_finished"] - a["serverapp_started"],
             b["serverapp_finished"] - b["serverapp_started"]),
            ("ServerApp finished -> result known", a["done"] - a["serverapp_finished"],
             b["succeeded"] - b["serverapp_finished"]),
            ("result known -> all processes/pods gone", a["torn_down"] - a["done"], b["torn_down"] - b["succeeded"]),
            ("TOTAL to the result", a["done"], b["succeeded"]),
            ("TOTAL incl. teardown", a["torn_down"], b["torn_down"]),
        ]
        for label, x, y in rows:
            print(f"{label:44} {x:8.2f} {y if y is None else f'{y:8.2f}'}")
        print("fedcare timeline (s after create): " + ", ".join(
            f"{k}={v:.2f}" for k, v in sorted(b.items(), key=lambda kv: kv[1]) if not k.startswith("cpu_")))
        for who, m in (("bare", a), ("fedcare", b)):
            cpu = m["cpu_serverapp_finished"] - m["cpu_serverapp_started"]
            wall = m["serverapp_finished"] - m["serverapp_started"]
            print(f"  CPU of this benchmark process while the ServerApp ran ({who}: "
                  f"{'a file poll' if who == 'bare' else 'emulator, hub, agents, kubelets'}): "
                  f"{cpu:.1f} s in {wall:.1f} s ({100 * cpu / wall:.0f}% of one core of 2)")
        sl = b.get("superlink_pod_created", 0)
        parts = {
            "scheduling (create -> SuperLink pod)": sl,
            "SuperLink pod start (pod -> Running)": b.get("superlink_pod_running", sl) - sl,
            "health wait (Running -> AggregatorReady)": b["aggregator_ready"] - b.get("superlink_pod_running", sl),
            "run submit (AggregatorReady -> runId)": b["run_submitted"] - b["aggregator_ready"],
            "SuperNode pods (AggregatorReady -> all created)": b["supernode_pods_created"] - b["aggregator_ready"],
            "... -> all Running": b.get("supernode_pods_running", b["supernode_pods_created"])
            - b["supernode_pods_created"],
            f"end detection (provenance -> Succeeded, poll {poll:g} s)": b["succeeded"] - b["serverapp_finished"],
            "pod teardown (Succeeded -> no pods)": b["torn_down"] - b["succeeded"],
        }
        for label, value in parts.items():
            print(f"  {label:54} {value:6.2f} s")
        print(f"ratio fedcare / bare, to the result: {b['succeeded'] / a['done']:.3f}x; incl. teardown: "
              f"{b['torn_down'] / a['torn_down']:.3f}x (target <= 1.15x)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sites", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=DEMO_EPOCHS, help="local epochs per server round")
    parser.add_argument("--images", type=int, default=120, help="synthetic training images per site")
    parser.add_argument("--repeat", type=int, default=1, help="bare/fedcare pairs, alternating")
    parser.add_argument("--poll", type=float, default=1.0, help="the sandbox's hub/agent poll interval (s), as "
                                                               "`fedcare sandbox demo` uses")
    parser.add_argument("--inventory-poll", type=float, default=15.0,
                        help="the agents' inventory poll (s): an agent's default; the sandbox's tests use 1 s")
    parser.add_argument("--quick", action="store_true", help="2 sites, 1 round, 40 images (make bench)")
    args = parser.parse_args()
    if args.quick:
        args.sites, args.rounds, args.images = 2, 1, 40
    logging.basicConfig(level=logging.ERROR)
    results = asyncio.run(measure(NAMES[:args.sites], args.rounds, args.epochs, args.images, args.repeat,
                                  args.poll, args.inventory_poll))
    report(results, args.poll)
    return 0


if __name__ == "__main__":
    sys.exit(main())
