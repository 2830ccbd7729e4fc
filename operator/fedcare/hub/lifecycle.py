"""Events and metrics of round and release execution, derived from status transitions.

The round scheduler and the release pipeline write everything a user cares about to
``status`` (phase, conditions, ``serverRounds``, ``stageHistory``, the chain records). This
module reads each FederatedRound / ModelRelease as the hub's watch delivers it, turns its
status into a set of *facts* ("attempt 1 started", "site lyon dropped from server round 2",
"anchored by tx 0x…"), and for each fact not seen before posts one Event and updates the
metrics. The controllers need no hook: one call per watch event, from ``hub/handlers.py``.

Once per transition:
- within one hub process, a fact is acted on the first time it appears (a watch event that
  repeats a status changes nothing; kopf squashing two quick writes loses no fact, because
  facts are read from the status that persists, not from the step that wrote it);
- across hub restarts, the Event has a deterministic name (object uid + fact, hashed): the
  restarted hub sees the same status, posts under the same name, and the API server answers
  409 (counted as ``fedcare_events_total{result="duplicate"}``). Facts older than
  ``EVENT_TTL`` (the API server's default Event TTL, 1 h) are not posted on first sight, so a
  restart an hour later does not repeat history whose Events have expired;
- metrics are observed only for transitions this process saw happen (an object's first sight
  records its facts without observing), so a restart does not count old rounds again.

Event text is built from object names, fixed words, numbers and the condition reason/message
the controllers already wrote to status (which the same no-secret rule covers); never a spec
value, a token or patient data.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import pathlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .. import events, metrics
from ..integrations.kube import Kube
from . import round_progress

log = logging.getLogger(__name__)

#: kube-apiserver's default --event-ttl: an Event older than this is gone anyway.
EVENT_TTL = 3600.0
MAX_DETAIL = 400


@dataclass(frozen=True)
class Fact:
    key: str                       # unique per object: the Event name is derived from it
    type: str                      # Normal | Warning
    reason: str                    # past-tense CamelCase
    message: str
    time: dt.datetime | None = None  # when it happened, if the status says (for the first-sight TTL rule)


def _time(value: Any) -> dt.datetime | None:
    if not value:
        return None
    try:
        return dt.datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return None


def _conds(status: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c.get("type"): c for c in status.get("conditions") or [] if isinstance(c, dict)}


def _true(conds: dict[str, dict[str, Any]], ctype: str) -> dict[str, Any] | None:
    cond = conds.get(ctype)
    return cond if cond and cond.get("status") == "True" else None


def _detail(text: Any) -> str:
    text = " ".join(str(text or "").split())
    return text if len(text) <= MAX_DETAIL else text[:MAX_DETAIL - 1] + "…"


# -- rounds ----------------------------------------------------------------------------------------
def round_facts(body: dict[str, Any]) -> list[Fact]:
    md, st = body.get("metadata") or {}, body.get("status") or {}
    name = md.get("name", "")
    attempt = int(st.get("attempt") or 0)
    conds = _conds(st)
    facts: list[Fact] = []
    if attempt and st.get("runId"):
        sites = sorted(p.get("node", "") for p in st.get("participants") or [])
        total = str(st.get("serverRound") or "").partition("/")[2] or "?"
        facts.append(Fact(f"started/{attempt}", events.NORMAL, "RoundStarted",
                          f"Round {name} started training (attempt {attempt}): {len(sites)} site(s) "
                          f"({', '.join(sites)}), {total} server round(s)", _time(st.get("startTime"))))
    for rnd in st.get("serverRounds") or []:
        for site in rnd.get("sites") or []:
            if site.get("status") == "dropped":
                facts.append(Fact(f"dropped/{attempt}/{rnd.get('round')}/{site.get('site')}", events.WARNING,
                                  "StragglerDropped",
                                  f"Site {site.get('site')} was dropped from server round {rnd.get('round')} of "
                                  f"round {name} (attempt {attempt}): no reply within the round timeout",
                                  _time(st.get("completionTime")) or _time(st.get("startTime"))))
    done = _time(st.get("completionTime"))
    complete, failed = _true(conds, "Complete"), _true(conds, "Failed")
    if st.get("phase") == "Succeeded" and complete:
        release = (st.get("result") or {}).get("modelReleaseRef")
        facts.append(Fact(f"succeeded/{attempt}", events.NORMAL, "RoundSucceeded",
                          f"Round {name} succeeded (attempt {attempt}): {_detail(complete.get('message'))}"
                          + (f"; ModelRelease {release} created" if release else ""),
                          done or _time(complete.get("lastTransitionTime"))))
    elif st.get("phase") == "Failed" and failed:
        facts.append(Fact(f"failed/{attempt}", events.WARNING, "RoundFailed",
                          f"Round {name} failed (attempt {attempt}), {failed.get('reason')}: "
                          f"{_detail(failed.get('message'))}", done or _time(failed.get("lastTransitionTime"))))
    return facts


# -- releases --------------------------------------------------------------------------------------
def release_facts(body: dict[str, Any]) -> list[Fact]:
    md, st = body.get("metadata") or {}, body.get("status") or {}
    name = md.get("name", "")
    conds = _conds(st)
    facts: list[Fact] = []
    # Verified=False with phase Failed: a check that will not pass by waiting (the release is refused).
    if (c := _true(conds, "Verified")) is not None:
        facts.append(Fact(f"verified/{st.get('verifiedDigest', '')}", events.NORMAL, "ReleaseVerified",
                          f"ModelRelease {name} verified: {_detail(c.get('message'))}",
                          _time(c.get("lastTransitionTime"))))
    elif st.get("phase") == "Failed" and (c := conds.get("Verified")) is not None:
        facts.append(Fact(f"refused/{md.get('generation')}/{c.get('reason')}", events.WARNING, "ReleaseRefused",
                          f"ModelRelease {name} refused, {c.get('reason')}: {_detail(c.get('message'))}",
                          _time(c.get("lastTransitionTime"))))
    if (c := _true(conds, "Signed")) is not None:
        key_id = (st.get("signature") or {}).get("keyId", "")
        facts.append(Fact(f"signed/{key_id}", events.NORMAL, "ReleaseSigned",
                          f"ModelRelease {name} signed: {_detail(c.get('message'))}",
                          _time(c.get("lastTransitionTime"))))
    anchor = st.get("anchor") or {}
    if (c := _true(conds, "Anchored")) is not None and anchor.get("txHash"):
        facts.append(Fact(f"anchored/{anchor['txHash']}", events.NORMAL, "ReleaseAnchored",
                          f"ModelRelease {name} anchored: {_detail(c.get('message'))}",
                          _time(anchor.get("anchoredTime")) or _time(c.get("lastTransitionTime"))))
    if (c := _true(conds, "Revoked")) is not None:
        facts.append(Fact("revoked", events.WARNING, "ReleaseRevoked",
                          f"ModelRelease {name} revoked: {_detail(c.get('message'))}",
                          _time((st.get("revocation") or {}).get("revokedTime")) or
                          _time(c.get("lastTransitionTime"))))
    for i, entry in enumerate(st.get("stageHistory") or []):
        if i == 0:
            continue                  # the first entry is the release becoming a Candidate (Verified says it)
        stage, why = entry.get("stage", ""), entry.get("reason", "")
        reason = "ReleaseArchived" if stage == "Archived" else "ReleasePromoted"
        verb = "archived" if stage == "Archived" else f"promoted to {stage}"
        facts.append(Fact(f"stage/{i}/{stage}", events.NORMAL, reason,
                          f"ModelRelease {name} {verb} ({_detail(why)})", _time(entry.get("time"))))
    promoted = conds.get("Promoted") or {}
    if promoted.get("status") == "False" and promoted.get("reason") in ("StageCannotGoBack", "ArchivedIsFinal"):
        facts.append(Fact(f"promotion-refused/{md.get('generation')}/{promoted.get('reason')}", events.WARNING,
                          "PromotionRefused", f"ModelRelease {name}: promotion refused, {promoted.get('reason')}: "
                                              f"{_detail(promoted.get('message'))}",
                          _time(promoted.get("lastTransitionTime"))))
    return facts


# -- the observer ----------------------------------------------------------------------------------
@dataclass
class _Seen:
    facts: set[str] = field(default_factory=set)      # transitions seen (metrics observed once)
    posted: set[str] = field(default_factory=set)     # Events the API server has (or that need none)
    #: live marks (monotonic seconds) for durations the status does not carry
    pending_tx: tuple[str, float] | None = None


class Lifecycle:
    """Fed by the hub's round and release watch handlers (``round_seen``/``release_seen``)."""

    def __init__(self, kube: Callable[[], Kube], artifact_dir: Callable[[], str | None] = lambda: None,
                 clock: Callable[[], float] = time.monotonic):
        self.kube, self.artifact_dir, self.clock = kube, artifact_dir, clock
        self._seen: dict[str, _Seen] = {}

    async def round_seen(self, body: dict[str, Any], event_type: str | None) -> None:
        await self._observe(body, event_type, round_facts(body), self._round_metrics)

    async def release_seen(self, body: dict[str, Any], event_type: str | None) -> None:
        await self._observe(body, event_type, release_facts(body), self._release_metrics)

    async def _observe(self, body: dict[str, Any], event_type: str | None, facts: list[Fact],
                       observe: Callable[[dict[str, Any], _Seen, Fact | None, bool], None]) -> None:
        uid = (body.get("metadata") or {}).get("uid") or ""
        if event_type == "DELETED":
            self._seen.pop(uid, None)
            return
        first = uid not in self._seen
        seen = self._seen.setdefault(uid, _Seen())
        observe(body, seen, None, first)
        now = dt.datetime.now(dt.UTC)
        for fact in facts:
            if fact.key not in seen.facts:
                seen.facts.add(fact.key)
                if not first:
                    observe(body, seen, fact, False)
                if first and fact.time is not None and (now - fact.time).total_seconds() > EVENT_TTL:
                    seen.posted.add(fact.key)   # long past: its Event has expired, do not repeat history
            if fact.key in seen.posted:
                continue
            try:
                kube = self.kube()
            except RuntimeError:          # the hub is stopping: its successor posts it
                return
            # A failed post (API outage) is tried again at the object's next watch event.
            if await events.post(kube, body, fact.type, fact.reason, fact.message,
                                 name=events.once_name(body, fact.key)):
                seen.posted.add(fact.key)

    # -- metrics -----------------------------------------------------------------------------------
    def _round_metrics(self, body: dict[str, Any], seen: _Seen, fact: Fact | None, first: bool) -> None:
        st = body.get("status") or {}
        attempt = int(st.get("attempt") or 0)
        completed = int(st.get("roundsCompleted") or 0)
        # Server rounds aggregated, once each (facts of our own, posted as no Event).
        new = []
        for rnd in st.get("serverRounds") or []:
            n = int(rnd.get("round") or 0)
            key = f"server-round/{attempt}/{n}"
            if 0 < n <= completed and key not in seen.facts:
                seen.facts.add(key)
                if not first:
                    new.append(rnd)
        if new:
            timing = self._server_round_times(body)
            for rnd in new:
                metrics.ROUND_PARTICIPANTS.observe(sum(s.get("status") == "ok" for s in rnd.get("sites") or []))
                duration, aggregation = timing.get(int(rnd["round"]), (None, None))
                if duration is not None:
                    metrics.SERVER_ROUND_DURATION.observe(duration)
                if aggregation is not None:
                    metrics.AGGREGATION_DURATION.observe(aggregation)
        if fact is not None and fact.reason == "StragglerDropped":
            metrics.STRAGGLERS_DROPPED.inc()

    def _server_round_times(self, body: dict[str, Any]) -> dict[int, tuple[float | None, float | None]]:
        """Per server round (duration, aggregation) in seconds, as the ServerApp measured them
        (``provenance.json`` in the artifact store; the hub mounts it to read the result)."""
        root = self.artifact_dir()
        md, st = body["metadata"], body.get("status") or {}
        if not root:
            return {}
        folder = round_progress.out_dir(root, md["namespace"], md["name"], md["uid"], int(st.get("attempt") or 1))
        try:
            doc = json.loads((pathlib.Path(folder) / "provenance.json").read_text())
        except (OSError, ValueError):
            return {}
        out: dict[int, tuple[float | None, float | None]] = {}
        for entry in doc.get("rounds") or []:
            if not isinstance(entry, dict):
                continue
            duration = _seconds(entry.get("duration_seconds"))
            if duration is None:             # a ServerApp of an older version: second-resolution stamps
                start, end = _time(entry.get("started_at")), _time(entry.get("finished_at"))
                duration = (end - start).total_seconds() if start and end else None
            out[int(entry.get("round") or 0)] = (duration, _seconds(entry.get("aggregation_seconds")))
        return out

    def _release_metrics(self, body: dict[str, Any], seen: _Seen, fact: Fact | None, first: bool) -> None:
        if fact is None:
            pending = (body.get("status") or {}).get("anchor", {}) or {}
            tx = pending.get("pendingTx")
            if tx and not first and seen.pending_tx is None:
                seen.pending_tx = (tx, self.clock())     # the hub saw the (first) transaction sent
            return
        if fact.reason == "ReleaseAnchored" and seen.pending_tx is not None:
            metrics.ANCHORING_DURATION.observe(max(0.0, self.clock() - seen.pending_tx[1]))
            seen.pending_tx = None


def _seconds(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        return None
    return float(value)
