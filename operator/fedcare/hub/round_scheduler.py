"""FederatedRound execution: select, start the aggregator, dispatch, run Flower, follow, finish.

Level-based and resumable from ``status`` alone: every pass reads the round and what
exists (SuperLink pod, assignments, the SuperLink's runs), and does the next missing step.
A hub killed at any point and restarted finds the same objects and adopts them; the only
non-idempotent call, ``flwr run``, is preceded by listing the SuperLink's runs (the
SuperLink belongs to this round and attempt alone, so any run there is ours).

Steps and the condition each sets (phase is derived from them, Ready is True on success):

  ParticipantsSelected  hub/selection.py once, frozen in status.participants; QuorumNotMet
                        (naming every excluded site and why) until enough sites are eligible
  AggregatorReady       SuperLink Pod + Service + state PVC, /health answering
  AssignmentsDispatched one RoundAssignment per participant (attempt, address, deadline)
  QuorumHealthy         enough sites neither rejected nor failed; QuorumLost otherwise
  Complete / Failed     the Flower run's end: result in the artifact store, or why not
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import hashlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .. import metrics
from ..api import conditions as c
from ..api import resources as r
from ..api.base import Condition
from ..api.federated_round import ARCHITECTURES, FederatedRoundSpec, RoundPhase
from ..api.validation import SpecError, parse
from ..integrations.kube import Conflict, Kube, Ref, ensure
from ..integrations.s3 import ObjectStoreError
from ..integrations.vault import VaultError
from ..status_writer import write_status
from . import aggregator as agg
from . import initial_model
from . import flower_control
from . import round_progress as progress
from . import run_trust
from .artifact_upload import S3ResultStore
from .flower_runs import FlowerCLI, FlowerError, KeyRefused, RunInfo, RunUnknown
from .selection import eligible_sites
from .superlink_tls import SuperLinkTLS, site_identities

log = logging.getLogger(__name__)

KIND = r.FEDERATED_ROUNDS.kind
HUB_TYPES = c.owned(KIND, c.Writer.HUB)
T = c.ConditionType
TERMINAL = {RoundPhase.SUCCEEDED.value, RoundPhase.FAILED.value}
ROUND_UID_LABEL = "fedcare.io/round-uid"
#: SuperNode keys registered at once with a round's SuperLink (each one ~60 ms of Control API).
REGISTER_CONCURRENCY = 6
#: How long one pass waits for a starting SuperLink's /health (agg.wait_healthy): longer than
#: the pass interval, or /health answering between two passes waits for the next one (the
#: hub's default interval, 2 s, was most of its share of a round's start). Bounded by the
#: round's deadline, which the next pass enforces.
HEALTH_WAIT = 10.0
#: Seconds between checks (Control API ListRuns) of a run whose provenance does not say it
#: ended: a run that dies without writing provenance is noticed within this.
FLWR_CHECK_INTERVAL = 10.0
#: Run-config keys of workloads/ a spec may not override through strategy.config (the hub sets them).
RESERVED_KEYS = ({"out-dir", "num-server-rounds", "min-train-nodes", "min-available-nodes", "initial-model",
                  "initial-model-sha256"} | run_trust.KEYS)


@dataclass
class RoundConfig:
    """What the hub needs to run rounds (``hub/settings`` fills it from flags/env)."""

    flower: FlowerCLI
    app: str                                   # path of the Flower app (workloads/) the hub submits
    aggregator: agg.AggregatorConfig = field(default_factory=agg.AggregatorConfig)
    poll_interval: float = 2.0
    #: TLS and SuperNode authentication from Vault (hub/superlink_tls.py); set from
    #: HubContext.vault. None and not ``aggregator.insecure``: the hub refuses to run Flower.
    tls: SuperLinkTLS | None = None
    #: The artifact store's S3-compatible option (hub/artifact_upload.py); None: the PVC folder only.
    s3: S3ResultStore | None = None


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(microsecond=0)


def _time(value: Any) -> dt.datetime | None:
    if not value:
        return None
    return dt.datetime.fromisoformat(str(value).replace("Z", "+00:00"))


def _iso(value: dt.datetime) -> str:
    return value.isoformat().replace("+00:00", "Z")


def ref_of(body: dict[str, Any]) -> Ref:
    md = body["metadata"]
    return Ref(r.API_VERSION, r.FEDERATED_ROUNDS.plural, md["namespace"], md["name"])


def assignment_name(body: dict[str, Any], attempt: int) -> str:
    md = body["metadata"]
    tag = hashlib.sha256(f"{md['namespace']}/{md['name']}/{md['uid']}".encode()).hexdigest()[:6]
    return f"{md['name'][:44]}-{tag}-a{attempt}"


def derive_phase(conds: list[Condition], status: dict[str, Any]) -> dict[str, Any]:
    def true(t: T) -> bool:
        found = c.find(conds, t.value)
        return found is not None and found.status.value == "True"
    if true(T.FAILED):
        phase = RoundPhase.FAILED
    elif true(T.COMPLETE):
        phase = RoundPhase.SUCCEEDED
    elif status.get("suspended"):
        phase = RoundPhase.SUSPENDED
    elif status.get("runId"):
        phase = RoundPhase.RUNNING
    elif true(T.PARTICIPANTS_SELECTED):
        phase = RoundPhase.SCHEDULING
    else:
        phase = RoundPhase.PENDING
    return {"phase": phase.value}


def derive_ready(conds: list[Condition]) -> list[Condition]:
    """Ready (what kstatus reads): True once Complete; otherwise the most telling blocker."""
    gen = max((x.observed_generation or 0 for x in conds), default=0) or None
    for t in (T.FAILED, T.COMPLETE):
        cond = c.find(conds, t.value)
        if cond is not None and cond.status.value == "True":
            return [c.make(T.READY, t is T.COMPLETE, cond.reason, cond.message, generation=gen)]
    for t in (T.VALID, T.PARTICIPANTS_SELECTED, T.AGGREGATOR_READY, T.ASSIGNMENTS_DISPATCHED, T.QUORUM_HEALTHY,
              T.COMPLETE):
        cond = c.find(conds, t.value)
        if cond is None and t is T.COMPLETE:
            break
        if cond is None:
            return [c.make(T.READY, False, c.Reason.NOT_STARTED, f"waiting for {t.value}", generation=gen)]
        if cond.status.value != "True":
            return [c.make(T.READY, False, cond.reason, cond.message, generation=gen)]
    return [c.make(T.READY, False, c.Reason.TRAINING, "training", generation=gen)]


#: what to do about an S3 upload failure that cannot fix itself (ObjectStoreError.reason → hint)
_UPLOAD_FIX = {
    "AccessDenied": "fix the credentials in the Secret named in artifactStore.s3.credentialsSecret (keys "
                    "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, with read and write on the bucket), then restart "
                    "the hub (it reads them at start)",
    "BucketNotFound": "create the bucket, or fix the bucket in artifactStore.s3.url",
    "LocalFileError": "check the hub's artifact store volume (the result folder on the PVC)",
    "": "fix artifactStore.s3 (url, endpoint, region) as the error says, then restart the hub",
}


class Reconciler:
    def __init__(self, kube: Kube, cfg: RoundConfig, asked: dict[str, float] | None = None):
        self.kube, self.cfg = kube, cfg
        #: When the hub last asked each SuperLink about its run (monotonic); shared across passes.
        self._asked = asked if asked is not None else {}

    async def _run_info(self, body: dict[str, Any], control: str, run_id: str, folder: Any) -> RunInfo:
        """The run's state: asked of the SuperLink (one ListRuns request) when the ServerApp's
        provenance says the run ended, and otherwise at most every ``FLWR_CHECK_INTERVAL`` (a
        run that dies without writing provenance is still noticed)."""
        key = self.key(body)
        st = body.get("status") or {}
        written = progress.provenance_status(folder)
        now = time.monotonic()
        last = self._asked.get(key)
        if written in ("completed", "failed") or last is None or now - last >= FLWR_CHECK_INTERVAL:
            info = await self.cfg.flower.run(key, control, run_id, insecure=self.cfg.aggregator.insecure)
            self._asked[key] = now
            return info
        return RunInfo(run_id, st.get("runStatus") or "running")

    # -- writing -----------------------------------------------------------------------------
    async def write(self, body: dict[str, Any], updates: list[Condition], **fields: Any) -> dict[str, Any] | None:
        return await write_status(self.kube, ref_of(body), owned_types=HUB_TYPES, updates=updates, fields=fields,
                                  derive_conditions=derive_ready, derive=derive_phase)

    def cond(self, body: dict[str, Any], t: T, ok: bool, reason: c.Reason, message: str) -> Condition:
        return c.make(t, ok, reason, message, generation=body["metadata"].get("generation"))

    async def fail(self, body: dict[str, Any], reason: c.Reason, message: str, *, stop_run: bool = True) -> None:
        """``stop_run`` False: the SuperLink no longer knows the run (nothing to stop). A run
        whose recorded status says it ended (``finished:…``) is never stopped either: Flower
        refuses it ("Run is already finished"), and after an S3 upload's deadline the SuperLink
        is already gone."""
        log.warning("Round %s failed: %s: %s", body["metadata"]["name"], reason.value, message)
        st = body.get("status") or {}
        run_id = st.get("runId")
        control = (st.get("aggregator") or {}).get("controlAddress")
        ended = str(st.get("runStatus") or "").startswith("finished:")
        if run_id and control and stop_run and not ended:
            await self._stop_run(body, control, run_id)
        await self.write(body, [self.cond(body, T.FAILED, True, reason, message),
                                self.cond(body, T.COMPLETE, False, reason, message)],
                         completionTime=_iso(_now()))
        await self.cleanup(body)

    async def _trust(self, body: dict[str, Any]) -> None:
        """The round's CA for the flwr CLI (a restarted hub may call before run_aggregator)."""
        if not self.cfg.aggregator.insecure and self.cfg.tls is not None:
            self.cfg.flower.trust(self.key(body), await self.cfg.tls.ca_pem())

    async def _stop_run(self, body: dict[str, Any], control: str, run_id: str) -> None:
        try:
            await self._trust(body)
            await self.cfg.flower.stop(self.key(body), control, run_id, insecure=self.cfg.aggregator.insecure)
        except (FlowerError, VaultError) as err:   # the SuperLink is deleted next: the run cannot outlive it
            log.info("Could not stop Flower run %s (%s); deleting its SuperLink", run_id, err)

    def key(self, body: dict[str, Any]) -> str:
        md = body["metadata"]
        return f"{md['namespace']}.{md['name']}.{md['uid'][:8]}"

    # -- cleanup -----------------------------------------------------------------------------
    async def assignments(self, body: dict[str, Any]) -> list[dict[str, Any]]:
        uid = body["metadata"]["uid"]
        return await self.kube.list(Ref(r.API_VERSION, r.ROUND_ASSIGNMENTS.plural),
                                    label_selector=f"{ROUND_UID_LABEL}={uid}")

    async def cleanup(self, body: dict[str, Any]) -> list[str]:
        """Delete the SuperLink and every assignment of the round (the agents then delete their pods)."""
        gone = await agg.delete_aggregator(self.kube, body)
        for ra in await self.assignments(body):
            md = ra["metadata"]
            if await self.kube.delete(Ref(r.API_VERSION, r.ROUND_ASSIGNMENTS.plural, md["namespace"], md["name"])):
                gone.append(f"roundassignments/{md['namespace']}/{md['name']}")
        self.cfg.flower.forget(self.key(body))
        if self.cfg.tls is not None:
            self.cfg.tls.registered.pop(self.key(body), None)
        if gone:
            log.info("Round %s: cleaned up %s", body["metadata"]["name"], ", ".join(gone))
        return gone

    async def finalize(self, body: dict[str, Any]) -> None:
        st = body.get("status") or {}
        control = (st.get("aggregator") or {}).get("controlAddress")
        if st.get("runId") and control and st.get("phase") not in TERMINAL:
            await self._stop_run(body, control, st["runId"])
        await self.cleanup(body)

    # -- the pass ------------------------------------------------------------------------------
    async def reconcile(self, body: dict[str, Any], stopped: Callable[[], bool] | None = None) -> None:
        """One pass. ``stopped``: kopf's flag for this round's timer (set when the round is being
        deleted or the hub stops); a pass that waits for the SuperLink gives up when it is set."""
        if body["metadata"].get("deletionTimestamp"):
            return          # the finalizer (finalize) owns a round being deleted
        try:
            spec = parse(KIND, body)
        except SpecError:
            return          # the admission handler reports it (Valid/Ready=False InvalidSpec)
        assert isinstance(spec, FederatedRoundSpec)
        st = body.get("status") or {}
        if st.get("phase") in TERMINAL:
            await self.finished(body, spec)
            return
        if spec.suspend:
            await self.suspend(body)
            return
        now = _now()
        if st.get("suspended") or not st.get("startTime"):
            body = await self.start(body, spec, resumed=bool(st.get("suspended")))
            if body is None:
                return
            st = body["status"]
        deadline = _time(st.get("deadline"))
        if deadline is not None and now >= deadline:
            waiting = (c.find(c.parse(st.get("conditions")), T.READY.value) or None)
            await self.fail(body, c.Reason.DEADLINE_EXCEEDED,
                            f"activeDeadlineSeconds ({spec.active_deadline_seconds}s) passed"
                            + (f" while {waiting.message}" if waiting and waiting.message else ""))
            return
        if st.get("runStatus") == "finished:completed" and self.cfg.s3 is not None:
            await self.follow(body, spec)   # only its S3 upload is pending: no SuperLink or pods again
            return
        if not st.get("participants"):
            problem = await self.initial_model_problem(body, spec)
            if problem:
                await self.fail(body, c.Reason.INVALID_SPEC, problem)
                return
            body = await self.select(body, spec)
            if body is None:
                return
        body = await self.run_aggregator(body, spec, stopped)
        if body is None:
            return
        body = await self.dispatch(body, spec)
        if body is None:
            return
        await self.follow(body, spec)

    async def start(self, body: dict[str, Any], spec: FederatedRoundSpec, *, resumed: bool) \
            -> dict[str, Any] | None:
        now = _now()
        st = body.get("status") or {}
        fields: dict[str, Any] = {
            "startTime": _iso(now), "deadline": _iso(now + dt.timedelta(seconds=spec.active_deadline_seconds)),
            "attempt": int(st.get("attempt") or 0) + 1, "suspended": False, "runId": "", "runStatus": "",
            "serverRounds": [], "currentRound": 0, "roundsCompleted": 0, "serverRound": f"0/{spec.rounds}",
            "runSubmitting": False}
        updates = []
        if resumed:
            # The suspended attempt's run cannot resume (shared/FLOWER.md §4): start afresh, same sites.
            fields["participants"] = [{**p, "state": "Selected", "reason": "", "lastRound": 0}
                                      for p in st.get("participants") or []]
            updates = [self.cond(body, t, False, c.Reason.NOT_STARTED, "resumed; starting again")
                       for t in (T.AGGREGATOR_READY, T.ASSIGNMENTS_DISPATCHED, T.QUORUM_HEALTHY)]
            log.info("Round %s resumed: attempt %d", body["metadata"]["name"], fields["attempt"])
        return await self.write(body, updates, **fields)

    async def suspend(self, body: dict[str, Any]) -> None:
        st = body.get("status") or {}
        if st.get("suspended") and not st.get("runId"):
            return
        control = (st.get("aggregator") or {}).get("controlAddress")
        if st.get("runId") and control:
            await self._stop_run(body, control, st["runId"])
        await self.cleanup(body)
        message = "spec.suspend is true: SuperLink and training pods stopped; set it to false to start again"
        await self.write(body, [self.cond(body, t, False, c.Reason.SUSPENDED, message)
                                for t in (T.AGGREGATOR_READY, T.ASSIGNMENTS_DISPATCHED)],
                         suspended=True, runId="", runStatus="", aggregator=None)

    async def initial_model_problem(self, body: dict[str, Any], spec: FederatedRoundSpec) -> str:
        return (await initial_model.resolve(self.kube, body, spec, self.cfg.aggregator,
                                            s3=self.cfg.s3)).problem

    async def select(self, body: dict[str, Any], spec: FederatedRoundSpec) -> dict[str, Any] | None:
        nodes = await self.kube.list(Ref(r.API_VERSION, r.HOSPITAL_NODES.plural))
        eligible, verdicts = eligible_sites(nodes, spec.participants.selector, spec.training.gpus_per_site,
                                            spec.training.gpu_product)
        need = spec.participants.min_available
        if len(eligible) < need:
            excluded = [f"{v.site}: {v.reason}" for v in verdicts if not v.eligible]
            matched = len(verdicts)
            message = (f"{len(eligible)} of {need} required sites eligible"
                       + (f" ({', '.join(eligible)})" if eligible else "")
                       + (f"; excluded: {'; '.join(excluded)}" if excluded else "")
                       + ("" if matched else "; the selector matches no HospitalNode: check "
                                             "spec.participants.selector against the sites' labels")
                       + ". Waiting until activeDeadlineSeconds.")
            await self.write(body, [self.cond(body, T.PARTICIPANTS_SELECTED, False, c.Reason.QUORUM_NOT_MET,
                                              message[:4000])], eligibleSites=len(eligible))
            return None
        chosen = eligible[:spec.participants.max_participants or len(eligible)]
        attempt = int((body.get("status") or {}).get("attempt") or 1)
        participants = [{"node": s, "assignment": assignment_name(body, attempt), "state": "Selected",
                         "reason": "selected", "lastRound": 0} for s in chosen]
        log.info("Round %s: selected %s", body["metadata"]["name"], ", ".join(chosen))
        return await self.write(body, [self.cond(body, T.PARTICIPANTS_SELECTED, True, c.Reason.SELECTED,
                                                 f"{len(chosen)} sites selected: {', '.join(chosen)}")],
                                participants=participants, selectedSites=len(chosen), eligibleSites=len(eligible),
                                sitesReady=f"0/{len(chosen)}")

    async def run_aggregator(self, body: dict[str, Any], spec: FederatedRoundSpec,
                             stopped: Callable[[], bool] | None = None) -> dict[str, Any] | None:
        tls = self.cfg.tls
        if not self.cfg.aggregator.insecure and tls is None:
            # TLS and SuperNode authentication material come from Vault: without it, only the
            # explicit development flag runs Flower at all.
            await self.fail(body, c.Reason.AGGREGATOR_FAILED,
                            "this hub has no Vault (FEDCARE_VAULT_ADDR, secrets.backend=vault) to issue the "
                            "SuperLink's TLS certificate and read the sites' SuperNode keys from; for development "
                            "only, start the hub with --insecure-flower (plaintext Flower, no SuperNode "
                            "authentication)")
            return None
        try:
            state = await agg.ensure_aggregator(self.kube, body, spec, self.cfg.aggregator,
                                                None if self.cfg.aggregator.insecure else tls,
                                                health_wait=self._health_wait(body), stop=stopped)
            if state.ready and not self.cfg.aggregator.insecure:
                state = await self.register_supernodes(body, state)
        except VaultError as err:
            # Vault down or sealed: the deadline bounds the wait; the next pass tries again.
            message = f"Vault: {err}"
            log.warning("Round %s: %s", body["metadata"]["name"], message)
            await self.write(body, [self.cond(body, T.AGGREGATOR_READY, False, c.Reason.AGGREGATOR_STARTING,
                                              message[:1000])])
            return None
        info = {"pod": state.pod, "service": state.service, "address": state.address,
                "controlAddress": state.control_address}
        if state.failed:
            await self.write(body, [self.cond(body, T.AGGREGATOR_READY, False, c.Reason.AGGREGATOR_FAILED,
                                              state.message)], aggregator=info)
            await self.fail(body, c.Reason.AGGREGATOR_FAILED, state.message)
            return None
        st = body.get("status") or {}
        if not state.ready:
            if st.get("runId"):     # the SuperLink restarts: its in-flight run is lost (FLOWER.md §4)
                await self.write(body, [self.cond(body, T.AGGREGATOR_READY, False, c.Reason.AGGREGATOR_STARTING,
                                                  state.message)], aggregator=info)
                return None
            await self.write(body, [self.cond(body, T.AGGREGATOR_READY, False, c.Reason.AGGREGATOR_STARTING,
                                              state.message)], aggregator=info)
            return None
        return await self.write(body, [self.cond(body, T.AGGREGATOR_READY, True, c.Reason.AGGREGATOR_RUNNING,
                                                 state.message)], aggregator=info)

    def _health_wait(self, body: dict[str, Any]) -> float:
        deadline = _time((body.get("status") or {}).get("deadline"))
        left = (deadline - _now()).total_seconds() if deadline is not None else HEALTH_WAIT
        return max(0.0, min(HEALTH_WAIT, left))

    async def register_supernodes(self, body: dict[str, Any], state: agg.AggregatorState) -> agg.AggregatorState:
        """Register every participant's SuperNode public key (from Vault) with the SuperLink
        before any assignment goes out; AggregatorReady waits for the keys a site has not
        published yet. Registrations belong to one SuperLink pod (its state): a new pod (uid)
        starts them afresh. Each key found is registered at once, so a late site costs the
        others no second read."""
        assert self.cfg.tls is not None
        key = self.key(body)
        sites = [p["node"] for p in (body.get("status") or {}).get("participants") or []]
        self.cfg.flower.trust(key, await self.cfg.tls.ca_pem())
        pod_uid, done = self.cfg.tls.registered.get(key, (state.pod_uid, {}))
        if pod_uid != state.pod_uid:
            done = {}               # another SuperLink pod: its state has none of them
        if set(done).issuperset(sites):
            return state            # every pass comes here: no Vault read, no Control API call once registered
        keys, missing = await self.cfg.tls.public_keys([s for s in sites if s not in done])
        shared = _shared_keys(keys, done)
        keys = {site: public for site, public in keys.items() if site not in shared}
        bound = asyncio.Semaphore(REGISTER_CONCURRENCY)

        async def register(site: str, public: str) -> None:
            async with bound:
                node = await self.cfg.flower.register(key, state.control_address, site, public)
            done[site] = public
            self.cfg.tls.registered[key] = (state.pod_uid, done)
            log.info("Round %s: registered the SuperNode key of %s%s", body["metadata"]["name"], site,
                     f" (node {node})" if node else " (already registered)")

        started = time.monotonic()
        try:
            results = await asyncio.gather(*(register(site, public) for site, public in keys.items()),
                                           return_exceptions=True)
            if keys:
                metrics.KEY_REGISTRATION_DURATION.observe(time.monotonic() - started)
        finally:        # the burst is over: no pooled connection may hold the SuperLink open
            await asyncio.get_running_loop().run_in_executor(None, flower_control.release, state.control_address)
        for result in results:
            if isinstance(result, BaseException) and not isinstance(result, FlowerError):
                raise result
        failed = {site: result for site, result in zip(keys, results) if isinstance(result, FlowerError)}
        failed |= shared
        waiting = ("waiting for the SuperNode public key of " + ", ".join(missing) + " in Vault "
                   "(sites/<site>/supernode-public; each site's agent creates its key pair at start)") \
            if missing else ""
        if failed:
            # The keys that did register stay in ``registered`` (not sent again); no assignment
            # goes out while one is missing. Public keys only: the message never carries key material.
            problems = [self._key_problem(site, err) for site, err in sorted(failed.items())]
            message = (f"{len(failed)} of {len(sites)} SuperNode keys not registered, so no assignment is "
                       f"dispatched yet: " + "; ".join(problems) + (f"; {waiting}" if waiting else ""))
            return dataclasses.replace(state, ready=False, message=message[:4000])
        if missing:
            return dataclasses.replace(state, ready=False, message=waiting)
        return state

    def _key_problem(self, site: str, err: FlowerError) -> str:
        """A registration failure and what to do about it (the round waits; its deadline bounds it)."""
        if not isinstance(err, KeyRefused):      # no answer (after the retries): the next pass tries again
            return f"{err} (trying again on the next pass)"
        assert self.cfg.tls is not None
        vault = self.cfg.tls.vault.settings
        return (f"{err}. This will not fix itself: publish the public half of site {site}'s SuperNode key pair "
                f"(OpenSSH, ecdsa-sha2-nistp256/384/521) at {vault.kv_mount}/sites/{site}/supernode-public in "
                f"Vault, or delete {vault.kv_mount}/sites/{site}/supernode and .../supernode-public and restart "
                f"the site's agent so that it makes a new pair; the hub reads the key again within "
                f"{vault.cache_ttl:g}s")

    def assignment_manifest(self, body: dict[str, Any], spec: FederatedRoundSpec, site: str,
                            name: str) -> dict[str, Any]:
        md, st = body["metadata"], body["status"]
        return {
            "apiVersion": r.API_VERSION, "kind": r.ROUND_ASSIGNMENTS.kind,
            "metadata": {"name": name, "namespace": r.site_namespace(site),
                         "labels": {ROUND_UID_LABEL: md["uid"], agg.ROUND_LABEL: md["name"][:63],
                                    r.SITE_LABEL: site, r.MANAGED_BY_LABEL: r.MANAGED_BY}},
            "spec": {"roundRef": {"namespace": md["namespace"], "name": md["name"], "uid": md["uid"]},
                     "nodeName": site, "attempt": int(st.get("attempt") or 1),
                     "superLink": {"address": st["aggregator"]["address"],
                                   "insecure": self.cfg.aggregator.insecure},
                     "training": spec.training.wire(),
                     "nodeConfig": {"site": site},
                     "deadline": st["deadline"]},
        }

    async def dispatch(self, body: dict[str, Any], spec: FederatedRoundSpec) -> dict[str, Any] | None:
        st = body["status"]
        existing = {ra["metadata"]["namespace"]: ra for ra in await self.assignments(body)}
        attempt = int(st.get("attempt") or 1)
        participants = [dict(p) for p in st.get("participants") or []]
        name = assignment_name(body, attempt)

        async def one(p: dict[str, Any]) -> int:
            ns = r.site_namespace(p["node"])
            ra = existing.get(ns)
            made = 0
            if ra is not None and (ra.get("spec") or {}).get("attempt") != attempt:
                await self.kube.delete(Ref(r.API_VERSION, r.ROUND_ASSIGNMENTS.plural, ns, ra["metadata"]["name"]))
                ra = None
            if ra is None:
                manifest = self.assignment_manifest(body, spec, p["node"], name)
                try:    # the list above says it is missing: create without ensure's extra GET
                    ra, made = await self.kube.create(Ref(r.API_VERSION, r.ROUND_ASSIGNMENTS.plural, ns), manifest), 1
                except Conflict:    # created meanwhile (a second pass, a restarted hub): converge
                    ra, made = await ensure(self.kube, r.ROUND_ASSIGNMENTS.plural, manifest)
            p["assignment"] = name
            self._merge_assignment(p, ra)
            return int(made)

        # Concurrently: one site's API round trips need not wait for another's.
        created = sum(await asyncio.gather(*(one(p) for p in participants)))
        if created:
            log.info("Round %s: dispatched %d assignment(s), attempt %d", body["metadata"]["name"], created, attempt)
        running = sum(p["state"] in ("Running", "Finished") for p in participants)
        alive = [p for p in participants if p["state"] not in ("Rejected", "Failed")]
        need = spec.participants.min_available
        fields = {"participants": participants, "sitesReady": f"{running}/{len(participants)}"}
        dispatched = self.cond(body, T.ASSIGNMENTS_DISPATCHED, True, c.Reason.DISPATCHED,
                               f"{len(participants)} assignments, attempt {attempt}")
        if len(alive) < need:
            lost = "; ".join(f"{p['node']}: {p['state']} ({p['reason']})" for p in participants
                             if p not in alive)
            message = f"{len(alive)} of {need} required sites can still take part; {lost}"
            await self.write(body, [dispatched, self.cond(body, T.QUORUM_HEALTHY, False, c.Reason.QUORUM_LOST,
                                                          message)], **fields)
            privacy = any(p["reason"].startswith(c.Reason.PRIVACY_BUDGET_EXHAUSTED.value) for p in participants
                          if p not in alive)
            await self.fail(body, c.Reason.PRIVACY_BUDGET_EXHAUSTED if privacy else c.Reason.QUORUM_LOST, message)
            return None
        healthy = self.cond(body, T.QUORUM_HEALTHY, True, c.Reason.RECONCILED,
                            f"{len(alive)} of {len(participants)} sites can take part ({need} required)")
        return await self.write(body, [dispatched, healthy], **fields)

    @staticmethod
    def _merge_assignment(p: dict[str, Any], ra: dict[str, Any]) -> None:
        ras = ra.get("status") or {}
        phase = ras.get("phase") or ""
        if ras.get("attempt") not in (None, (ra.get("spec") or {}).get("attempt")):
            phase = ""                      # an answer to an older attempt says nothing now
        state = {"Accepted": "Accepted", "Running": "Running", "Rejected": "Rejected", "Failed": "Failed",
                 "Succeeded": "Finished"}.get(phase)
        if state and p.get("state") != "Dropped":
            p["state"] = state
            p["reason"] = (ras.get("message") or phase)[:500]
            why = (c.raw_condition(ra, T.READY.value) or {}).get("reason") or ""
            if state in ("Rejected", "Failed") and why and not p["reason"].startswith(why):
                p["reason"] = f"{why}: {p['reason']}"[:500]     # the site's reason code, e.g. PrivacyBudgetExhausted
        p["restarts"] = int(ras.get("restarts") or 0)

    def run_config(self, body: dict[str, Any], spec: FederatedRoundSpec, folder: str) -> dict[str, Any]:
        st = body["status"]
        need = spec.participants.min_available
        remaining = max(60, int((_time(st["deadline"]) - _now()).total_seconds()))
        config: dict[str, Any] = {
            "num-server-rounds": spec.rounds, "strategy": spec.strategy.name.value.lower(),
            "fraction-train": float(spec.strategy.fraction_train),
            "fraction-evaluate": float(spec.strategy.fraction_evaluate),
            "min-train-nodes": spec.strategy.min_train_nodes or need, "min-available-nodes": need,
            "min-evaluate-nodes": spec.strategy.min_train_nodes or need,
            "round-timeout": float(spec.round_timeout_seconds), "node-wait-timeout": float(min(remaining, 3600)),
            "proximal-mu": float(spec.strategy.proximal_mu), "server-lr": float(spec.strategy.server_learning_rate),
            "model": ARCHITECTURES[spec.model.architecture], "image-size": spec.model.input_size,
            "classes": ",".join(spec.model.classes), "local-epochs": spec.training.epochs,
            "batch-size": spec.training.batch_size, "lr": float(spec.training.learning_rate), "out-dir": folder}
        dp = spec.privacy.differential_privacy
        if dp.enabled:
            config.update({"privacy.dp": True, "privacy.noise-multiplier": float(dp.noise_multiplier),
                           "privacy.max-grad-norm": float(dp.max_grad_norm), "privacy.delta": float(dp.delta),
                           "privacy.max-epsilon": float(dp.target_epsilon or 0)})
        for key, value in spec.strategy.config.items():
            if key not in RESERVED_KEYS:
                config[key] = _typed(value)
        return config

    async def identities(self, body: dict[str, Any]) -> str:
        """run-config ``site-identities``: each site's registered key (workloads/trust.py), so
        the ServerApp takes a reply's site from the authenticated SuperNode, not the reply."""
        assert self.cfg.tls is not None
        sites = [p["node"] for p in (body.get("status") or {}).get("participants") or []]
        registered = self.cfg.tls.registered.get(self.key(body), ("", {}))[1]
        keys = {site: registered[site] for site in sites if site in registered}
        if len(keys) < len(sites):     # a restarted hub: the keys the SuperLink has (registered again)
            more, missing = await self.cfg.tls.public_keys([s for s in sites if s not in keys])
            if missing:
                raise FlowerError("no SuperNode public key in Vault for " + ", ".join(missing))
            keys |= more
        return site_identities(keys)

    async def follow(self, body: dict[str, Any], spec: FederatedRoundSpec) -> None:
        st = body["status"]
        md = body["metadata"]
        control = st["aggregator"]["controlAddress"]
        insecure = self.cfg.aggregator.insecure
        folder = progress.out_dir(self.cfg.aggregator.artifact_dir, md["namespace"], md["name"], md["uid"],
                                  int(st.get("attempt") or 1))
        run_id = st.get("runId") or ""
        try:
            if not run_id:
                runs = []
                if st.get("runSubmitting"):   # a submission may have happened before a restart
                    runs = await self.cfg.flower.runs(self.key(body), control, insecure=insecure)
                if runs:             # adopt it, never submit twice
                    run_id = sorted(runs, key=lambda x: x.run_id)[-1].run_id
                    log.info("Round %s: adopted Flower run %s", md["name"], run_id)
                else:
                    config = self.run_config(body, spec, str(folder))
                    if not insecure:
                        config["site-identities"] = await self.identities(body)
                    body = await self.write(body, [], runSubmitting=True) or body
                    folder.mkdir(parents=True, exist_ok=True)
                    start = await initial_model.resolve(self.kube, body, spec, self.cfg.aggregator,
                                                        s3=self.cfg.s3)
                    if start.problem:       # the release went away (or was revoked) since selection
                        await self.fail(body, c.Reason.INVALID_SPEC, start.problem)
                        return
                    config.update(await run_trust.trust_config(
                        self.kube, spec, [p["node"] for p in st.get("participants") or []], md["name"]))
                    config.update(start.run_config)
                    run_id = await self.cfg.flower.submit(self.key(body), control, self.cfg.app, config,
                                                          insecure=insecure)
                    log.info("Round %s: submitted Flower run %s", md["name"], run_id)
                body = await self.write(body, [], runId=run_id, runStatus="pending") or body
                # Just submitted (or adopted): the run is pending; the next check waits
                # FLWR_CHECK_INTERVAL (the run's own provenance says sooner when it ends).
                self._asked[self.key(body)] = time.monotonic()
                info = RunInfo(run_id, "pending")
            elif st.get("runStatus") == "finished:completed":
                info = RunInfo(run_id, "finished:completed")   # recorded (an S3 upload still to finish)
            else:
                info = await self._run_info(body, control, run_id, folder)
        except (FlowerError, VaultError) as err:
            message = f"the SuperLink's Control API at {control}: {err}"
            if isinstance(err, RunUnknown):     # no pass can bring the run back: say so now, not at the deadline
                lost = (f"Flower run {run_id} is lost: {message}. A run cannot move to another SuperLink "
                        "state, so the round fails now rather than at activeDeadlineSeconds; to train again, "
                        "create a new FederatedRound")
                await self.fail(body, c.Reason.AGGREGATOR_FAILED, lost[:1000], stop_run=False)
                return
            if "Invalid run configuration" in str(err):
                await self.fail(body, c.Reason.INVALID_SPEC, f"Flower refused the run configuration (check "
                                                             f"spec.strategy.config keys): {err}")
                return
            # Transient (a slow or restarting SuperLink): the next pass asks again; the deadline bounds it.
            log.warning("Round %s: %s", md["name"], message[:500])
            return
        names = [p["node"] for p in st.get("participants") or []]
        prog = progress.read_progress(folder, names)
        participants = [dict(p) for p in st.get("participants") or []]
        last = prog.rounds[-1] if prog.rounds else None
        for p in participants:
            p["lastRound"] = prog.last_round.get(p["node"], p.get("lastRound", 0))
            if p["node"] in prog.epsilon:
                p["epsilon"] = prog.epsilon[p["node"]]
            mine = next((s for s in (last or {}).get("sites", []) if s["site"] == p["node"]), None)
            if mine and mine["status"] == "dropped" and p["state"] == "Running":
                p["reason"] = f"dropped from server round {last['round']}: {mine['reason']}"
        current = min(spec.rounds, prog.completed + (0 if info.finished else 1))
        fields = {"runStatus": info.status, "serverRounds": prog.rounds, "roundsCompleted": prog.completed,
                  "currentRound": current, "serverRound": f"{prog.completed}/{spec.rounds}",
                  "participants": participants}
        if not info.finished:
            await self.write(body, [], **fields)
            return
        if info.status == "finished:completed":
            await self.complete(body, spec, folder, fields)
            return
        details = f"{info.details} {prog.error}".strip() or info.status
        reason = c.Reason.AGGREGATOR_FAILED
        if "PrivacyBudgetExhausted" in details or "privacy budget" in details.lower():
            reason = c.Reason.PRIVACY_BUDGET_EXHAUSTED
        elif "min-train-nodes" in details or "min-available-nodes" in details or "successful" in details:
            reason = c.Reason.QUORUM_LOST
        body = await self.write(body, [], **fields) or body     # runStatus finished:…: fail() sends no stop
        await self.fail(body, reason, f"Flower run {run_id} {info.status}: {details}"[:4000])

    async def complete(self, body: dict[str, Any], spec: FederatedRoundSpec, folder: Any,
                       fields: dict[str, Any]) -> None:
        s3, key = self.cfg.s3, self.upload_key(body)
        if s3 is not None and s3.wait_left(key) > 0:
            return          # an S3 upload waits for its next try: nothing to hash or ask before then
        result = s3.verified.get(key) if s3 is not None else None
        if result is None:
            try:            # hashes the model: off the event loop
                result = await asyncio.to_thread(progress.read_result, folder, self.cfg.aggregator.artifact_claim,
                                                 self.cfg.aggregator.artifact_dir)
            except progress.ArtifactError as err:
                body = await self.write(body, [], **fields) or body
                await self.fail(body, c.Reason.AGGREGATOR_FAILED, str(err))
                return
        if s3 is not None:
            s3.verified[key] = result
            stored = await self.upload(body, folder, result, fields)
            if stored is None:
                # The run is over and its model verified on the PVC: the SuperLink and the sites'
                # training pods go now, as on success; only the upload stays pending.
                await self.cleanup(body)
                return
            result = stored
        release_name = ""
        if spec.release.create:
            release_name = await self.release(body, spec, result, fields)
        for p in fields["participants"]:
            if p["state"] in ("Running", "Accepted") and not p.get("lastRound"):
                # in the run, but no server round took its update (e.g. its ledger refused: PrivacyBudgetExhausted)
                why = [s["reason"] for rnd in fields["serverRounds"] for s in rnd["sites"]
                       if s["site"] == p["node"] and s.get("reason")]
                p["state"], p["reason"] = "Dropped", (why[-1] if why else "contributed to no server round")[:500]
            elif p["state"] in ("Running", "Accepted"):
                p["state"], p["reason"] = "Finished", "the run completed"
        message = f"{spec.rounds} server rounds aggregated; model {result.digest}"
        await self.write(body, [self.cond(body, T.COMPLETE, True, c.Reason.RUN_SUCCEEDED, message),
                                self.cond(body, T.FAILED, False, c.Reason.RUN_SUCCEEDED, message)],
                         **fields, completionTime=_iso(_now()),
                         result={"storageUri": result.storage_uri, "digest": result.digest,
                                 "provenanceDigest": result.provenance_digest, "modelReleaseRef": release_name})
        log.info("Round %s succeeded: %s", body["metadata"]["name"], message)
        await self.cleanup(body)

    def upload_key(self, body: dict[str, Any]) -> str:
        """The S3 store's key of a round's upload (backoff, verified result): per attempt."""
        return f"{self.key(body)}.a{int((body.get('status') or {}).get('attempt') or 1)}"

    async def upload(self, body: dict[str, Any], folder: Any, result: progress.Result,
                     fields: dict[str, Any]) -> progress.Result | None:
        """The result copied to the S3 store (hub/artifact_upload.py); None while it cannot be:
        the round stays Running with Complete=False/ArtifactUploadFailed and tries again later."""
        s3 = self.cfg.s3
        assert s3 is not None
        key = self.upload_key(body)
        relative = folder.relative_to(self.cfg.aggregator.artifact_dir).as_posix()
        deadline = _time((body.get("status") or {}).get("deadline"))
        budget = (deadline - _now()).total_seconds() if deadline is not None else None
        try:
            stored, sent = await s3.publish(folder, relative, result, key, budget)
        except (ObjectStoreError, OSError) as err:
            transient = isinstance(err, ObjectStoreError) and err.transient
            delay = s3.failed(key, transient)
            why = str(err) if isinstance(err, ObjectStoreError) else f"reading the result folder: {err}"
            reason = err.reason if isinstance(err, ObjectStoreError) else "LocalFileError"
            todo = (f"Trying again in {delay:g}s" if transient else
                    "This will not fix itself: " + _UPLOAD_FIX.get(reason, _UPLOAD_FIX[""])
                    + f". Trying again in {delay:g}s")
            message = (f"the run succeeded and its model {result.digest} is in {result.storage_uri} (its SuperLink "
                       f"and training pods are stopped), but copying it to the S3 artifact store {s3.url} failed: "
                       f"{why}. {todo}; the round fails at activeDeadlineSeconds if it never succeeds")[:4000]
            log.warning("Round %s: %s", body["metadata"]["name"], message)
            await self.write(body, [self.cond(body, T.COMPLETE, False, c.Reason.ARTIFACT_UPLOAD_FAILED, message)],
                             **fields)
            return None
        log.info("Round %s: result in %s (%d object(s) uploaded now)", body["metadata"]["name"],
                 stored.storage_uri, sent)
        return stored

    async def release(self, body: dict[str, Any], spec: FederatedRoundSpec, result: progress.Result,
                      fields: dict[str, Any]) -> str:
        md = body["metadata"]
        name = agg.short_name(md["name"], "model", 253)
        eps = [float(p["epsilon"]) for p in fields["participants"] if p.get("epsilon")]
        provenance: dict[str, Any] = {"federatedRoundRef": {"namespace": md["namespace"], "name": md["name"],
                                                            "uid": md["uid"]},
                                      "rounds": spec.rounds,
                                      "participants": sorted({s["site"] for rnd in fields["serverRounds"]
                                                              for s in rnd["sites"] if s["status"] == "ok"})}
        if eps:
            provenance["epsilon"] = f"{max(eps):.6g}"
        manifest = {"apiVersion": r.API_VERSION, "kind": r.MODEL_RELEASES.kind,
                    "metadata": {"name": name, "namespace": md["namespace"],
                                 "labels": {agg.ROUND_LABEL: md["name"][:63], r.MANAGED_BY_LABEL: r.MANAGED_BY},
                                 "ownerReferences": [{**agg.owner(body), "controller": False}]},
                    "spec": {"modelName": spec.release.model_name or md["name"][:63],
                             "version": f"0.0.0-{md['uid'][:8]}-a{int(body['status'].get('attempt') or 1)}",
                             "artifact": {"storageUri": result.storage_uri, "digest": result.digest},
                             "format": {"name": "safetensors"}, "provenance": provenance}}
        await ensure(self.kube, r.MODEL_RELEASES.plural, manifest)
        return name

    async def finished(self, body: dict[str, Any], spec: FederatedRoundSpec) -> None:
        """A finished round: make sure nothing of it still runs; delete it once its TTL passed."""
        st = body.get("status") or {}
        if not st.get("cleanedUp"):
            await self.cleanup(body)
            await self.write(body, [], cleanedUp=True)
        ttl = spec.ttl_seconds_after_finished
        done = _time(st.get("completionTime"))
        if ttl is not None and done is not None and _now() >= done + dt.timedelta(seconds=ttl):
            log.info("Round %s: ttlSecondsAfterFinished (%ds) passed; deleting it", body["metadata"]["name"], ttl)
            await self.kube.delete(ref_of(body))


