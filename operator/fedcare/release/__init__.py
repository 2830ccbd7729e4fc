"""The release pipeline's pure parts: artifact fetch and hash, provenance Merkle tree, release digest,
and the auditor's verification. The hub (hub/release_service.py) and `fedcare verify` use them."""
