"""The release digest: the exact bytes the release signature covers ("fedcare-release-digest/v1").

    message = UTF-8 of the JSON object
      {"format": "fedcare-release-digest/v1", "modelName": ..., "modelSha256": <64 hex>,
       "provenanceRoot": <64 hex>, "roundId": <64 hex>, "version": ...}
    with keys sorted, separators (",", ":"), no whitespace, ASCII only (json.dumps ensure_ascii).

Deterministic (sorted keys, fixed separators) and readable by anyone with a JSON library. The
signature (ed25519, by the Vault transit key) is over these bytes; ``fedcare verify`` rebuilds
them from the artifact, the provenance file and the release's name/version and checks it.

roundId is sha256("<namespace>/<FederatedRound name>") in hex (the bytes32 stored on-chain),
or sha256("") when the release names no round.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

FORMAT = "fedcare-release-digest/v1"


def round_id(namespace: str | None, name: str | None) -> str:
    text = f"{namespace}/{name}" if name else ""
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass(frozen=True)
class ReleaseDigest:
    model_name: str
    version: str
    model_sha256: str
    provenance_root: str
    round_id: str

    def message(self) -> bytes:
        return json.dumps({"format": FORMAT, "modelName": self.model_name, "modelSha256": self.model_sha256,
                           "provenanceRoot": self.provenance_root, "roundId": self.round_id,
                           "version": self.version}, sort_keys=True, separators=(",", ":")).encode()
