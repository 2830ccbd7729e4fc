"""`fedcare-workloads` command line: synth, check, hash, evaluate, deidentify, privacy-budget.

Every command prints JSON on stdout; errors go to stderr with exit code 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from . import DEFAULT_CLASSES


def _classes(value: str) -> tuple[str, ...]:
    return tuple(c.strip() for c in value.split(",") if c.strip())


def cmd_synth(args: argparse.Namespace) -> dict:
    from .synth import generate_federation

    summary = generate_federation(
        Path(args.out), args.sites, args.images_per_site, args.holdout, args.image_size, args.seed
    )
    return {"out": str(Path(args.out).resolve()), "datasets": {k: v["counts"] for k, v in summary.items()}}


def cmd_check(args: argparse.Namespace) -> dict:
    """Validate a dataset the way a ClientApp would load it (all splits)."""
    from .data import load_dataset

    root = args.data_root or args.dataset
    ds = load_dataset(args.dataset, root, _classes(args.classes), args.image_size, ("train", "val", "test"))
    return {"dataset": str(ds.root), "ok": True, **ds.summary}


def cmd_hash(args: argparse.Namespace) -> dict:
    from .artifacts import load_safetensors
    from .hashing import arrays_sha256, file_sha256

    arrays, meta = load_safetensors(args.file)
    return {
        "file": args.file,
        "file_sha256": file_sha256(args.file),
        "arrays_sha256": arrays_sha256(arrays),
        "metadata": meta,
    }


def evaluate_model_file(model_file: str | Path, dataset: str | Path, split: str = "test") -> dict:
    """Load a safetensors model written by the ServerApp and evaluate it on a dataset split."""
    import torch

    from .artifacts import load_safetensors
    from .data import load_dataset
    from .model import ModelSpec, build_model
    from .records import load_arrays_into
    from .train import evaluate, pick_device

    arrays, meta = load_safetensors(model_file)
    arch = meta.get("architecture") or {}
    classes = tuple(meta.get("classes") or DEFAULT_CLASSES)
    spec = ModelSpec(arch.get("variant", "small"), len(classes), int(arch.get("image_size", 64)))
    model = build_model(spec)
    load_arrays_into(model, arrays)
    data = load_dataset(dataset, dataset, classes, spec.image_size, (split,)).split(split)
    device = pick_device()
    with torch.no_grad():
        metrics = evaluate(model.to(device), data, device)
    return {"model": str(model_file), "dataset": str(dataset), "split": split, "num-examples": len(data), **metrics}


def cmd_evaluate(args: argparse.Namespace) -> dict:
    return evaluate_model_file(args.model, args.data, args.split)


def cmd_deidentify(args: argparse.Namespace) -> dict:
    from .deidentify import deidentify_path

    result = deidentify_path(args.input, args.output, args.attest_no_burned_in_annotation)
    if result["passing_gate"] < result["written"]:
        args.exit_code = 3  # written, but some files are still refused by the gate (see "remaining")
    return result


def cmd_privacy_budget(args: argparse.Namespace) -> dict:
    """The dataset's privacy ledger: spent / remaining / budget (the site agent asks
    this before accepting work); --set-epsilon appends the hospital's budget."""
    from .ledger import PrivacyLedger

    ledger = PrivacyLedger(Path(args.ledger).resolve(), args.dataset)
    if args.set_epsilon is not None:
        ledger.set_budget(args.set_epsilon, args.delta, set_by=args.set_by)
    return ledger.summary().to_json()


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fedcare-workloads", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("synth", help="write synthetic ultrasound datasets (one per site + a held-out set)")
    s.add_argument("--out", required=True, help="output directory (created)")
    s.add_argument("--sites", type=int, default=3)
    s.add_argument("--images-per-site", type=int, default=300)
    s.add_argument("--holdout", type=int, default=300, help="images in the balanced held-out set (0 = none)")
    s.add_argument("--image-size", type=int, default=64)
    s.add_argument("--seed", type=int, default=0)
    s.set_defaults(func=cmd_synth)

    c = sub.add_parser("check", help="validate a dataset folder (labels.csv, images, DICOM PHI gate)")
    c.add_argument("dataset")
    c.add_argument("--data-root", default="", help="the mount the dataset must stay inside (default: the dataset)")
    c.add_argument("--classes", default=",".join(DEFAULT_CLASSES))
    c.add_argument("--image-size", type=int, default=64)
    c.set_defaults(func=cmd_check)

    h = sub.add_parser("hash", help="sha256 of a safetensors file and its fedcare-arrays/v1 digest")
    h.add_argument("file")
    h.set_defaults(func=cmd_hash)

    e = sub.add_parser("evaluate", help="evaluate a model.safetensors on a dataset split")
    e.add_argument("--model", required=True)
    e.add_argument("--data", required=True)
    e.add_argument("--split", default="test", choices=("train", "val", "test"))
    e.set_defaults(func=cmd_evaluate)

    d = sub.add_parser(
        "deidentify",
        help="apply the DICOM PS3.15 Basic Profile to a .dcm file or a folder of them (exit 3 if any output "
        "is still refused by the gate)",
    )
    d.add_argument("input", metavar="IN")
    d.add_argument("output", metavar="OUT")
    d.add_argument(
        "--attest-no-burned-in-annotation",
        action="store_true",
        help="you checked the frames: no text is burned into the pixels (writes BurnedInAnnotation=NO)",
    )
    d.set_defaults(func=cmd_deidentify)

    b = sub.add_parser(
        "privacy-budget",
        help="show (or set) a dataset's privacy budget from the site's ledger: spent, remaining, budget",
    )
    b.add_argument("--ledger", required=True, help="the ledger directory (node-config privacy-ledger)")
    b.add_argument("--dataset", required=True, help="dataset id (node-config dataset-id, default the site name)")
    b.add_argument("--set-epsilon", type=float, default=None, help="append a new budget (the hospital's decision)")
    b.add_argument("--delta", type=float, default=1e-5, help="delta of a new budget (default 1e-5)")
    b.add_argument("--set-by", default="fedcare-workloads privacy-budget", help="who set the budget (recorded)")
    b.add_argument("--json", action="store_true", help="JSON output (the default; kept for scripts)")
    b.set_defaults(func=cmd_privacy_budget)
    return p


def main(argv: list[str] | None = None) -> int:
    from .data import DatasetError
    from .ledger import LedgerError

    args = build_parser().parse_args(argv)
    try:
        result = args.func(args)
    except (DatasetError, LedgerError, ValueError, FileNotFoundError) as exc:
        print(f"fedcare-workloads {args.command}: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(result, indent=2, sort_keys=True, default=str))
    return getattr(args, "exit_code", 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
