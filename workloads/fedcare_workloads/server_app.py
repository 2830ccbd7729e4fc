"""The ServerApp: run the strategy, evaluate centrally, write model + provenance.

`flwr pull` does not work in open-source Flower, so every artifact is written
here, to the absolute run-config `out-dir` (a PVC in the cluster): the
ServerApp's working directory is the SuperLink's and must not be relied on.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from flwr.app import ArrayRecord, ConfigRecord, Context, MetricRecord
from flwr.serverapp import Grid, ServerApp

from .artifacts import model_card, write_atomic, write_json
from .data import ImageSet, load_dataset
from .hashing import arrays_sha256, bytes_sha256
from .model import ModelSpec, build_model
from .provenance import ProvenanceRecorder
from .release import policy as release_policy
from .records import arrays_to_record, load_arrays_into, record_views, state_to_arrays
from .settings import ConfigError, RunSettings, default_torch_threads
from .strategy import build_strategy

log = logging.getLogger("flwr")
app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    run = RunSettings.from_run_config(context.run_config)
    run_federation(grid, run, run_id=context.run_id)


def prepare_out_dir(run: RunSettings) -> Path:
    out = run.require_out_dir()
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"run-config 'out-dir' {out} cannot be created: {exc.strerror}") from None
    if not os.access(out, os.W_OK):
        raise ConfigError(f"run-config 'out-dir' {out} is not writable by the ServerApp (uid {os.getuid()})")
    return out


def load_server_eval(run: RunSettings) -> ImageSet | None:
    if not run.server_eval_path:
        return None
    path = Path(run.server_eval_path)
    if not path.is_absolute():
        raise ConfigError(f"run-config 'server-eval-path' = {run.server_eval_path!r} must be absolute")
    return load_dataset(path, path, run.classes, run.image_size, ("test",)).split("test")


def run_federation(grid: Grid, run: RunSettings, run_id: int | str = 0) -> dict:
    """Everything `main` does, callable with any Grid (tests use an in-process one)."""
    import torch

    from .train import evaluate, pick_device

    torch.set_num_threads(default_torch_threads())
    out = prepare_out_dir(run)
    holdout = load_server_eval(run)  # fail before round 1 if it is broken
    spec = ModelSpec(run.model, len(run.classes), run.image_size)
    model = build_model(spec, seed=run.seed)
    if run.initial_model:  # fail before round 1 if it is missing, changed or another architecture
        from .initial_model import load_initial_model

        load_initial_model(model, run.initial_model, run.initial_model_sha256)
    architecture = spec.describe(model)
    metadata = {"architecture": architecture, "classes": list(run.classes), "run_id": str(run_id)}
    recorder = ProvenanceRecorder(
        out,
        {
            "run_id": str(run_id),
            "strategy": run.strategy,
            "classes": list(run.classes),
            "hash_format": "fedcare-arrays/v1",
            "config": _config_summary(run),
        },
        save_round_models=run.save_round_models,
    )
    device = pick_device()

    def evaluate_fn(server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        views = record_views(arrays)
        metrics = None
        if holdout is not None:
            load_arrays_into(model, views)
            metrics = evaluate(model.to(device), holdout, device)
            model.to("cpu")
            metrics["num-examples"] = len(holdout)
        recorder.finish_round(server_round, views, metadata, metrics)
        return MetricRecord(metrics) if metrics else None

    strategy = build_strategy(run, recorder)
    try:
        result = strategy.start(
            grid=grid,
            initial_arrays=arrays_to_record(state_to_arrays(model)),
            num_rounds=run.num_server_rounds,
            timeout=run.round_timeout,
            train_config=ConfigRecord(),
            evaluate_config=ConfigRecord(),
            evaluate_fn=evaluate_fn,
        )
        return write_final(out, run, recorder, result.arrays, architecture)
    except Exception as exc:
        recorder.fail(f"{type(exc).__name__}: {exc}")
        log.error("Run failed: %s", exc)
        raise


def write_final(out: Path, run: RunSettings, recorder: ProvenanceRecorder, arrays: ArrayRecord, architecture) -> dict:
    last = recorder.rounds[-1]
    same_file = last["global_model_sha256"] == bytes_sha256(recorder.last_model_bytes)
    same_arrays = last["global_arrays_sha256"] == arrays_sha256(record_views(arrays))
    if not (same_file and same_arrays):
        raise RuntimeError("final model differs from the last recorded round; refusing to publish it")
    model_sha = write_atomic(out / "model.safetensors", recorder.last_model_bytes)
    write_atomic(out / "model.safetensors.sha256", f"{model_sha}  model.safetensors\n".encode())
    sites = sorted({s for r in recorder.rounds for s, o in (r.get("sites") or {}).items() if o["status"] == "ok"})
    final = {
        "model_file": "model.safetensors",
        "model_sha256": model_sha,
        "arrays_sha256": last["global_arrays_sha256"],
        "rounds": run.num_server_rounds,
        "sites": sites,
    }
    provenance_sha = recorder.complete(final)
    eps = recorder.epsilon_per_site()
    privacy = (
        {
            "mechanism": "DP-SGD at each site (Opacus, RDP accountant)",
            "delta": run.privacy.delta,
            "noise_multiplier": run.privacy.noise_multiplier,
            "max_grad_norm": run.privacy.max_grad_norm,
            "epsilon_per_site": eps,
            "budget": "each site's own ledger budget (set by the hospital), composed over every run on the dataset",
        }
        if run.privacy.dp
        else {"mechanism": "none", "epsilon_per_site": {}}
    )
    privacy["released_metrics"] = release_policy(run.metric_decimals)
    card = model_card(
        architecture=architecture,
        classes=run.classes,
        model_file="model.safetensors",
        model_sha256=model_sha,
        arrays_sha256=last["global_arrays_sha256"],
        provenance_file="provenance.json",
        provenance_sha256=provenance_sha,
        training=_config_summary(run),
        rounds=recorder.rounds,
        sites=sites,
        privacy=privacy,
    )
    write_json(out / "model-card.json", card)
    log.info("Wrote %s (sha256 %s), model-card.json and provenance.json", out / "model.safetensors", model_sha)
    return card


def _config_summary(run: RunSettings) -> dict:
    return {
        "strategy": run.strategy,
        "rounds": run.num_server_rounds,
        "local_epochs": run.local_epochs,
        "batch_size": run.batch_size,
        "optimizer": run.optimizer,
        "lr": run.lr,
        "momentum": run.momentum,
        "model": run.model,
        "image_size": run.image_size,
        "fraction_train": run.fraction_train,
        "min_train_nodes": run.min_train_nodes,
        "round_timeout_s": run.round_timeout,
        "seed": run.seed,
        "proximal_mu": run.proximal_mu if run.strategy == "fedprox" else None,
        "server_lr": run.server_lr if run.strategy == "fedadam" else None,
        "dp": run.privacy.dp,
        # Trust boundary (trust.py): what bounded each site's influence.
        "site_identity": "site-identities" if run.site_identities else "self-reported",
        "registered_examples": dict(run.registered_examples) or None,
        "max_examples_per_site": run.max_examples_per_site,
        "max_update_norm": run.max_update_norm,
        "metric_decimals": run.metric_decimals,
        # the starting weights: a pinned file (round 0 of provenance holds its arrays' hash) or random from `seed`
        "initial_model_sha256": run.initial_model_sha256 or None,
    }
