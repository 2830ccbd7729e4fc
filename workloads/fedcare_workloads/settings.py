"""Typed, validated views of Flower's run config and node config.

flwr passes both as flat dicts of TOML scalars and checks neither types nor
ranges (a string given for a float key crashes deep inside a strategy). Every
key is therefore read here once, with an error that names the key, the value
type that was found and what is expected.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

STRATEGIES = ("fedavg", "fedprox", "fedadam")
MODELS = ("small", "large")
OPTIMIZERS = ("adam", "sgd")


class ConfigError(ValueError):
    """A run-config or node-config value is missing, of the wrong type or out of range."""


_KIND_NAMES = {int: "an integer", float: "a number", bool: "a boolean (true/false)", str: "a string"}


def _get(cfg: Mapping[str, Any], key: str, kind: type, default: Any, where: str) -> Any:
    value = cfg.get(key, default)
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if kind is int and isinstance(value, float) and value.is_integer():
        value = int(value)
    if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
        fix = (
            "fix it in [tool.flwr.app.config] or the `flwr run -c` override"
            if where == "run-config"
            else "fix the SuperNode's --node-config"
        )
        raise ConfigError(
            f"{where} key '{key}' must be {_KIND_NAMES[kind]}, got {type(value).__name__} {value!r}; {fix}"
        )
    if kind is float and not math.isfinite(value):
        raise ConfigError(f"{where} key '{key}' must be finite, got {value!r}")
    return value


def _check(ok: bool, key: str, value: Any, expected: str) -> None:
    if not ok:
        raise ConfigError(f"run-config key '{key}' = {value!r} is invalid: expected {expected}")


_KEY_FP = re.compile(r"^key:[0-9a-f]{64}$")
_SITE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")


def _pairs(value: str, key: str) -> list[tuple[str, str]]:
    out = []
    for part in (p.strip() for p in value.split(",")):
        if not part:
            continue
        if part.count("=") != 1:
            raise ConfigError(f"run-config key '{key}': entry {part!r} must look like site=value")
        site, val = (x.strip() for x in part.split("="))
        if not _SITE.match(site):
            raise ConfigError(f"run-config key '{key}': site name {site!r} is invalid")
        out.append((site, val))
    return out


def _site_identities(value: str) -> dict[int | str, str]:
    """`site-a=node:123,site-b=key:<sha256 hex of the SuperNode's registered public key>`."""
    out: dict[int | str, str] = {}
    for site, ident in _pairs(value, "site-identities"):
        if ident.startswith("node:") and ident[5:].isdigit():
            ref: int | str = int(ident[5:])
        elif _KEY_FP.match(ident):
            ref = ident
        else:
            raise ConfigError(
                f"run-config key 'site-identities': {site}={ident!r} must be node:<node id> or "
                "key:<sha256 hex of the public key registered with `flwr supernode register`>"
            )
        if ref in out or site in out.values():
            raise ConfigError(f"run-config key 'site-identities': {site} or its identity is listed twice")
        out[ref] = site
    return out


def _registered_examples(value: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for site, n in _pairs(value, "registered-examples"):
        if not n.isdigit() or int(n) < 1:
            raise ConfigError(f"run-config key 'registered-examples': {site}={n!r} must be a positive integer")
        out[site] = int(n)
    return out


@dataclass(frozen=True)
class PrivacySettings:
    dp: bool
    noise_multiplier: float
    max_grad_norm: float
    delta: float
    max_epsilon: float  # an extra per-run cap; 0 = none, the dataset's ledger budget always applies


@dataclass(frozen=True)
class RunSettings:
    num_server_rounds: int
    strategy: str
    fraction_train: float
    fraction_evaluate: float
    min_train_nodes: int
    min_evaluate_nodes: int
    min_available_nodes: int
    round_timeout: float
    node_wait_timeout: float
    proximal_mu: float
    server_lr: float
    server_tau: float
    model: str
    image_size: int
    classes: tuple[str, ...]
    seed: int
    local_epochs: int
    batch_size: int
    optimizer: str
    lr: float
    momentum: float
    out_dir: str
    server_eval_path: str
    save_round_models: bool
    privacy: PrivacySettings
    # Trust boundary at the ServerApp (replies.py): who a node is, how much it may weigh.
    site_identities: dict[int | str, str] = field(default_factory=dict)  # node id / "key:<sha256>" -> site
    registered_examples: dict[str, int] = field(default_factory=dict)  # site -> train examples it registered
    max_examples_per_site: int = 1_000_000
    max_update_norm: float = 100.0
    metric_decimals: int = 2
    initial_model: str = ""  # a safetensors file to start from (empty: random weights from `seed`)
    initial_model_sha256: str = ""  # its sha256, checked before the file is used

    @classmethod
    def from_run_config(cls, cfg: Mapping[str, Any]) -> RunSettings:
        w = "run-config"
        s = cls(
            num_server_rounds=_get(cfg, "num-server-rounds", int, 3, w),
            strategy=_get(cfg, "strategy", str, "fedavg", w).strip().lower(),
            fraction_train=_get(cfg, "fraction-train", float, 1.0, w),
            fraction_evaluate=_get(cfg, "fraction-evaluate", float, 1.0, w),
            min_train_nodes=_get(cfg, "min-train-nodes", int, 2, w),
            min_evaluate_nodes=_get(cfg, "min-evaluate-nodes", int, 2, w),
            min_available_nodes=_get(cfg, "min-available-nodes", int, 2, w),
            round_timeout=_get(cfg, "round-timeout", float, 600.0, w),
            node_wait_timeout=_get(cfg, "node-wait-timeout", float, 300.0, w),
            proximal_mu=_get(cfg, "proximal-mu", float, 0.01, w),
            server_lr=_get(cfg, "server-lr", float, 0.1, w),
            server_tau=_get(cfg, "server-tau", float, 1e-3, w),
            model=_get(cfg, "model", str, "small", w).strip().lower(),
            image_size=_get(cfg, "image-size", int, 64, w),
            classes=tuple(c.strip() for c in _get(cfg, "classes", str, "normal,benign,malignant", w).split(",")),
            seed=_get(cfg, "seed", int, 0, w),
            local_epochs=_get(cfg, "local-epochs", int, 1, w),
            batch_size=_get(cfg, "batch-size", int, 32, w),
            optimizer=_get(cfg, "optimizer", str, "adam", w).strip().lower(),
            lr=_get(cfg, "lr", float, 1e-3, w),
            momentum=_get(cfg, "momentum", float, 0.9, w),
            out_dir=_get(cfg, "out-dir", str, "", w),
            server_eval_path=_get(cfg, "server-eval-path", str, "", w),
            save_round_models=_get(cfg, "save-round-models", bool, True, w),
            site_identities=_site_identities(_get(cfg, "site-identities", str, "", w)),
            registered_examples=_registered_examples(_get(cfg, "registered-examples", str, "", w)),
            max_examples_per_site=_get(cfg, "max-examples-per-site", int, 1_000_000, w),
            max_update_norm=_get(cfg, "max-update-norm", float, 100.0, w),
            metric_decimals=_get(cfg, "metric-decimals", int, 2, w),
            initial_model=_get(cfg, "initial-model", str, "", w).strip(),
            initial_model_sha256=_get(cfg, "initial-model-sha256", str, "", w).strip().lower().removeprefix("sha256:"),
            privacy=PrivacySettings(
                dp=_get(cfg, "privacy.dp", bool, False, w),
                noise_multiplier=_get(cfg, "privacy.noise-multiplier", float, 1.0, w),
                max_grad_norm=_get(cfg, "privacy.max-grad-norm", float, 1.0, w),
                delta=_get(cfg, "privacy.delta", float, 1e-5, w),
                max_epsilon=_get(cfg, "privacy.max-epsilon", float, 0.0, w),
            ),
        )
        s._validate()
        return s

    def _validate(self) -> None:
        _check(self.num_server_rounds >= 1, "num-server-rounds", self.num_server_rounds, ">= 1")
        _check(bool(self.initial_model) == bool(self.initial_model_sha256), "initial-model-sha256",
               self.initial_model_sha256, "set together with initial-model (a file is only used pinned by its sha256)")
        _check(not self.initial_model_sha256 or re.fullmatch(r"[0-9a-f]{64}", self.initial_model_sha256) is not None,
               "initial-model-sha256", self.initial_model_sha256, "64 lowercase hex digits")
        _check(self.strategy in STRATEGIES, "strategy", self.strategy, " | ".join(STRATEGIES))
        _check(0.0 < self.fraction_train <= 1.0, "fraction-train", self.fraction_train, "0 < x <= 1")
        _check(0.0 <= self.fraction_evaluate <= 1.0, "fraction-evaluate", self.fraction_evaluate, "0 <= x <= 1")
        _check(self.min_train_nodes >= 1, "min-train-nodes", self.min_train_nodes, ">= 1")
        _check(self.min_evaluate_nodes >= 0, "min-evaluate-nodes", self.min_evaluate_nodes, ">= 0")
        _check(self.min_available_nodes >= 1, "min-available-nodes", self.min_available_nodes, ">= 1")
        _check(self.round_timeout > 0, "round-timeout", self.round_timeout, "> 0 seconds")
        _check(self.node_wait_timeout > 0, "node-wait-timeout", self.node_wait_timeout, "> 0 seconds")
        _check(self.proximal_mu >= 0, "proximal-mu", self.proximal_mu, ">= 0")
        _check(self.server_lr > 0, "server-lr", self.server_lr, "> 0")
        _check(self.server_tau > 0, "server-tau", self.server_tau, "> 0")
        _check(self.model in MODELS, "model", self.model, " | ".join(MODELS))
        _check(16 <= self.image_size <= 1024, "image-size", self.image_size, "16..1024 pixels")
        _check(
            len(self.classes) >= 2 and all(self.classes) and len(set(self.classes)) == len(self.classes),
            "classes",
            ",".join(self.classes),
            "at least two distinct, non-empty, comma-separated class names",
        )
        _check(self.local_epochs >= 1, "local-epochs", self.local_epochs, ">= 1")
        _check(self.batch_size >= 1, "batch-size", self.batch_size, ">= 1")
        _check(self.optimizer in OPTIMIZERS, "optimizer", self.optimizer, " | ".join(OPTIMIZERS))
        _check(self.lr > 0, "lr", self.lr, "> 0")
        _check(0 <= self.momentum < 1, "momentum", self.momentum, "0 <= x < 1")
        _check(self.max_examples_per_site >= 1, "max-examples-per-site", self.max_examples_per_site, ">= 1")
        _check(self.max_update_norm > 0, "max-update-norm", self.max_update_norm, "> 0 (L2 norm of update - global)")
        _check(0 <= self.metric_decimals <= 6, "metric-decimals", self.metric_decimals, "0..6")
        p = self.privacy
        _check(p.noise_multiplier > 0, "privacy.noise-multiplier", p.noise_multiplier, "> 0")
        _check(p.max_grad_norm > 0, "privacy.max-grad-norm", p.max_grad_norm, "> 0")
        _check(0 < p.delta < 1, "privacy.delta", p.delta, "0 < delta < 1")
        _check(
            p.max_epsilon >= 0,
            "privacy.max-epsilon",
            p.max_epsilon,
            ">= 0 (0 = no extra per-run cap; each site's ledger budget always applies)",
        )

    def require_out_dir(self) -> Path:
        """The ServerApp's output directory: absolute, because the ServerApp runs in the
        SuperLink's (or SuperExec's) working directory, which nobody should rely on."""
        if not self.out_dir:
            raise ConfigError(
                "run-config key 'out-dir' is empty: set it to an absolute, writable directory "
                "(e.g. a PVC mount), e.g. `flwr run . <superlink> -c 'out-dir=\"/outputs/run-1\"'`"
            )
        path = Path(self.out_dir)
        if not path.is_absolute():
            raise ConfigError(
                f"run-config key 'out-dir' = {self.out_dir!r} must be an absolute path; relative "
                "paths would land in the SuperLink's working directory"
            )
        return path


@dataclass(frozen=True)
class NodeSettings:
    """What a SuperNode is told about its site through `--node-config`."""

    site: str
    data_path: Path
    data_root: Path
    torch_threads: int  # 0 = decide from the CPUs this process may use
    privacy_ledger: str = ""  # directory of the site's privacy ledger ("" = $FEDCARE_PRIVACY_LEDGER)
    dataset_id: str = ""  # the ledger's dataset id (default: the site name)
    privacy_budget_epsilon: float = 0.0  # the hospital's budget, recorded in the ledger on first use (0 = none)
    privacy_budget_delta: float = 1e-5

    @classmethod
    def from_node_config(cls, cfg: Mapping[str, Any]) -> NodeSettings:
        w = "node-config"
        raw_path = _get(cfg, "data-path", str, "", w)
        if not raw_path:
            raise ConfigError(
                "node-config key 'data-path' is missing: start the SuperNode with "
                "--node-config 'data-path=\"/data/<site>\"' pointing at the site's dataset"
            )
        data_path = Path(raw_path)
        site = _get(cfg, "site", str, "", w) or data_path.name
        threads = _get(cfg, "torch-threads", int, 0, w)
        if threads < 0:
            raise ConfigError(f"node-config key 'torch-threads' must be >= 0, got {threads}")
        budget = _get(cfg, "privacy-budget-epsilon", float, 0.0, w)
        budget_delta = _get(cfg, "privacy-budget-delta", float, 1e-5, w)
        if budget < 0 or not 0 < budget_delta < 1:
            raise ConfigError(
                f"node-config privacy-budget-epsilon must be >= 0 and privacy-budget-delta in (0, 1), got "
                f"{budget!r} and {budget_delta!r}"
            )
        return cls(
            site=site,
            data_path=data_path,
            data_root=Path(_get(cfg, "data-root", str, "/data", w)),
            torch_threads=threads,
            privacy_ledger=_get(cfg, "privacy-ledger", str, "", w),
            dataset_id=_get(cfg, "dataset-id", str, "", w) or site,
            privacy_budget_epsilon=budget,
            privacy_budget_delta=budget_delta,
        )


def default_torch_threads() -> int:
    """CPUs this process may run on, capped: more intra-op threads than that only
    adds contention, and a pod's CPU limit is usually far below the node's count."""
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        n = os.cpu_count() or 1
    return max(1, min(n, 8))
