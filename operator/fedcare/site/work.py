"""The site's work: a SuperNode training pod per accepted RoundAssignment, in the site cluster.

One level-based loop compares the site's assignments on the hub with its training pods in
the site cluster and converges. It is woken by the watches of both (an assignment answered or
deleted; a pod started, running, exited, deleted), at the nearest assignment deadline, and
otherwise every ``interval`` (a resync; nothing waits on it):

* Accepted or Running assignment of the current attempt, deadline not passed: its pod and
  NetworkPolicy exist; the pod's state is reported (Running, restarts, exit reason).
* A pod that failed, or whose container restarted, counts against ``training.maxRestarts``;
  past it the assignment is Failed and the pod deleted. A failed pod is re-created
  (``-r<retry>``) while the limit allows.
* Deadline passed: pod deleted, assignment Failed/DeadlinePassed (its GPUs are free again).
* An assignment gone (the round ended or was deleted) or of an older attempt: pod and policy
  deleted.

The site's assignments (hub API) and training pods (site API) are read from two list-then-
watch caches (``informer.py``), so a pass that changes nothing makes no API call, and the loop
starts only once both caches hold a complete listing. A restarted agent therefore resumes
without duplicates: pod names are derived from the assignment and the retry count in its
status. The pods' credentials Secrets are listed at start and then every ``interval`` (an
orphan left by a stopped agent is deleted then), and each pod's NetworkPolicy is checked at
its creation and then at most every ``interval``.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from typing import Any

from ..api import conditions as c
from ..api import resources as r
from ..api.round_assignment import AssignmentPhase
from ..integrations.kube import Conflict, Kube, KubeError, Ref, ensure
from ..integrations.vault import VaultClient, VaultError
from ..status_writer import write_status
from . import site_reports
from . import supernode_credentials as creds
from . import training_pod as tp
from .informer import Informer
from .privacy import SitePrivacy
from .heartbeat import node_ref

log = logging.getLogger(__name__)

KIND = r.ROUND_ASSIGNMENTS.kind
AGENT_TYPES = c.owned(KIND, c.Writer.AGENT)
ACTIVE = {AssignmentPhase.ACCEPTED.value, AssignmentPhase.RUNNING.value}
LATER = {AssignmentPhase.RUNNING.value, AssignmentPhase.SUCCEEDED.value, AssignmentPhase.FAILED.value}


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _deadline(assignment: dict[str, Any]) -> dt.datetime | None:
    raw = (assignment.get("spec") or {}).get("deadline")
    return dt.datetime.fromisoformat(str(raw).replace("Z", "+00:00")) if raw else None


def past_deadline(assignment: dict[str, Any], now: dt.datetime | None = None) -> bool:
    deadline = _deadline(assignment)
    return deadline is not None and (now or _now()) >= deadline


class SiteWork:
    def __init__(self, hub: Kube, site_kube: Kube | None, site: str, agent_id: str, *,
                 namespace: str = "fedcare-training", insecure: bool = False, interval: float = 10.0,
                 lock: asyncio.Lock | None = None, privacy: SitePrivacy | None = None,
                 vault: VaultClient | None = None):
        self.hub, self.site_kube, self.site, self.agent_id = hub, site_kube, site, agent_id
        self.privacy = privacy or SitePrivacy()   # the hospital's budget and ledger (site/privacy.py)
        #: The site's own Vault identity: its SuperNode key and the CA for TLS rounds.
        self.credentials = creds.SupernodeCredentials(vault, site) if vault is not None else None
        self.namespace, self.insecure, self.interval = namespace, insecure, interval
        self.lock = lock or asyncio.Lock()     # shared with the answers: one writer of phases at a time
        self.wake = asyncio.Event()
        self.passes = 0
        self._key_retry_at, self._key_delay = 0.0, KEY_RETRY_FIRST
        #: The nearest deadline of an active assignment (the loop wakes then to enforce it).
        self.soonest: dt.datetime | None = None
        #: The pods' credentials Secrets as last listed, plus those created since (None: not listed yet).
        self._secrets: set[str] | None = None
        self._sweep_at = 0.0            # when the credentials Secrets are listed again (monotonic)
        self._policy_at: dict[str, float] = {}  # assignment key -> when its NetworkPolicy is checked again
        selector = f"{r.SITE_LABEL}={site},{r.MANAGED_BY_LABEL}={r.MANAGED_BY}"
        self.assignments = Informer(hub, Ref(r.API_VERSION, r.ROUND_ASSIGNMENTS.plural, r.site_namespace(site)),
                                    on_change=self.wake.set, what=f"site {site}'s RoundAssignments")
        self.pods = Informer(site_kube, Ref("v1", "pods", namespace), label_selector=selector,
                             on_change=self.wake.set, what=f"site {site}'s training pods") \
            if site_kube is not None else None
        if insecure:
            log.warning("DEVELOPMENT MODE: site %s accepts plaintext Flower (--insecure-flower): no TLS, no "
                        "SuperNode authentication. Never use this with real patient data.", site)

    async def run(self, stop: asyncio.Event) -> None:
        if self.site_kube is None:
            log.warning("No site cluster access: site %s cannot run training pods", self.site)
            return
        assert self.pods is not None
        watchers = [asyncio.create_task(self.assignments.run(stop), name="assignment-watch"),
                    asyncio.create_task(self.pods.run(stop), name="training-pod-watch")]
        try:
            synced = asyncio.gather(self.assignments.synced.wait(), self.pods.synced.wait())
            stopped = asyncio.ensure_future(stop.wait())
            await asyncio.wait([synced, stopped], return_when=asyncio.FIRST_COMPLETED)
            stopped.cancel()
            if not synced.done():
                synced.cancel()
                return
            while not stop.is_set():
                self.wake.clear()       # before the pass: a wake-up during it triggers the next one
                if self.credentials is not None and not self.credentials.key_ready:
                    await self._publish_key()
                try:
                    await self.reconcile()
                except KubeError as err:
                    log.warning("Site work pass failed (%s); retrying", err)
                except VaultError as err:
                    log.warning("Site %s: Vault: %s; retrying", self.site, err)
                except Exception as err:    # a bug in one pass must not end the loop (no pod would start again)
                    log.error("Site %s: work pass failed unexpectedly (%s); retrying at the next pass",
                              self.site, type(err).__name__)
                timeout = self.interval
                if self.soonest is not None:
                    timeout = min(timeout, max(0.05, (self.soonest - _now()).total_seconds()))
                if self.credentials is not None and not self.credentials.key_ready:
                    timeout = min(timeout, max(0.05, self._key_retry_at - time.monotonic()))
                waits = [asyncio.create_task(stop.wait()), asyncio.create_task(self.wake.wait())]
                await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
                for w in waits:
                    w.cancel()
        finally:
            for w in watchers:
                w.cancel()
            await asyncio.gather(*watchers, return_exceptions=True)

    async def _publish_key(self) -> None:
        """The hub registers the public key before dispatching: publish it at start. While Vault
        refuses (the site's role not made yet, Vault down), retry with a doubling pause, not on
        every pass (pod events wake the loop often)."""
        assert self.credentials is not None
        now = time.monotonic()
        if now < self._key_retry_at:
            return
        try:
            await self.credentials.ensure_key()
            self._key_delay = KEY_RETRY_FIRST
        except VaultError as err:
            self._key_retry_at = now + self._key_delay
            log.warning("Site %s: cannot publish its SuperNode key yet (Vault: %s); retrying in %.0fs",
                        self.site, err, self._key_delay)
            self._key_delay = min(KEY_RETRY_MAX, 2 * self._key_delay)

    # -- the pass ------------------------------------------------------------------------------
    async def reconcile(self) -> None:
        assert self.site_kube is not None
        self.passes += 1
        assert self.pods is not None
        if not (self.assignments.fresh and self.pods.fresh):
            # a cache between a failure and its next listing: act on nothing (it would act on old state)
            log.debug("Site %s: work pass skipped until the watches are back", self.site)
            return
        assignments = list(self.assignments.items.values())
        pods = list(self.pods.items.values())
        if self.credentials is not None and (self._secrets is None or time.monotonic() >= self._sweep_at):
            self._sweep_at = time.monotonic() + self.interval
            gone, self._secrets = await creds.sweep(self.site_kube, self.namespace, self.site,
                                                    {p["metadata"]["name"] for p in pods})
            for name in gone:
                log.info("Site %s: deleted SuperNode credentials Secret %s (its pod is gone)", self.site, name)
        by_assignment: dict[str, list[dict[str, Any]]] = {}
        for pod in pods:
            by_assignment.setdefault(pod["metadata"]["labels"].get(tp.ASSIGNMENT_LABEL, ""), []).append(pod)
        wanted: set[str] = set()
        self.soonest = None
        for ra in assignments:
            st, spec = ra.get("status") or {}, ra.get("spec") or {}
            key = tp._label_value(ra["metadata"]["name"])
            if draining(ra):
                wanted.add(key)      # a refusal's error reply is still on its way to the ServerApp
                continue
            if st.get("phase") not in ACTIVE or st.get("attempt") != spec.get("attempt"):
                continue
            if ra["metadata"].get("deletionTimestamp"):
                continue
            mine = by_assignment.get(key, [])
            if past_deadline(ra):
                await self._delete_pods(mine, ra)
                await self._status(ra, AssignmentPhase.FAILED, c.Reason.DEADLINE_PASSED,
                                   f"the round's deadline {spec.get('deadline')} passed; training pod deleted and "
                                   "GPUs released")
                continue
            deadline = _deadline(ra)
            if deadline is not None and (self.soonest is None or deadline < self.soonest):
                self.soonest = deadline
            if not (spec.get("superLink") or {}).get("address"):
                continue
            if (spec.get("superLink") or {}).get("insecure") and not self.insecure:
                await self._status(ra, AssignmentPhase.FAILED, c.Reason.INSECURE_REFUSED,
                                   "the round's SuperLink runs without TLS; this site only joins it if its agent "
                                   "runs with --insecure-flower (development only)")
                continue
            if not (spec.get("superLink") or {}).get("insecure") and self.credentials is None:
                await self._status(ra, AssignmentPhase.FAILED, c.Reason.VAULT_UNAVAILABLE,
                                   "the round's SuperLink requires TLS and SuperNode authentication, and this "
                                   "agent has no Vault client for its SuperNode key (set FEDCARE_VAULT_ADDR, "
                                   "secrets.backend=vault)")
                continue
            wanted.add(key)
            await self._converge(ra, mine)
        for key, mine in by_assignment.items():
            if key not in wanted:
                await self._delete_pods(mine, None)
        for key in set(self._policy_at) - wanted:
            del self._policy_at[key]

    async def _converge(self, ra: dict[str, Any], pods: list[dict[str, Any]]) -> None:
        assert self.site_kube is not None
        st, spec = ra.get("status") or {}, ra["spec"]
        limit = int((spec.get("training") or {}).get("maxRestarts", 3))
        retry = int(st.get("retries") or 0)
        name = tp.pod_name(ra, retry)
        stale = [p for p in pods if p["metadata"]["name"] != name]
        if stale:
            await self._delete_pods(stale, ra)
        pod = next((p for p in pods if p["metadata"]["name"] == name), None)
        policy = tp.network_policy(ra, site=self.site, namespace=self.namespace)
        plaintext = bool((spec.get("superLink") or {}).get("insecure"))
        key = tp._label_value(ra["metadata"]["name"])
        if pod is None:     # the cache says it is missing: create both without ensure's extra GETs
            # read now, not cached: the pod gets the HospitalNode's current selector and tolerations
            node = await self.hub.get(node_ref(self.site))
            manifest = tp.pod_manifest(ra, node, site=self.site, namespace=self.namespace, retry=retry,
                                       insecure=plaintext, privacy=self.privacy)
            await _create_or_ensure(self.site_kube, "networkpolicies", policy)
            self._policy_at[key] = time.monotonic() + self.interval
            pod, created = await _create_or_ensure(self.site_kube, "pods", manifest)
            self.pods.put(pod)      # type: ignore[union-attr]
            if created and self._secrets is not None:
                # a pod made again under an old name: a Secret of that name may be the old pod's
                self._secrets.discard(creds.secret_name(name))
            if created:
                log.info("Site %s: created training pod %s for round %s (attempt %s)", self.site, name,
                         spec["roundRef"]["name"], spec.get("attempt"))
        elif time.monotonic() >= self._policy_at.get(key, 0.0):
            await ensure(self.site_kube, "networkpolicies", policy)
            self._policy_at[key] = time.monotonic() + self.interval
        if not plaintext and self.credentials is not None and not pod["metadata"].get("deletionTimestamp"):
            try:   # after the pod (the Secret is owned by it); the pod waits for it to mount
                listed, secret = self._secrets, creds.secret_name(pod["metadata"]["name"])
                await self.credentials.ensure_secret(self.site_kube, pod,
                                                     exists=None if listed is None else secret in listed)
                if listed is not None:
                    listed.add(secret)      # created now, or there already (409)
            except VaultError as err:
                log.warning("Site %s: no SuperNode credentials for pod %s yet: %s", self.site, name, err)
        restarts, why = tp.container_state(pod)
        total = retry + restarts
        phase = (pod.get("status") or {}).get("phase") or "Pending"
        fields = {"podName": name, "restarts": total, "retries": retry, "exitReason": why}
        if total > limit or (phase == "Failed" and retry >= limit):
            await self._delete_pods([pod], ra)
            await self._status(ra, AssignmentPhase.FAILED, c.Reason.POD_FAILED,
                               f"training pod failed {total} time(s), more than training.maxRestarts ({limit}): "
                               f"{why or phase}", **fields)
            return
        if phase in ("Failed", "Succeeded"):
            # Re-create under the next name; the retry count in status keeps it bounded.
            await self._delete_pods([pod], ra)
            await self._status(ra, AssignmentPhase(st.get("phase")), c.Reason.POD_FAILED,
                               f"training pod {name} ended ({why or phase}); re-creating it "
                               f"(retry {retry + 1} of {limit})", **{**fields, "retries": retry + 1,
                                                                     "restarts": total + 1})
            return
        if phase == "Running":
            report = await site_reports.read(self.site_kube, self.namespace, name)
            if report.refused:       # the privacy ledger refused: this site leaves the round
                # (the pod goes after REFUSAL_DRAIN_SECONDS: see draining())
                await self._status(ra, AssignmentPhase.FAILED, c.Reason.PRIVACY_BUDGET_EXHAUSTED,
                                   report.refusal_message(), **fields, **report.status_fields())
                log.warning("Site %s: %s (round %s)", self.site, report.refusal_message(), spec["roundRef"]["name"])
                return
            fields |= report.status_fields()
            await self._status(ra, AssignmentPhase.RUNNING, c.Reason.POD_RUNNING,
                               f"training pod {name} is running" + (f" ({total} restart(s): {why})" if total else ""),
                               **fields)
        else:
            await self._status(ra, AssignmentPhase(st.get("phase")), c.Reason(st_reason(st)),
                               st.get("message") or "", **fields)

    async def _delete_pods(self, pods: list[dict[str, Any]], ra: dict[str, Any] | None) -> None:
        assert self.site_kube is not None
        for pod in pods:
            md = pod["metadata"]
            if md.get("deletionTimestamp"):
                continue        # already going (its grace period runs; a second DELETE changes nothing)
            if await self.site_kube.delete(Ref("v1", "pods", md["namespace"], md["name"])):
                log.info("Site %s: deleted training pod %s", self.site, md["name"])
            if self.pods is not None:
                self.pods.drop(md["name"])
            if await creds.delete_secret(self.site_kube, md["namespace"], md["name"]):
                log.info("Site %s: deleted SuperNode credentials of pod %s", self.site, md["name"])
            if self._secrets is not None:
                self._secrets.discard(creds.secret_name(md["name"]))
        if ra is None and pods:
            key = pods[0]["metadata"]["labels"].get(tp.ASSIGNMENT_LABEL, "")
            policies = Ref("networking.k8s.io/v1", "networkpolicies", self.namespace)
            for np in await self.site_kube.list(policies, label_selector=f"{r.SITE_LABEL}={self.site},"
                                                                          f"{tp.ASSIGNMENT_LABEL}={key}"):
                await self.site_kube.delete(Ref(policies.api_version, policies.plural, self.namespace,
                                                np["metadata"]["name"]))

    async def _status(self, ra: dict[str, Any], phase: AssignmentPhase, reason: c.Reason, message: str,
                      **fields: Any) -> None:
        md = ra["metadata"]
        gen = md.get("generation")
        ok = phase in (AssignmentPhase.ACCEPTED, AssignmentPhase.RUNNING, AssignmentPhase.SUCCEEDED)
        updates = [c.make(c.ConditionType.READY, ok, reason, message, generation=gen)]
        ref = Ref(r.API_VERSION, r.ROUND_ASSIGNMENTS.plural, md["namespace"], md["name"])
        async with self.lock:       # known: the cached copy saves a read (a stale one gets 409, re-read)
            written = await write_status(self.hub, ref, owned_types=AGENT_TYPES, updates=updates,
                                         fields={"phase": phase.value, "message": message,
                                                 "agentId": self.agent_id, **fields}, known=ra)
        self.assignments.put(written)


async def _create_or_ensure(kube: Kube, plural: str, manifest: dict[str, Any]) -> tuple[dict[str, Any], bool]:
    """Create an object a fresh list says is missing; if it exists after all, converge it."""
    md = manifest["metadata"]
    try:
        return await kube.create(Ref(manifest["apiVersion"], plural, md["namespace"]), manifest), True
    except Conflict:
        return await ensure(kube, plural, manifest)


#: How long a refusing site's pod outlives the refusal, so that the SuperNode delivers the
#: ClientApp's error reply (the ServerApp then books the refusal on the site, by name, instead of
#: seeing its node vanish). Its assignment is Failed meanwhile: it reserves no GPU.
REFUSAL_DRAIN_SECONDS = 20.0
KEY_RETRY_FIRST, KEY_RETRY_MAX = 1.0, 15.0   # pauses between attempts to publish the SuperNode key


def draining(ra: dict[str, Any], now: dt.datetime | None = None) -> bool:
    st = ra.get("status") or {}
    if st.get("phase") != AssignmentPhase.FAILED.value or ra["metadata"].get("deletionTimestamp"):
        return False
    ready = c.raw_condition(ra, c.ConditionType.READY.value) or {}
    if ready.get("reason") != c.Reason.PRIVACY_BUDGET_EXHAUSTED.value or not ready.get("lastTransitionTime"):
        return False
    since = dt.datetime.fromisoformat(str(ready["lastTransitionTime"]).replace("Z", "+00:00"))
    return (now or _now()) - since < dt.timedelta(seconds=REFUSAL_DRAIN_SECONDS)


def st_reason(status: dict[str, Any]) -> str:
    ready = c.raw_condition({"status": status}, c.ConditionType.READY.value) or {}
    reason = ready.get("reason") or c.Reason.ACCEPTED.value
    return reason if reason in c.Reason._value2member_map_ else c.Reason.ACCEPTED.value
