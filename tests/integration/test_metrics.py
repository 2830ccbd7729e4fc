"""Metrics against a real Prometheus: the hub and two site agents on the emulated API, scraped by
the Debian ``prometheus`` binary, and every PromQL expression of the Grafana dashboard
evaluated with the expected shape. Also: a scrape during an API outage, an odd site name,
and ``promtool check metrics`` (Prometheus's own linter) on what both roles serve.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import pathlib
import re
import subprocess

import aiohttp
import kmock
import pytest
import yaml

from fedcare import metrics
from fedcare.api.hospital_node import AgentVersions
from fedcare.api.resources import API_VERSION, site_namespace
from fedcare.hub.metrics_state import HubStateCollector
from fedcare.integrations.kube import Kube, Ref
from fedcare.integrations.nvml import NVMLReader
from fedcare.site.agent import SiteAgent
from fedcare.site.heartbeat import Heartbeat
from fedcare.site.reporter import InventoryReporter
from tests.integration.conftest import FAST
from tests.support.fake_nvml import FakeNVML, gpus
from tests.support.harness import eventually, run_operator
from tests.support.prometheus import binary, prometheus

ROOT = pathlib.Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "charts" / "fedcare" / "dashboards" / "fedcare.json"
NODES = Ref(API_VERSION, "hospitalnodes")
ODD_SITE = 'st-"jude"\\ward\n\x01ünï'


def node_body(name: str) -> dict:
    body = yaml.safe_load((ROOT / "examples" / "hospitalnode-rouen.yaml").read_text())
    body["metadata"]["name"] = name
    body["spec"].update(leaseDurationSeconds=10)
    body["spec"]["gpu"]["count"] = 2
    return body


def example(name: str) -> dict:
    return yaml.safe_load((ROOT / "examples" / name).read_text())


def cond(obj: dict, ctype: str) -> dict:
    return next((c for c in (obj.get("status") or {}).get("conditions", []) if c["type"] == ctype), {})


@contextlib.asynccontextmanager
async def site_agent(emulator, site: str, nvml: FakeNVML):
    """One site agent: heartbeat and inventory loops plus its kopf registry (assignment answers)."""
    hub = Kube.from_url(str(emulator.url), policy=FAST)
    reporter = InventoryReporter(hub, site, reader=NVMLReader(nvml), poll_interval=0.3,
                                 versions=AgentVersions(agent="test", flwr="1.42.0"))
    agent = SiteAgent(site, hub, reporter, agent_id=f"{site}/agent-0", heartbeat=Heartbeat(hub, site, f"{site}/a"))
    await agent.prepare()
    stop = asyncio.Event()
    task = asyncio.create_task(agent.run(stop))
    try:
        async with run_operator(emulator, agent.registry(), namespaces=[site_namespace(site)]):
            yield agent
    finally:
        stop.set()
        await asyncio.wait_for(asyncio.gather(task, return_exceptions=True), 10)
        reporter.reader.shutdown()
        await hub.close()


@contextlib.asynccontextmanager
async def metrics_servers(ctx):
    state = HubStateCollector(ctx)
    hub_srv = metrics.MetricsServer("127.0.0.1:0", metrics.build_registry("hub", [state]), [state.site_exposition])
    agent_srv = metrics.MetricsServer("127.0.0.1:0", metrics.build_registry("agent"))
    try:
        yield hub_srv, agent_srv
    finally:
        hub_srv.close()
        agent_srv.close()


def dashboard_queries() -> list[tuple[str, str, str]]:
    """(panel title, expr, legendFormat) for every target of every panel."""
    doc = json.loads(DASHBOARD.read_text())
    return [(p["title"], t["expr"], t.get("legendFormat", "")) for p in doc["panels"] for t in p.get("targets", [])]


def concrete(expr: str) -> str:
    """Grafana's variables as the dashboard's defaults would set them."""
    return expr.replace("$__rate_interval", "30s").replace('"$site"', '".*"')


def expected_labels(expr: str, legend: str) -> set[str]:
    """Labels every series must carry: those of the legend and of the outermost ``by (...)``."""
    labels = set(re.findall(r"{{\s*(\w+)\s*}}", legend))
    outer = re.match(r"^\s*(?:sum|max|min|avg|count) by \(([^)]*)\)", expr)
    if outer:
        labels |= {x.strip() for x in outer.group(1).split(",") if x.strip()}
    return labels - {"le"}


async def scrape(url: str) -> str:
    async with aiohttp.ClientSession() as s, s.get(url, timeout=aiohttp.ClientTimeout(total=5)) as r:
        assert r.status == 200
        return await r.text()


def promtool_check(text: str) -> None:
    done = subprocess.run([binary("promtool"), "check", "metrics"], input=text, capture_output=True, text=True,
                          timeout=30)
    assert done.returncode == 0, done.stdout + done.stderr


def sample(text: str, name: str, **labels: str) -> float | None:
    """The sum of the samples of ``name`` in exposition text whose labels include ``labels``."""
    values = [float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
              if (line.startswith(name + "{") or line.startswith(name + " "))
              and all(f'{k}="{v}"' in line for k, v in labels.items())]
    return sum(values) if values else None


async def test_every_dashboard_query_has_data_of_the_expected_shape(emulator, hub, api, tmp_path):
    binary()                                              # skip (with the install command) before starting
    queries = dashboard_queries()
    assert len(queries) >= 25
    metrics.init_agent_site(ODD_SITE)
    fakes = {"rouen": FakeNVML(gpus(2)), "lyon": FakeNVML(gpus(2))}
    fakes["lyon"].gpus[1].ecc_uncorrectable = 2           # one unhealthy GPU: healthy 3 of 4 in all
    try:
        async with hub() as logs, metrics_servers(logs.ctx) as (hub_srv, agent_srv):
            for site in fakes:
                await api.create(NODES, node_body(site))
            async with site_agent(emulator, "rouen", fakes["rouen"]), site_agent(emulator, "lyon", fakes["lyon"]):
                await eventually(lambda: _all_reported(api, len(fakes)), timeout=30)
                await api.create(Ref(API_VERSION, "federatedrounds", "default"), example("federatedround-ultrasound.yaml"))
                await api.create(Ref(API_VERSION, "modelreleases", "default"), example("modelrelease-ultrasound.yaml"))
                await _assign(api, "rouen", gpus=1)
                await _assign(api, "lyon", gpus=4)
                # a short API outage for Lease renewals: failures, 503s and retries are counted
                fault = emulator.inject(kmock.K8sCriteria(method=kmock.method.PATCH, namespace=site_namespace("rouen")),
                                        kmock.KubernetesError(503, "ServiceUnavailable", "injected"), times=4)
                await eventually(lambda: fault.hits >= 4, timeout=20)
                await eventually(lambda: _phase_reported(logs.ctx), timeout=15)

                hub_target = f"127.0.0.1:{hub_srv.port}"
                agent_target = f"127.0.0.1:{agent_srv.port}"
                async with prometheus({"fedcare-hub": [hub_target], "fedcare-agent": [agent_target]},
                                      tmp_path / "prometheus") as prom:
                    async def scraped_twice():
                        data = await prom.query("count_over_time(up[30s]) >= 3")
                        return len(data["result"]) == 2
                    await eventually(scraped_twice, timeout=30, interval=0.5)
                    assert set((await prom.targets_up()).values()) == {"up"}
                    truth = await api.list(NODES)
                    await _check_queries(prom, queries)
                    await _check_values(prom, truth)
                    await _check_odd_site(prom)
    finally:
        metrics.forget_agent_site(ODD_SITE)


async def _check_queries(prom, queries) -> None:
    problems = []
    for title, expr, legend in queries:
        data = await prom.query(concrete(expr))
        result = data["result"]
        want = expected_labels(expr, legend)
        if data["resultType"] != "vector" or not result:
            problems.append(f"{title}: {expr} returned no data ({data['resultType']})")
            continue
        for series in result:
            missing = want - set(series["metric"])
            value = float(series["value"][1])
            if missing:
                problems.append(f"{title}: {expr} series {series['metric']} lacks labels {missing}")
            if math.isinf(value) or (math.isnan(value) and "histogram_quantile" not in expr):
                problems.append(f"{title}: {expr} gave {value}")
    assert not problems, "\n".join(problems)


async def _value(prom, expr: str) -> float:
    result = (await prom.query(expr))["result"]
    assert len(result) == 1, (expr, result)
    return float(result[0]["value"][1])


async def _check_values(prom, truth: list[dict]) -> None:
    """The numbers the overview shows agree with what the API says."""
    ready = sum(1 for n in truth if cond(n, "Ready").get("status") == "True")
    assert await _value(prom, 'sum(fedcare_sites{condition="Ready",status="True"})') == ready
    assert await _value(prom, 'sum(fedcare_sites{condition="Ready"})') == len(truth) == 2
    assert await _value(prom, 'sum(fedcare_site_gpus{state="healthy"})') == 3
    assert await _value(prom, 'sum(fedcare_site_gpus{state="total"})') == 4
    conditions = (await prom.query('fedcare_site_condition{condition="Ready"}'))["result"]
    assert {s["metric"]["site"]: float(s["value"][1]) for s in conditions} == {
        n["metadata"]["name"]: {"True": 1.0, "False": 0.0}.get(cond(n, "Ready").get("status"), -1.0) for n in truth}
    ages = (await prom.query("fedcare_site_heartbeat_age_seconds"))["result"]
    assert {s["metric"]["site"] for s in ages} == {"rouen", "lyon"}
    assert all(0 <= float(s["value"][1]) < 10 for s in ages)        # renewed within one lease duration
    phases = {s["metric"]["phase"]: float(s["value"][1]) for s in (await prom.query("fedcare_rounds"))["result"]}
    assert sum(phases.values()) >= 1       # the one round, in whatever phase execution has reached
    assert await _value(prom, 'sum(fedcare_releases{phase="Pending"})') == 1
    for kind in ("HospitalNode", "FederatedRound", "ModelRelease"):
        assert await _value(prom, f'sum(fedcare_reconcile_duration_seconds_count{{kind="{kind}"}})') >= 1
    assert await _value(prom, 'sum(fedcare_agent_lease_renewal_failures_total{site="rouen"})') >= 1
    assert await _value(prom, 'sum(fedcare_kube_requests_total{code="503"})') >= 1
    assert await _value(prom, 'sum(fedcare_kube_request_retries_total{verb="PATCH"})') >= 1
    answers = (await prom.query("fedcare_agent_assignment_answers_total > 0"))["result"]
    got = {(s["metric"]["site"], s["metric"]["result"], s["metric"]["reason"]) for s in answers}
    assert {("rouen", "accepted", "Accepted"), ("lyon", "rejected", "InsufficientGPU")} <= got
    assert await _value(prom, 'sum(fedcare_agent_nvml_poll_duration_seconds_count{site="lyon"})') >= 1
    assert await _value(prom, 'sum(fedcare_events_total{result="posted"})') >= 4


async def _check_odd_site(prom) -> None:
    """A site name with quotes, a backslash, a newline, a control character and non-ASCII
    letters is scraped intact (control characters replaced) and can be selected."""
    want = metrics.label_value(ODD_SITE)
    assert "\x01" not in want and "\n" not in want
    result = (await prom.query('fedcare_agent_lease_renewals_total{site=~"st-.*"}'))["result"]
    assert [s["metric"]["site"] for s in result] == [want]


async def _all_reported(api, n: int):
    items = await api.list(NODES)
    return len(items) == n and all(cond(i, "Available").get("status") == "True" and
                                   (i.get("status") or {}).get("capacity") for i in items)


def _phase_reported(ctx) -> bool:
    # the round may already have moved on (round execution runs in the hub): any phase counts
    return sum(ctx.rounds.counts().values()) >= 1 and sum(ctx.releases.counts().values()) >= 1


async def _assign(api, site: str, gpus: int, *, wait: bool = True) -> None:
    rnd = example("federatedround-ultrasound.yaml")
    await api.create(Ref(API_VERSION, "roundassignments", site_namespace(site)), {
        "apiVersion": API_VERSION, "kind": "RoundAssignment", "metadata": {"name": f"r-{site}"},
        "spec": {"roundRef": {"namespace": "default", "name": rnd["metadata"]["name"]}, "nodeName": site,
                 "training": {"image": rnd["spec"]["training"]["image"], "gpusPerSite": gpus}}})
    ref = Ref(API_VERSION, "roundassignments", site_namespace(site), f"r-{site}")
    if wait:
        await eventually(lambda: _answered(api, ref), timeout=15)


async def _answered(api, ref) -> bool:
    obj = await api.get_or_none(ref)
    return bool(obj and (obj.get("status") or {}).get("phase"))


async def test_metrics_are_served_during_an_api_outage_and_count_its_errors(emulator, hub, api):
    async with hub() as logs, metrics_servers(logs.ctx) as (hub_srv, _):
        await api.create(NODES, node_body("rouen"))
        await eventually(lambda: _enrolled(api), timeout=15)

        async def hub_saw_enrollment():   # the hub's memory follows its watch: on a loaded machine, later
            return sample(await scrape(hub_srv.url), "fedcare_sites", condition="Enrolled", status="True") == 1

        await eventually(hub_saw_enrollment, timeout=30, interval=0.5)
        # the site connects (two renewals: the first sight of a Lease is not one), so that the
        # hub has a transition to write when the renewals stop (a site that never connected stays
        # AgentNotConnected: the monitor writes nothing for it)
        lease = Ref("coordination.k8s.io/v1", "leases", site_namespace("rouen"), "fedcare-agent")
        for renew in ("2026-12-01T10:00:00.000000Z", "2026-12-01T10:00:02.500000Z"):
            await api.patch(lease, {"spec": {"holderIdentity": "rouen/test", "renewTime": renew}})
            await asyncio.sleep(0.3)

        async def available():
            obj = await api.get_or_none(Ref(API_VERSION, "hospitalnodes", None, "rouen"))
            return obj and cond(obj, "Available").get("status") == "True"

        await eventually(available, timeout=15)
        status_503 = {"verb": "PATCH", "resource": "hospitalnodes/status", "code": "503"}
        before = sample(await scrape(hub_srv.url), "fedcare_kube_requests_total", **status_503) or 0.0
        outage = emulator.inject(lambda req: True, kmock.KubernetesError(503, "ServiceUnavailable", "down"),
                                 times=None)
        try:
            # no more renewals: after one lease duration (10 s) the hub tries to mark rouen Unknown, and fails
            async def hub_write_failed():
                text = await scrape(hub_srv.url)       # answered from memory during the outage
                return text if (sample(text, "fedcare_kube_requests_total", **status_503) or 0.0) > before else None
            during = await eventually(hub_write_failed, timeout=30, interval=0.5)
            assert sample(during, "fedcare_kube_request_retries_total", verb="PATCH",
                          resource="hospitalnodes/status") >= 1
            assert sample(during, "fedcare_sites", condition="Enrolled", status="True") == 1
            promtool_check(during)
        finally:
            outage.times = 0


async def _enrolled(api):
    obj = await api.get_or_none(Ref(API_VERSION, "hospitalnodes", None, "rouen"))
    return obj and cond(obj, "Enrolled").get("status") == "True"


@pytest.mark.parametrize("role", ["hub", "agent"])
def test_what_each_role_serves_passes_promtool_and_is_documented(role):
    binary("promtool")
    metrics.init_agent_site("rouen")
    text = _exposition(role)
    promtool_check(text)
    documented = (ROOT / "docs" / "metrics.md").read_text()
    names = set(re.findall(r"^# TYPE (fedcare_\w+) ", text, re.M))
    assert names, text[:500]
    missing = sorted(n for n in names if f"`{n}`" not in documented)
    assert not missing, f"metrics not documented in docs/metrics.md: {missing}"


def _exposition(role: str) -> str:
    from fedcare.hub.availability import SiteView
    from fedcare.hub.context import HubContext

    if role != "hub":
        return metrics.exposition(metrics.build_registry(role)).decode()
    ctx = HubContext()
    body = {"status": {"capacity": {"gpusHealthy": 1, "gpusTotal": 2},
                       "conditions": [{"type": "Ready", "status": "False"}, {"type": "Available", "status": "True"}]}}
    for name in ("rouen", ODD_SITE):
        ctx.availability.sites[name] = SiteView(name, 40.0, 1, {}, "True", body=body)
    state = HubStateCollector(ctx)
    return metrics.exposition(metrics.build_registry(role, [state]), [state.site_exposition]).decode()


def test_site_families_render_every_site_and_escape_odd_names():
    text = _exposition("hub")
    odd = metrics.label_value(ODD_SITE).replace("\\", "\\\\").replace('"', '\\"')
    assert f'fedcare_site_condition{{site="{odd}",condition="Ready"}} 0.0' in text
    assert 'fedcare_site_condition{site="rouen",condition="Available"} 1.0' in text
    assert 'fedcare_site_condition{site="rouen",condition="GPUReady"} -1.0' in text
    assert 'fedcare_site_gpus{site="rouen",state="healthy"} 1.0' in text
    assert text.count("fedcare_site_heartbeat_age_seconds{") == 2
