"""The ModelRelease pipeline: verify, sign, anchor exactly once, revoke, promote.

Resumable from ``status`` alone: every step records its result before the next starts, and a
step whose result is in status is not done again. The anchoring transaction's hash is written
to ``status.anchor.pendingTx`` *before* it is broadcast (the chain client's ``on_sent``), so a
hub killed at any point follows that hash after a restart instead of sending blindly.

Conditions (all written by the hub): Verified, Signed, Anchored, Revoked, Promoted, and
Ready = Verified ∧ Anchored ∧ ¬Revoked (what Argo CD / Flux health checks read).

Stages: ``spec.stage`` is the request, ``status.stage`` what is in effect. A request takes
effect only once Anchored; stages only move forward (Candidate → Staging → Production →
Archived; skipping is allowed, going back is refused); Archived is final. One Production per
modelName in a namespace: promoting one archives the previous (``supersededBy`` set). A
revoked release is archived. ``status.stageHistory`` is only ever appended to.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import kopf

from ..api import conditions as c
from ..api import resources as r
from ..api.base import Condition
from ..api.model_release import ModelReleaseSpec, ModelReleaseStatus, ReleasePhase, Stage
from ..api.validation import SpecError, parse
from ..integrations.chain_types import ChainError, ChainSettings, RpcPolicy
from ..integrations.keyref import KeyRef, parse_key_ref
from ..integrations.kube import Kube, Ref
from ..integrations.signing import ReleaseSigner, Signature, SignerUnavailable
from ..release import artifact as art
from ..release import manifest, merkle
from ..release.checks import Refused, VerifiedRelease, verify
from ..release.digest import ReleaseDigest
from ..status_writer import write_status

if TYPE_CHECKING:      # the client loads web3 (~50 MiB): only when a chain is used (client())
    from ..integrations.chain import ChainClient

log = logging.getLogger(__name__)

T = c.ConditionType
ORDER = {Stage.CANDIDATE: 0, Stage.STAGING: 1, Stage.PRODUCTION: 2, Stage.ARCHIVED: 3}


@dataclass
class ReleaseConfig:
    """The hub's chain and signing configuration (Helm values → environment, see charts/fedcare)."""

    #: None: the hub context signs with the Vault transit key ``signing_key`` when it has Vault.
    signer: ReleaseSigner | None = None
    signing_key: str = "fedcare-release"
    key_ref: KeyRef | None = None
    rpc_url: str = ""
    chain_id: int | None = None               # used when a release has no spec.anchor
    contract_address: str = ""
    confirmations: int = 2
    gas_cap: int = 2_000_000
    max_fee_per_gas_cap: int = 500 * 10**9
    rpc_policy: RpcPolicy = field(default_factory=RpcPolicy)
    fetch_policy: art.FetchPolicy = field(default_factory=art.FetchPolicy)
    receipt_timeout: float = 60.0
    poll_interval: float = 0.5
    retry_delay: float = 10.0                 # how soon a waiting step (round running, tx pending) is retried
    error_delay: float = 60.0                 # how soon a configuration/funding problem is retried
    batch_window: float = 0.0                 # > 0: concurrent releases share anchorBatch transactions
    #: pvc://<claim>/… artifacts: claim → the folder where the hub mounts it (the hub context adds
    #: the round artifact store, FEDCARE_ARTIFACT_CLAIM at FEDCARE_ARTIFACT_DIR).
    pvc_mounts: dict[str, str] = field(default_factory=dict)
    _clients: dict[tuple[int, str], ChainClient] = field(default_factory=dict, init=False, repr=False)
    _promotions: dict[str, asyncio.Lock] = field(default_factory=dict, init=False, repr=False)

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> ReleaseConfig:
        e = os.environ if env is None else env
        key = e.get("FEDCARE_CHAIN_KEY_REF", "")
        return cls(rpc_url=e.get("FEDCARE_CHAIN_RPC_URL", ""),
                   chain_id=int(e["FEDCARE_CHAIN_ID"]) if e.get("FEDCARE_CHAIN_ID") else None,
                   contract_address=e.get("FEDCARE_CHAIN_CONTRACT", ""),
                   confirmations=int(e.get("FEDCARE_CHAIN_CONFIRMATIONS", "2")),
                   gas_cap=int(e.get("FEDCARE_CHAIN_GAS_CAP", "2000000")),
                   batch_window=float(e.get("FEDCARE_CHAIN_BATCH_WINDOW", "0")),
                   key_ref=parse_key_ref(key) if key else None)

    def client(self, chain_id: int, contract: str) -> ChainClient:
        from ..integrations.chain import ChainClient

        k = (chain_id, contract.lower())
        if k not in self._clients:
            self._clients[k] = ChainClient(ChainSettings(
                self.rpc_url, chain_id, contract, confirmations=self.confirmations, gas_cap=self.gas_cap,
                max_fee_per_gas_cap=self.max_fee_per_gas_cap, receipt_timeout=self.receipt_timeout,
                poll_interval=self.poll_interval, policy=self.rpc_policy, batch_window=self.batch_window),
                self.key_ref)
        return self._clients[k]

    def promotion_lock(self, key: str) -> asyncio.Lock:
        return self._promotions.setdefault(key, asyncio.Lock())

    async def close(self) -> None:
        for client in self._clients.values():
            await client.close()
        self._clients.clear()


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(microsecond=0)


