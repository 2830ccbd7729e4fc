"""Where the hub's round execution gets its settings: flags of ``fedcare hub`` or the environment.

| Setting | Flag | Environment | Default |
|---|---|---|---|
| artifact store folder (mounted at the same path in the SuperLink pods) | --artifact-dir | FEDCARE_ARTIFACT_DIR | /var/lib/fedcare/artifacts |
| artifact store PVC (in the round's namespace) | --artifact-claim | FEDCARE_ARTIFACT_CLAIM | fedcare-artifacts |
| Flower app submitted with ``flwr run`` | --flower-app | FEDCARE_FLOWER_APP | the installed workloads/ |
| per-SuperLink flwr CLI homes | — | FEDCARE_FLWR_HOME | <artifact dir>/../flwr-home |
| Fleet address given to sites (separate site clusters) | --fleet-address | FEDCARE_FLEET_ADDRESS | the Service DNS name |
| plaintext Flower (development only) | --insecure-flower | FEDCARE_INSECURE_FLOWER=1 | off |
| seconds between two passes over a running round | — | FEDCARE_ROUND_POLL | 2 |
| S3-compatible copy of each result (hub/artifact_upload.py) | — | FEDCARE_ARTIFACT_S3_URL (+ _ENDPOINT, _REGION, AWS_* credentials) | off |
"""

from __future__ import annotations

import logging
import os
import pathlib

from .aggregator import AggregatorConfig
from .artifact_upload import S3ResultStore
from .flower_runs import FlowerCLI
from .round_scheduler import RoundConfig

log = logging.getLogger(__name__)


def default_app() -> str:
    """The workloads/ Flower app next to the installed fedcare_workloads package ('' if absent)."""
    try:
        import fedcare_workloads
    except ImportError:
        return ""
    root = pathlib.Path(fedcare_workloads.__file__).resolve().parents[1]
    return str(root) if (root / "pyproject.toml").is_file() else ""


def round_config(*, artifact_dir: str | None = None, artifact_claim: str | None = None, app: str | None = None,
                 fleet_address: str | None = None, insecure: bool | None = None,
                 poll_interval: float | None = None) -> RoundConfig:
    env = os.environ
    artifact_dir = artifact_dir or env.get("FEDCARE_ARTIFACT_DIR") or "/var/lib/fedcare/artifacts"
    if insecure is None:
        insecure = env.get("FEDCARE_INSECURE_FLOWER", "") in ("1", "true", "yes")
    if insecure:
        log.warning("DEVELOPMENT MODE: Flower runs without TLS and without SuperNode authentication "
                    "(--insecure-flower). Never use this with real patient data.")
    home = env.get("FEDCARE_FLWR_HOME") or str(pathlib.Path(artifact_dir).parent / "flwr-home")
    return RoundConfig(
        flower=FlowerCLI(pathlib.Path(home)),
        app=app or env.get("FEDCARE_FLOWER_APP") or default_app(),
        aggregator=AggregatorConfig(
            artifact_dir=artifact_dir,
            artifact_claim=artifact_claim or env.get("FEDCARE_ARTIFACT_CLAIM") or "fedcare-artifacts",
            insecure=insecure, external_address=fleet_address or env.get("FEDCARE_FLEET_ADDRESS", "")),
        poll_interval=poll_interval or float(env.get("FEDCARE_ROUND_POLL") or 2.0),
        s3=S3ResultStore.from_env(env))
