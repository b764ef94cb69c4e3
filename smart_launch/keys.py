"""Signing-key generation and JWKS export for private_key_jwt and backend services."""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from typing import Any

from joserfc.jwk import ECKey, RSAKey

from .config import Alg, SigningKey

# SMART App Launch 2.x requires servers to support RS384 and ES384 for client
# assertions; RSA 2048 is the floor most EHRs (Epic included) accept.
RSA_KEY_SIZE = 2048


def generate_signing_key(alg: Alg = "RS384", kid: str | None = None) -> SigningKey:
    """A fresh key pair for ``alg`` (RS384: RSA 2048; ES384: P-384)."""
    kid = kid or uuid.uuid4().hex
    key: RSAKey | ECKey
    if alg == "RS384":
        key = RSAKey.generate_key(RSA_KEY_SIZE, private=True)
    elif alg == "ES384":
        key = ECKey.generate_key("P-384", private=True)
    else:
        raise ValueError(f"unsupported signing algorithm {alg!r}")
    pem = key.as_pem(private=True)
    return SigningKey(kid=kid, alg=alg, private_pem=pem.decode("ascii"))


def jwks(keys: Iterable[SigningKey]) -> dict[str, Any]:
    """The public JWK Set to serve at /.well-known/jwks.json (one entry per key, by kid)."""
    seen: set[str] = set()
    out: list[dict[str, Any]] = []
    for key in keys:
        if key.kid in seen:
            raise ValueError(f"duplicate kid {key.kid!r}")
        seen.add(key.kid)
        out.append(key.public_jwk())
    return {"keys": out}