def _iso(t: dt.datetime) -> str:
    return t.isoformat().replace("+00:00", "Z")


def ready_and_phase(conds: list[Condition], status: dict[str, Any]) -> tuple[Condition, str]:
    def true(t: T) -> bool:
        found = c.find(conds, t.value)
        return found is not None and found.status.value == "True"

    verified, anchored, revoked = true(T.VERIFIED), true(T.ANCHORED), true(T.REVOKED)
    if revoked:
        ready = c.make(T.READY, False, "Revoked", "the release is revoked (the on-chain record stays)")
        phase = ReleasePhase.REVOKED
    elif verified and anchored:
        ready = c.make(T.READY, True, "Anchored", "verified and anchored on chain")
        phase = ReleasePhase.ANCHORED
    else:
        first = next((x for x in (c.find(conds, t.value) for t in (T.VERIFIED, T.SIGNED, T.ANCHORED))
                      if x is not None and x.status.value != "True"), None)
        reason = first.reason if first else "Pending"
        ready = c.make(T.READY, False, reason, first.message if first else "the release pipeline has not run yet")
        failed = first is not None and first.type == T.VERIFIED.value and reason not in (
            "RoundNotSucceeded", "RoundNotFound", "ArtifactUnreachable")
        phase = ReleasePhase.FAILED if failed else ReleasePhase.VERIFIED if verified else ReleasePhase.PENDING
    return ready, phase.value


