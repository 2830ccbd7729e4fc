"""The ServiceAccount-token issuer lives in the sandbox (it gives sandbox site agents their Vault
identity); tests import it from here as before."""

from fedcare.sandbox.sa_issuer import SAIssuer, _b64url  # noqa: F401
