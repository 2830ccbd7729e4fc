"""``fedcare verify``: prove a released model with nothing but files and a chain RPC endpoint.

Inputs: the artifact file; beside it (or given explicitly) release.json (signature, public key,
name, version, round id), provenance.json (the whole round's hashes; optional for a hospital
that holds only its own proofs) and provenance-proofs.json; ``--rpc``/``--contract`` for the
chain. Every check is a row of the verdict table; any failed row makes the exit status 1 and
is named on the last line.
"""

from __future__ import annotations

import asyncio
import json
import pathlib
import tempfile
from dataclasses import dataclass
from typing import Any

from ..integrations.signing import verify as verify_signature
from . import artifact as art
from . import manifest as mf
from . import merkle
from .digest import ReleaseDigest
from .registry_reader import ReaderError, RegistryReader


@dataclass
class Row:
    check: str
    ok: bool | None          # None: not checked (and why, in detail)
    detail: str


@dataclass
class Inputs:
    artifact: pathlib.Path
    manifest: dict[str, Any] | None
    provenance: dict[str, Any] | None
    proofs: dict[str, Any] | None
    public_key_pem: str | None
    rpc: str | None = None
    contract: str | None = None
    chain_id: int | None = None
    confirmations: int = 1
    site: str | None = None
    sha256: Any = None        # a precomputed hash of the artifact (a concurrent.futures.Future or str)


def _load_json(path: pathlib.Path | None) -> tuple[dict[str, Any] | None, str]:
    if path is None or not path.exists():
        return None, f"{path} not found" if path else "not given"
    try:
        return json.loads(path.read_text()), ""
    except (ValueError, UnicodeDecodeError) as err:
        return None, f"{path.name} is not valid JSON ({err})"


def inputs_from_files(artifact: pathlib.Path, *, manifest: pathlib.Path | None = None,
                      provenance: pathlib.Path | None = None, proofs: pathlib.Path | None = None,
                      public_key: pathlib.Path | None = None, **kw: Any) -> tuple[Inputs, list[Row]]:
    rows: list[Row] = []
    folder = artifact.parent
    man, why = _load_json(manifest or folder / art.MANIFEST)
    if man is None:
        rows.append(Row("release manifest", False, why))
    prov, why_p = _load_json(provenance or folder / art.PROVENANCE)
    if prov is None and "not valid" in why_p:
        rows.append(Row("provenance file", False, why_p))
    prf, why_f = _load_json(proofs or folder / art.PROOFS)
    if prf is None and "not valid" in why_f:
        rows.append(Row("proof file", False, why_f))
    pem = public_key.read_text() if public_key else None
    return Inputs(artifact, man, prov, prf, pem, **kw), rows


async def check(inp: Inputs) -> list[Row]:
    rows: list[Row] = []
    if not inp.artifact.is_file():
        return [Row("artifact", False, f"{inp.artifact} is not a file")]
    if inp.sha256 is None:
        sha = await asyncio.to_thread(art.sha256_file, inp.artifact)
    elif isinstance(inp.sha256, str):
        sha = inp.sha256
    else:
        sha = await asyncio.wrap_future(inp.sha256)
    man = inp.manifest or {}
    claimed = str(man.get("modelSha256", ""))
    if man:
        rows.append(Row("artifact sha256", sha == claimed,
                        sha if sha == claimed else f"file hashes to {sha}, the release says {claimed}"))
    else:
        rows.append(Row("artifact sha256", None, f"{sha} (no release manifest to compare with)"))

    # provenance: recompute the root from the whole provenance when we have it
    root = str(man.get("provenanceRoot", ""))
    leaves: set[merkle.Leaf] | None = None
    if inp.provenance is not None:
        try:
            leaf_list = merkle.leaves_from_provenance(inp.provenance)
            leaves = set(leaf_list)
            computed = merkle.root(leaf_list).hex()
            final = merkle.final_model_sha256(inp.provenance)
            rows.append(Row("provenance → model", final == sha,
                            "last round's global model is this file" if final == sha
                            else f"provenance's final model is {final}, not this file ({sha})"))
            if root:
                rows.append(Row("provenance root", computed == root,
                                computed if computed == root else f"provenance hashes to root {computed}, the "
                                                                  f"release says {root}"))
            root = root or computed
        except merkle.ProvenanceError as err:
            rows.append(Row("provenance file", False, str(err)))
    else:
        rows.append(Row("provenance root", None, "no provenance.json: per-site proofs are checked against the "
                                                 "anchored root instead"))

    # signature over the release digest rebuilt from what was recomputed
    if man:
        sig = mf.signature_of(man)
        pem = inp.public_key_pem or str(man.get("publicKeyPem", ""))
        source = "--public-key" if inp.public_key_pem else "manifest's key (pin it with --public-key)"
        digest = ReleaseDigest(str(man.get("modelName", "")), str(man.get("version", "")), sha, root,
                               str(man.get("roundId", "")))
        try:
            good = bool(pem) and verify_signature(pem, digest.message(), sig)
        except (ValueError, TypeError):
            good = False
        rows.append(Row("signature", good, f"{sig.algorithm} by {sig.key_id}, {source}" if good else
                        f"the signature by {sig.key_id or '?'} does not verify over the release digest "
                        f"({source}): signature, key or signed content differ"))

    # the chain record
    chain_root: str | None = None
    if inp.rpc and inp.contract:
        chain_root = await _chain_rows(inp, sha, man, rows)
    else:
        rows.append(Row("on-chain record", None, "no --rpc/--contract given"))

    # per-site contribution proofs
    anchor_root = chain_root or root
    if inp.proofs is not None and anchor_root:
        rows.extend(_proof_rows(inp, anchor_root, leaves, "the anchored root" if chain_root else "the release's root"))
    elif inp.proofs is None:
        rows.append(Row("site proofs", None, "no provenance-proofs.json"))
    return rows