class Release:
    """One reconcile of one ModelRelease; holds the status as last written."""

    def __init__(self, kube: Kube, cfg: ReleaseConfig, body: dict[str, Any], spec: ModelReleaseSpec) -> None:
        md = body["metadata"]
        self.kube, self.cfg, self.spec = kube, cfg, spec
        self.name, self.namespace = md["name"], md.get("namespace") or "default"
        self.gen = md.get("generation")
        self.ref = Ref(r.API_VERSION, r.MODEL_RELEASES.plural, self.namespace, self.name)
        self.raw: dict[str, Any] = dict(body.get("status") or {})
        self.status = ModelReleaseStatus.model_validate(self.raw)
        self.known: dict[str, Any] | None = body

    async def write(self, *updates: Condition, **fields: Any) -> None:
        fields = {k: v for k, v in fields.items()}
        fields.setdefault("observedGeneration", self.gen)
        upd = [u.model_copy(update={"observed_generation": self.gen}) for u in updates]

        def derive_conditions(conds: list[Condition]) -> list[Condition]:
            return [ready_and_phase(conds, {})[0].model_copy(update={"observed_generation": self.gen})]

        def derive(conds: list[Condition], status: dict[str, Any]) -> dict[str, Any]:
            return {"phase": ready_and_phase(conds, status)[1]}

        obj = await write_status(self.kube, self.ref, owned_types=c.owned("ModelRelease", c.Writer.HUB),
                                 updates=upd, fields=fields, derive=derive, derive_conditions=derive_conditions,
                                 known=self.known)
        self.known = None
        if obj is not None:
            self.raw = dict(obj.get("status") or {})
            self.status = ModelReleaseStatus.model_validate(self.raw)

    def cond_true(self, t: T) -> bool:
        found = c.find(self.status.conditions, t.value)
        return found is not None and found.status.value == "True"

    # -- steps -------------------------------------------------------------------------------
    def local_uri(self) -> str:
        """The artifact URI the hub reads and writes beside (pvc:// resolved to the hub's mount)."""
        return art.resolve_pvc(self.spec.artifact.storage_uri, self.cfg.pvc_mounts)

    async def verify(self) -> VerifiedRelease | None:
        ref = self.spec.provenance.federated_round_ref
        round_obj = None
        if ref is not None:
            round_obj = await self.kube.get_or_none(Ref(r.API_VERSION, r.FEDERATED_ROUNDS.plural, ref.namespace,
                                                        ref.name))
        try:
            try:
                uri = self.local_uri()
            except art.ArtifactError as err:
                raise Refused(err.reason, f"spec.artifact.storageUri: {err}") from None
            spec = self.spec.model_copy(update={"artifact": self.spec.artifact.model_copy(
                update={"storage_uri": uri})})
            result = await verify(spec, self.namespace, round_obj, self.cfg.fetch_policy)
        except Refused as err:
            await self.write(c.make(T.VERIFIED, False, err.reason, str(err)))
            if err.transient:
                raise kopf.TemporaryError(str(err), delay=self.cfg.retry_delay) from None
            raise kopf.PermanentError(str(err)) from None
        try:
            proofs_uri = await art.put_beside(uri, art.PROOFS, merkle.dumps(result.proofs), self.cfg.fetch_policy)
        except art.ArtifactError as err:
            await self.write(c.make(T.VERIFIED, False, err.reason, f"writing {art.PROOFS} beside the artifact: {err}"))
            raise kopf.TemporaryError(str(err), delay=self.cfg.retry_delay) from None
        where = f"; per-site proofs in {proofs_uri}" if proofs_uri else ""
        history = self.raw.get("stageHistory") or []
        extra: dict[str, Any] = {}
        if not history:
            extra = {"stage": Stage.CANDIDATE.value,
                     "stageHistory": [{"stage": Stage.CANDIDATE.value, "time": _iso(_now()), "reason": "Created"}]}
        await self.write(c.make(T.VERIFIED, True, "Verified",
                                f"sha256 matches, round checked, provenance root {result.provenance_root}{where}"),
                         verifiedDigest=self.spec.artifact.digest, provenanceRoot=result.provenance_root,
                         roundId=result.round_id, **extra)
        return result

    def digest(self) -> ReleaseDigest:
        return ReleaseDigest(self.spec.model_name, self.spec.version,
                             self.spec.artifact.digest.removeprefix("sha256:"),
                             self.status.provenance_root, self.status.round_id)

    async def sign(self) -> Signature | None:
        sig = self.status.signature
        if sig is not None and sig.signature:
            return Signature(sig.key_id, sig.algorithm, sig.signature)
        if self.cfg.signer is None:
            await self.write(c.make(T.SIGNED, False, "SignerNotConfigured",
                                    "no release signer is configured on the hub (Vault transit key)"))
            raise kopf.TemporaryError("no release signer", delay=self.cfg.error_delay)
        try:
            signed = await asyncio.to_thread(self.cfg.signer.sign, self.digest().message())
        except SignerUnavailable as err:      # a missing key or Vault right: the message says what to grant
            await self.write(c.make(T.SIGNED, False, err.reason, str(err)))
            raise kopf.TemporaryError(err.reason, delay=self.cfg.error_delay) from None
        except Exception as err:    # noqa: BLE001 - the signer's own errors, whatever its backend
            await self.write(c.make(T.SIGNED, False, "SigningFailed",
                                    f"the release signer failed ({type(err).__name__}); retrying"))
            raise kopf.TemporaryError("signing failed", delay=self.cfg.retry_delay) from None
        await self.write(c.make(T.SIGNED, True, "Signed", f"release digest signed with {signed.key_id}"),
                         signature={"keyId": signed.key_id, "algorithm": signed.algorithm,
                                    "signature": signed.signature})
        await self.write_manifest(signed)
        return signed

    async def write_manifest(self, sig: Signature, chain: dict[str, Any] | None = None) -> None:
        if self.cfg.signer is None or not sig.signature:
            return
        pem = await asyncio.to_thread(self.cfg.signer.public_key_pem, sig.key_id)
        doc = manifest.build(self.namespace, self.name, self.digest(), sig, pem, chain)
        try:
            await art.put_beside(self.local_uri(), art.MANIFEST, manifest.dumps(doc), self.cfg.fetch_policy)
        except art.ArtifactError as err:     # the signature is in status; the file is written on the next pass
            log.warning("ModelRelease %s/%s: writing %s beside the artifact: %s", self.namespace, self.name,
                        art.MANIFEST, err)

    async def _manifest_in_bucket(self, sig: Signature, chain: dict[str, Any]) -> None:
        """An s3:// release anchored while the bucket refused release.json: written on a later pass
        (a local folder's write does not fail that way; http(s) stores are read-only to us)."""
        uri = self.local_uri()
        if not uri.startswith("s3:"):
            return
        try:
            if await art.read_uri(art.sibling(uri, art.MANIFEST), self.cfg.fetch_policy) is not None:
                return
        except art.ArtifactError as err:
            log.warning("ModelRelease %s/%s: %s not readable beside the artifact: %s", self.namespace, self.name,
                        art.MANIFEST, err)
            return
        await self.write_manifest(sig, chain)

    def chain_target(self) -> tuple[int, str, int] | None:
        a = self.spec.anchor
        if a is not None:
            return a.chain_id, a.contract_address, a.required_confirmations
        if self.cfg.chain_id and self.cfg.contract_address:
            return self.cfg.chain_id, self.cfg.contract_address, self.cfg.confirmations
        return None

    async def _client(self, ctype: T) -> tuple[ChainClient, int, str, int]:
        target = self.chain_target()
        if target is None or not self.cfg.rpc_url:
            what = "spec.anchor (chainId, contractAddress)" if target is None else "the hub's chain RPC URL"
            await self.write(c.make(ctype, False, "ChainNotConfigured",
                                    f"{what} is not set; nothing is sent until it is"))
            raise kopf.TemporaryError("chain not configured", delay=self.cfg.error_delay)
        chain_id, contract, need = target
        return self.cfg.client(chain_id, contract), chain_id, contract, need

    async def _chain_failed(self, ctype: T, err: ChainError) -> None:
        await self.write(c.make(ctype, False, err.reason, str(err)))
        delay = self.cfg.retry_delay if err.transient else self.cfg.error_delay
        raise kopf.TemporaryError(str(err), delay=delay)

    async def anchor(self, sig: Signature) -> None:
        client, chain_id, contract, need = await self._client(T.ANCHORED)
        rec = self.status.anchor
        if rec is not None and rec.tx_hash and rec.confirmations >= max(need, 1):
            await self._manifest_in_bucket(sig, {"chainId": chain_id, "contract": contract, "txHash": rec.tx_hash,
                                                 "blockNumber": rec.block_number})
            return
        base = {"chainId": chain_id, "contractAddress": contract}

        async def on_sent(tx: str, nonce: int) -> None:
            await self.write(c.make(T.ANCHORED, False, "TransactionPending",
                                    f"anchoring transaction {tx} sent; waiting for {need} confirmations"),
                             anchor={**base, "pendingTx": tx, "pendingNonce": nonce})

        d = self.digest()
        try:
            result = await client.anchor(d.model_sha256, d.provenance_root, d.round_id,
                                         self.spec.artifact.storage_uri, confirmations=need,
                                         known_tx=(rec.pending_tx or None) if rec else None,
                                         known_nonce=rec.pending_nonce if rec else None, on_sent=on_sent)
        except ChainError as err:
            await self._chain_failed(T.ANCHORED, err)
            return
        record = {**base, "pendingTx": None, "pendingNonce": None, "txHash": result.tx_hash, "blockNumber": result.block_number,
                  "confirmations": result.confirmations, "anchoredTime": _iso(_now())}
        notes = f" ({'; '.join(result.notes)})" if result.notes else ""
        await self.write(c.make(T.ANCHORED, True, "Anchored",
                                f"anchored in block {result.block_number} of chain {chain_id} by "
                                f"{result.tx_hash}, {result.confirmations} confirmations{notes}"),
                         anchor=record)
        await self.write_manifest(sig, {"chainId": chain_id, "contract": contract, "txHash": result.tx_hash,
                                        "blockNumber": result.block_number})

    async def revoke(self, reason: str) -> None:
        client, chain_id, contract, need = await self._client(T.REVOKED)
        rec = self.status.revocation
        if rec is not None and rec.tx_hash:
            return

        async def on_sent(tx: str, nonce: int) -> None:
            await self.write(c.make(T.REVOKED, False, "TransactionPending", f"revocation transaction {tx} sent"),
                             revocation={"pendingTx": tx, "pendingNonce": nonce})

        try:
            result = await client.revoke(self.spec.artifact.digest, reason or "revoked", confirmations=need,
                                         known_tx=(rec.pending_tx or None) if rec else None,
                                         known_nonce=rec.pending_nonce if rec else None, on_sent=on_sent)
        except ChainError as err:
            await self._chain_failed(T.REVOKED, err)
            return
        await self.write(c.make(T.REVOKED, True, "Revoked",
                                f"revoked on chain {chain_id} in block {result.block_number} by {result.tx_hash}; "
                                "the anchoring record stays"),
                         revocation={"pendingTx": None, "pendingNonce": None, "txHash": result.tx_hash,
                                     "blockNumber": result.block_number,
                                     "revokedTime": _iso(_now())})

    # -- stages ------------------------------------------------------------------------------
    def _history_with(self, stage: Stage, reason: str) -> list[dict[str, Any]]:
        return list(self.raw.get("stageHistory") or []) + [
            {"stage": stage.value, "time": _iso(_now()), "reason": reason}]

    async def set_stage(self, stage: Stage, reason: str, cond: Condition, **extra: Any) -> None:
        if self.status.stage == stage:
            await self.write(cond, **extra)
            return
        await self.write(cond, stage=stage.value, stageHistory=self._history_with(stage, reason), **extra)

    async def promote(self) -> None:
        want, have = self.spec.stage, self.status.stage or Stage.CANDIDATE
        if self.cond_true(T.REVOKED):
            await self.set_stage(Stage.ARCHIVED, "Revoked", c.make(
                T.PROMOTED, want is Stage.ARCHIVED, "Revoked", "a revoked release is archived"))
            return
        if self.status.superseded_by:
            await self.write(c.make(T.PROMOTED, want is Stage.ARCHIVED, "Superseded",
                                    f"superseded in Production by {self.status.superseded_by}; it stays Archived "
                                    "(set spec.stage: Archived in Git)"))
            return
        if want == have:
            await self.write(c.make(T.PROMOTED, True, "InEffect", f"stage {want.value} is in effect"))
            return
        if have is Stage.ARCHIVED:
            await self.write(c.make(T.PROMOTED, False, "ArchivedIsFinal",
                                    f"the release is Archived; {want.value} is refused. Create a new release"))
            return
        if ORDER[want] < ORDER[have]:
            await self.write(c.make(T.PROMOTED, False, "StageCannotGoBack",
                                    f"{have.value} cannot go back to {want.value}; archive it instead"))
            return
        if not (self.cond_true(T.VERIFIED) and self.cond_true(T.ANCHORED)):
            await self.write(c.make(T.PROMOTED, False, "AwaitingAnchoring",
                                    f"stage {want.value} takes effect once the release is verified and anchored"))
            return
        if want is Stage.PRODUCTION:
            async with self.cfg.promotion_lock(f"{self.namespace}/{self.spec.model_name}"):
                await self._supersede_others()
                await self.set_stage(Stage.PRODUCTION, "Promoted", c.make(
                    T.PROMOTED, True, "InEffect", "stage Production is in effect"))
            return
        await self.set_stage(want, "Promoted", c.make(T.PROMOTED, True, "InEffect",
                                                       f"stage {want.value} is in effect"))

    async def _supersede_others(self) -> None:
        for other in await self.kube.list(Ref(r.API_VERSION, r.MODEL_RELEASES.plural, self.namespace)):
            md, spec, st = other["metadata"], other.get("spec") or {}, other.get("status") or {}
            if md["name"] == self.name or spec.get("modelName") != self.spec.model_name:
                continue
            if st.get("stage") != Stage.PRODUCTION.value:
                continue
            history = list(st.get("stageHistory") or []) + [
                {"stage": Stage.ARCHIVED.value, "time": _iso(_now()), "reason": f"Superseded by {self.name}"}]
            await write_status(self.kube, Ref(r.API_VERSION, r.MODEL_RELEASES.plural, self.namespace, md["name"]),
                               owned_types=c.owned("ModelRelease", c.Writer.HUB),
                               updates=[c.make(T.PROMOTED, False, "Superseded",
                                               f"superseded in Production by {self.name}; it stays Archived")],
                               fields={"stage": Stage.ARCHIVED.value, "supersededBy": self.name,
                                       "stageHistory": history})
            log.info("ModelRelease %s/%s superseded by %s", self.namespace, md["name"], self.name)


