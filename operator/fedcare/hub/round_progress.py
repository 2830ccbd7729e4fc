"""A round's progress and result, read from what the ServerApp writes to the artifact store.

The ServerApp (workloads/) rewrites ``provenance.json`` atomically after every step and,
at the end, writes ``model.safetensors`` (+ ``.sha256``) and ``model-card.json`` to its
``out-dir``: a folder of the hub's artifact store (a PVC mounted at the same path in the
hub and the SuperLink pod). The hub reads those files; it never reads a model out of a CR
and never puts one in.
"""

from __future__ import annotations

import hashlib
import json
import pathlib
from dataclasses import dataclass, field
from typing import Any


def out_dir(artifact_dir: str, namespace: str, name: str, uid: str, attempt: int) -> pathlib.Path:
    """``<store>/<namespace>/<name>-<uid8>/attempt-<n>``: a re-created round of the same name
    never reads or overwrites an older one's files."""
    return pathlib.Path(artifact_dir) / namespace / f"{name}-{uid[:8]}" / f"attempt-{attempt}"


def provenance_status(folder: pathlib.Path) -> str:
    """running | completed | failed as the ServerApp last wrote it ('' before it started)."""
    try:
        return str(json.loads((folder / "provenance.json").read_text()).get("status") or "")
    except (OSError, ValueError):
        return ""


def _num(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return ""
    if isinstance(value, (int, float)):
        return f"{value:.4g}"
    return ""


@dataclass
class Progress:
    rounds: list[dict[str, Any]] = field(default_factory=list)    # ServerRoundStatus wire dicts
    completed: int = 0
    last_round: dict[str, int] = field(default_factory=dict)     # site -> last round it contributed to
    epsilon: dict[str, str] = field(default_factory=dict)        # site -> epsilon spent so far
    error: str = ""


def read_progress(folder: pathlib.Path, participants: list[str]) -> Progress:
    """Per-server-round metrics from provenance.json (empty before the ServerApp wrote it)."""
    try:
        doc = json.loads((folder / "provenance.json").read_text())
    except (OSError, ValueError):
        return Progress()
    progress = Progress(error=str(doc.get("error") or "")[:500])
    for entry in sorted(doc.get("rounds") or [], key=lambda e: e.get("round", 0)):
        rnd = int(entry.get("round") or 0)
        if rnd == 0 or "sites" not in entry:
            continue
        evaluation = entry.get("server_evaluation") or {}
        train = entry.get("train_aggregate") or {}
        sites, examples = [], 0
        reported = entry.get("sites") or {}
        for site in participants:
            outcome = reported.get(site)
            if outcome is None:
                sites.append({"site": site, "status": "dropped", "reason": "no reply within the round timeout"})
                continue
            n = int(outcome.get("num_examples") or 0)
            ok = outcome.get("status") == "ok"
            error = str(outcome.get("error") or "")
            # dropped: it missed the round (no reply before round-timeout, or the SuperLink saw its
            # node stop reporting: flwr's "Node Unavailable" reply); failed: it answered with an error
            state = "ok" if ok else ("dropped" if "no reply" in error or "Node Unavailable" in error else "failed")
            sites.append({"site": site, "status": state, "examples": n if ok else 0, "reason": error[:500]})
            if ok:
                examples += n
                progress.last_round[site] = rnd
                eps = (outcome.get("metrics") or {}).get("dp-epsilon-total")
                if eps is not None:
                    progress.epsilon[site] = _num(eps)
        for site, outcome in reported.items():        # a site the hub did not select: still say so
            if site not in participants:
                sites.append({"site": site, "status": outcome.get("status", ""), "reason": "not a participant"})
        progress.rounds.append({
            "round": rnd, "loss": _num(evaluation.get("loss")), "accuracy": _num(evaluation.get("accuracy")),
            "auroc": _num(evaluation.get("auroc")),
            "trainLoss": _num(train.get("train-loss", train.get("loss"))),
            "examples": examples, "sites": sites})
        if entry.get("global_model_sha256"):
            progress.completed = rnd
    return progress


def sha256_file(path: pathlib.Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class Result:
    storage_uri: str
    digest: str              # sha256:<hex> of model.safetensors
    provenance_digest: str


class ArtifactError(Exception):
    pass


def read_result(folder: pathlib.Path, claim: str, artifact_dir: str) -> Result:
    """The final model's digest, recomputed and checked against the ServerApp's .sha256 file."""
    model = folder / "model.safetensors"
    if not model.is_file():
        raise ArtifactError(f"the run finished but {model} is missing")
    digest = sha256_file(model)
    recorded = folder / "model.safetensors.sha256"
    if recorded.is_file():
        written = recorded.read_text().split()[0] if recorded.read_text().split() else ""
        if written and written != digest:
            raise ArtifactError(f"{model} does not match its recorded sha256 (the file changed after the run)")
    provenance = folder / "provenance.json"
    prov_digest = sha256_file(provenance) if provenance.is_file() else ""
    relative = model.relative_to(pathlib.Path(artifact_dir))
    return Result(f"pvc://{claim}/{relative.as_posix()}", f"sha256:{digest}",
                  f"sha256:{prov_digest}" if prov_digest else "")