async def _chain_rows(inp: Inputs, sha: str, man: dict[str, Any], rows: list[Row]) -> str | None:
    return await asyncio.to_thread(_chain_rows_sync, inp, sha, man, rows)


def _chain_rows_sync(inp: Inputs, sha: str, man: dict[str, Any], rows: list[Row]) -> str | None:
    reader = RegistryReader(inp.rpc or "")
    contract = inp.contract or ""
    try:
        node_id = reader.chain_id()
        want = inp.chain_id or (man.get("chain") or {}).get("chainId") or node_id
        if want != node_id:
            rows.append(Row("chain id", False, f"the node serves chain {node_id}, the release was anchored on {want}"))
            return None
        if not reader.has_code(contract):
            rows.append(Row("on-chain record", False, f"no contract code at {contract} on chain {node_id}"))
            return None
        rec = reader.get(contract, sha)
        head = reader.block_number()
    except ReaderError as err:
        rows.append(Row("on-chain record", False, str(err)))
        return None
    if not rec.exists:
        rows.append(Row("on-chain record", False, f"sha256 {sha} is not anchored on chain {node_id} at {contract}"))
        return None
    confirmations = head - rec.block_number + 1
    rows.append(Row("on-chain record", True, f"block {rec.block_number} on chain {node_id}, registrar "
                                             f"{rec.registrar}"))
    rows.append(Row("confirmations", confirmations >= inp.confirmations,
                    f"{confirmations} (need {inp.confirmations})"))
    root = man.get("provenanceRoot")
    if root:
        rows.append(Row("anchored root", rec.provenance_root == root,
                        "matches the release" if rec.provenance_root == root
                        else f"chain has {rec.provenance_root}, the release says {root}"))
    rid = man.get("roundId")
    if rid:
        rows.append(Row("anchored round id", rec.round_id == rid,
                        rid if rec.round_id == rid else f"chain has {rec.round_id}, release says {rid}"))
    rows.append(Row("not revoked", not rec.revoked, "no revocation on chain" if not rec.revoked
                    else f"REVOKED in block {rec.revoked_block}"))
    return rec.provenance_root


def _proof_rows(inp: Inputs, root_hex: str, leaves: set[merkle.Leaf] | None, against: str) -> list[Row]:
    root = bytes.fromhex(root_hex)
    by_site: dict[str, list[bool]] = {}
    bad: list[str] = []
    for item in (inp.proofs or {}).get("leaves") or []:
        try:
            leaf = merkle.Leaf(int(item["round"]), str(item["kind"]), str(item["site"]), str(item["sha256"]))
        except (KeyError, TypeError, ValueError):
            bad.append("malformed leaf")
            continue
        if inp.site and leaf.site != inp.site:
            continue
        ok = merkle.verify_proof(leaf, item.get("proof") or [], root)
        if leaves is not None and leaf not in leaves:
            ok = False
        name = leaf.site or "global model"
        by_site.setdefault(name, []).append(ok)
        if not ok:
            bad.append(f"{name} round {leaf.round}")
    rows = []
    for name, results in sorted(by_site.items()):
        n_ok = sum(results)
        rows.append(Row(f"proof: {name}", n_ok == len(results),
                        f"{n_ok}/{len(results)} contributions proven against {against}"))
    if inp.site and inp.site not in by_site:
        rows.append(Row(f"proof: {inp.site}", False, "no contribution of this site in the proof file"))
    if "malformed leaf" in bad:
        rows.append(Row("proof file", False, "a leaf is malformed"))
    return rows