async def _invalid(kube: Kube, body: dict[str, Any], err: SpecError) -> None:
    md = body["metadata"]
    gen = md.get("generation")
    updates = [c.make(T.VALID, False, c.Reason.INVALID_SPEC, err.summary(), generation=gen),
               c.make(T.READY, False, c.Reason.INVALID_SPEC, err.summary(), generation=gen)]
    await write_status(kube, Ref(r.API_VERSION, r.MODEL_RELEASES.plural, md.get("namespace"), md["name"]),
                       owned_types=c.owned("ModelRelease", c.Writer.HUB), updates=updates,
                       fields={"phase": ReleasePhase.INVALID.value, "observedGeneration": gen})


async def reconcile(kube: Kube, cfg: ReleaseConfig, body: dict[str, Any]) -> None:
    try:
        spec = parse(r.MODEL_RELEASES.kind, body)
    except SpecError as err:
        await _invalid(kube, body, err)
        raise
    assert isinstance(spec, ModelReleaseSpec)
    rel = Release(kube, cfg, body, spec)
    await rel.write(c.make(T.VALID, True, c.Reason.RECONCILED, "spec is valid"))
    anchored = rel.status.anchor is not None and bool(rel.status.anchor.tx_hash)
    pending = rel.status.anchor is not None and bool(rel.status.anchor.pending_tx)
    if spec.revocation.revoked and not anchored and not pending:
        # Revoked before anything was sent: nothing is ever anchored for it.
        await rel.write(c.make(T.REVOKED, True, "RevokedBeforeAnchoring",
                               f"revoked before anchoring ({spec.revocation.reason or 'no reason given'}); "
                               "nothing was sent to the chain"),
                        c.make(T.ANCHORED, False, "Revoked", "revoked before anchoring"))
        await rel.promote()
        return
    stopped: kopf.TemporaryError | kopf.PermanentError | None = None
    try:
        if not (rel.cond_true(T.VERIFIED) and rel.status.verified_digest == spec.artifact.digest
                and rel.status.provenance_root):
            await rel.verify()
        sig = await rel.sign()
        assert sig is not None
        await rel.anchor(sig)
        if spec.revocation.revoked:
            await rel.revoke(spec.revocation.reason)
        elif not rel.cond_true(T.REVOKED):
            await rel.write(c.make(T.REVOKED, False, "NotRevoked", "the release is not revoked"))
    except (kopf.TemporaryError, kopf.PermanentError) as err:
        stopped = err          # a step must wait: still say what happens to the requested stage
    await rel.promote()
    if stopped is not None:
        raise stopped


async def finalize(kube: Kube, cfg: ReleaseConfig, body: dict[str, Any]) -> None:
    """Deleting a release revokes it on chain (the record stays); nothing to do if nothing was sent."""
    status = ModelReleaseStatus.model_validate(body.get("status") or {})
    a = status.anchor
    if a is None or not (a.tx_hash or a.pending_tx):
        return
    if status.revocation is not None and status.revocation.tx_hash:
        return
    try:
        spec = parse(r.MODEL_RELEASES.kind, body)
    except SpecError:
        return
    assert isinstance(spec, ModelReleaseSpec)
    rel = Release(kube, cfg, body, spec)
    if not a.tx_hash:      # a transaction was sent: follow it to the end, then revoke
        sig = status.signature
        await rel.anchor(Signature(sig.key_id, sig.algorithm, sig.signature) if sig else Signature("", "", ""))
    await rel.revoke(spec.revocation.reason or "release deleted")
