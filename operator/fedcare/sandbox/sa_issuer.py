"""A ServiceAccount-token issuer for tests and the sandbox: RS256 JWTs shaped like Kubernetes' projected tokens.

OpenBao's JWT auth method verifies them against the public key given to it, the way it
verifies a real cluster's tokens against the cluster's issuer keys. Used where no real API
server (and so no TokenReview) is at hand; tests with the real control plane use real tokens.
JWT encoding is three base64url segments; written here (no PyJWT in the project) with
``cryptography`` doing the signature.
"""

from __future__ import annotations

import base64
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@dataclass
class SAIssuer:
    issuer: str = "https://kubernetes.default.svc.cluster.local"
    audience: str = "fedcare-vault"
    key: rsa.RSAPrivateKey = field(default_factory=lambda: rsa.generate_private_key(public_exponent=65537,
                                                                                   key_size=2048))

    @property
    def public_pem(self) -> str:
        return self.key.public_key().public_bytes(serialization.Encoding.PEM,
                                                  serialization.PublicFormat.SubjectPublicKeyInfo).decode()

    def token(self, namespace: str, name: str, ttl: int = 600) -> str:
        now = int(time.time())
        header = {"alg": "RS256", "typ": "JWT", "kid": "test"}
        claims = {"iss": self.issuer, "aud": [self.audience], "iat": now, "nbf": now, "exp": now + ttl,
                  "sub": f"system:serviceaccount:{namespace}:{name}",
                  "kubernetes.io": {"namespace": namespace, "serviceaccount": {"name": name, "uid": "u-" + name}}}
        signing_input = f"{_b64url(json.dumps(header).encode())}.{_b64url(json.dumps(claims).encode())}"
        sig = self.key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
        return f"{signing_input}.{_b64url(sig)}"

    def write(self, path: Path, namespace: str, name: str, ttl: int = 600) -> Path:
        path.write_text(self.token(namespace, name, ttl))
        return path

    def configure(self, root_hvac, mount: str = "jwt") -> None:
        """Enable OpenBao's JWT auth at ``mount`` trusting this issuer's key."""
        if f"{mount}/" not in root_hvac.sys.list_auth_methods()["data"]:
            root_hvac.sys.enable_auth_method("jwt", path=mount)
        root_hvac.auth.jwt.configure(jwt_validation_pubkeys=[self.public_pem], bound_issuer=self.issuer,
                                     path=mount)