def _shared_keys(keys: dict[str, str], registered: dict[str, str]) -> dict[str, KeyRefused]:
    """Sites in ``keys`` whose public key another participant published too (or registered
    already). The SuperLink would answer "already in use" (which a restarted hub's own
    re-registration also gets, so it counts as success there) and the ServerApp would then
    refuse the run's site-identities; none of them is registered, so the round waits saying
    which sites share a key."""
    def blob(public: str) -> str:        # the key itself: type and base64, without the comment
        return " ".join(public.split()[:2])

    owners: dict[str, list[str]] = {}
    for site, public in (registered | keys).items():
        owners.setdefault(blob(public), []).append(site)
    out = {}
    for site, public in keys.items():
        others = sorted(s for s in owners[blob(public)] if s != site)
        if others:
            who = ("site " if len(others) == 1 else "sites ") + ", ".join(others)
            out[site] = KeyRefused(f"registering the SuperNode key of {site}: {who} published the same public "
                                   "key; each site needs its own key pair")
    return out


def needs_pass(body: dict[str, Any], spec: Any = None, **_: Any) -> bool:
    """kopf timer filter: a finished, cleaned-up round without a TTL needs nothing more."""
    st = body.get("status") or {}
    if st.get("phase") == RoundPhase.INVALID.value:
        return False
    if st.get("phase") in TERMINAL and st.get("cleanedUp"):
        return (body.get("spec") or {}).get("ttlSecondsAfterFinished") is not None
    return True


def _typed(value: str) -> Any:
    """A run-config value from a string: flwr does not convert types (FLOWER.md §3)."""
    low = value.strip().lower()
    if low in ("true", "false"):
        return low == "true"
    for conv in (int, float):
        try:
            return conv(value)
        except ValueError:
            pass
    return value