async def inputs_from_release(kubeconfig: str | None, namespace: str, name: str, workdir: pathlib.Path | None = None,
                              **kw: Any) -> tuple[Inputs, list[Row]]:
    """Read a ModelRelease from a cluster: artifact URI, signature and chain coordinates from its status.
    An s3:// artifact is downloaded into ``workdir`` (the caller removes it; the CLI does)."""
    from ..api.resources import API_VERSION, MODEL_RELEASES
    from ..integrations.kube import Kube, Ref

    kube = await Kube.from_kubeconfig(kubeconfig)
    try:
        obj = await kube.get(Ref(API_VERSION, MODEL_RELEASES.plural, namespace, name))
    finally:
        await kube.close()
    spec, st = obj.get("spec") or {}, obj.get("status") or {}
    uri = spec["artifact"]["storageUri"]
    if uri.startswith("file:"):
        path = art.local_path(uri)
    elif uri.startswith("s3:"):         # streamed to a file (endpoint and credentials: AWS_* variables)
        path = (workdir or pathlib.Path(tempfile.mkdtemp(prefix="fedcare-verify-"))) / "model.safetensors"
        kw.setdefault("sha256", await art.download_s3(uri, path))
    else:
        data = await art.read_uri(uri, limit=1 << 40)
        with tempfile.NamedTemporaryFile(suffix=".artifact", delete=False) as fh:
            fh.write(data or b"")
        path = pathlib.Path(fh.name)
    sig = st.get("signature") or {}
    anchor = st.get("anchor") or {}
    manifest = {"modelName": spec.get("modelName"), "version": spec.get("version"),
                "modelSha256": spec["artifact"]["digest"].removeprefix("sha256:"),
                "provenanceRoot": st.get("provenanceRoot", ""), "roundId": st.get("roundId", ""),
                "signature": sig, "chain": {"chainId": anchor.get("chainId")} if anchor.get("chainId") else {}}
    prov = await art.read_uri(art.sibling(uri, art.PROVENANCE))
    proofs = await art.read_uri(art.sibling(uri, art.PROOFS))
    man_file = await art.read_uri(art.sibling(uri, art.MANIFEST))
    if man_file and not kw.get("public_key_pem"):
        manifest["publicKeyPem"] = json.loads(man_file).get("publicKeyPem", "")
    if not kw.get("contract"):        # the CLI passes contract=None when --contract is not given
        kw["contract"] = anchor.get("contractAddress")
    return Inputs(path, manifest, json.loads(prov) if prov else None, json.loads(proofs) if proofs else None,
                  **kw), []


async def fetch_s3(uri: str, folder: pathlib.Path) -> tuple[pathlib.Path, str]:
    """``fedcare verify s3://bucket/key``: the artifact and the files beside it (release.json,
    provenance.json, provenance-proofs.json) downloaded into ``folder``; (artifact path, sha256).
    Endpoint and credentials: AWS_ENDPOINT_URL_S3 (or AWS_ENDPOINT_URL), AWS_ACCESS_KEY_ID,
    AWS_SECRET_ACCESS_KEY, AWS_REGION."""
    path = folder / (uri.rstrip("/").rsplit("/", 1)[-1] or "model.safetensors")
    sha = await art.download_s3(uri, path)
    for name in (art.MANIFEST, art.PROVENANCE, art.PROOFS):
        data = await art.read_uri(art.sibling(uri, name))
        if data is not None:
            (folder / name).write_bytes(data)
    return path, sha


def render(rows: list[Row], console: Any = None) -> int:
    """Print the verdict table (rich); return the exit status (1 if any check failed)."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    table = Table(title="fedcare verify", show_lines=False)
    table.add_column("Check")
    table.add_column("Result")
    table.add_column("Detail", overflow="fold")
    for row in rows:
        mark = "[green]PASS[/]" if row.ok else "[red]FAIL[/]" if row.ok is False else "[yellow]SKIP[/]"
        table.add_row(row.check, mark, row.detail)
    console.print(table)
    failed = [r.check for r in rows if r.ok is False]
    if failed:
        console.print(f"[red]VERIFICATION FAILED[/]: {', '.join(failed)}")
        return 1
    console.print("[green]VERIFIED[/]: every check passed" + (
        "" if all(r.ok for r in rows) else " (some were skipped, see above)"))
    return 0
