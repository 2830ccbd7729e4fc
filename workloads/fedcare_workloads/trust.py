"""What the ServerApp trusts about a reply, and what it does not.

Trusted (enforced by the SuperLink, Flower 1.42):
* **which node a reply is about.** The SuperLink stores a reply only if its
  src_node_id equals the dst_node_id of the message it answers
  (LinkState.store_message_res), and the ServerApp maps every reply to the
  destination of the message it sent (replies.destination_of). With SuperNode
  authentication (`--enable-supernode-auth`, TLS), every Fleet request is signed
  with the node's private key and the SuperLink refuses a request whose node_id
  is not the one registered for that key (NodeAuthServerInterceptor); the node
  id is fixed at `flwr supernode register` and `grid.get_nodes()` returns the
  registered public key with it.
* **who a node is**, only through the operator's table, run-config
  `site-identities` (`site-a=node:<id>` or `site-a=key:<sha256 of the
  registered public key>`), never through the reply. With the table set, a
  reply's self-declared `site` is ignored (a mismatch is rejected), an error
  text's `site=` prefix is ignored, and a node missing from the table is
  refused.

Not trusted (checked or bounded here):
* `num-examples`: the weight is capped at what the site registered (run-config
  `registered-examples`, from its HospitalNode dataset size or its assignment)
  and at `max-examples-per-site`; the reported and used values are recorded.
* the update itself: its L2 distance to the global model is clipped to
  `max-update-norm` (direction kept), recorded per site and in the model card.

Residual gaps: without SuperNode authentication node ids are random per
SuperNode start and unauthenticated, so `node:` entries only bind to whatever
connected with that id: run with authentication in production. Flower does not
cross-check a pushed reply's src_node_id against the authenticated node that
pushed it; forging a reply for another node would still need the message id of
that node's instruction, which it never receives.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field

import numpy as np


def key_fingerprint(public_key: bytes) -> str:
    return "key:" + hashlib.sha256(bytes(public_key)).hexdigest()


class Untrusted(ValueError):
    """A reply from a node the operator's table does not vouch for."""


@dataclass
class TrustPolicy:
    identities: dict[int | str, str] = field(default_factory=dict)
    registered_examples: dict[str, int] = field(default_factory=dict)
    max_examples_per_site: int = 1_000_000
    max_update_norm: float = 100.0

    @property
    def enforced(self) -> bool:
        return bool(self.identities)

    def names_from_grid(self, nodes) -> dict[int, str]:
        """node_id -> site for the nodes the table names, by node id or by registered key."""
        out: dict[int, str] = {}
        for ref, site in self.identities.items():
            if isinstance(ref, int):
                out[ref] = site
        for info in nodes:
            key = bytes(getattr(info, "public_key", b"") or b"")
            if key and key_fingerprint(key) in self.identities:
                out[int(info.node_id)] = self.identities[key_fingerprint(key)]
        return out

    def cap_examples(self, site: str, reported: int) -> int:
        if self.registered_examples and site not in self.registered_examples:
            raise Untrusted(f"site {site} has no entry in run-config registered-examples; its update is not weighted")
        cap = min(self.registered_examples.get(site, self.max_examples_per_site), self.max_examples_per_site)
        return min(int(reported), cap)

    def clip(
        self, update: dict[str, np.ndarray], reference: dict[str, np.ndarray]
    ) -> tuple[dict[str, np.ndarray], float, bool]:
        """(update with ||update - reference||_2 <= max_update_norm, the original norm, clipped?)."""
        sq = 0.0
        for name, ref in reference.items():
            d = update[name].astype(np.float64) - ref
            sq += float(np.dot(d.ravel(), d.ravel()))
        norm = math.sqrt(sq)
        if norm <= self.max_update_norm:
            return update, norm, False
        scale = self.max_update_norm / norm
        clipped = {
            name: (ref + (update[name].astype(np.float64) - ref) * scale).astype(ref.dtype)
            for name, ref in reference.items()
        }
        return clipped, norm, True
