from __future__ import annotations

from datetime import UTC, datetime

import pytest
from joserfc import jws, jwt
from joserfc.jwk import KeySet

from smart_launch.backend import client_assertion
from smart_launch.keys import generate_signing_key, jwks


@pytest.mark.parametrize("alg", ["RS384", "ES384"])
def test_generated_key_exports_public_jwk_with_kid_and_alg(alg: str) -> None:
    key = generate_signing_key(alg, kid="k-1")  # type: ignore[arg-type]
    jwk = key.public_jwk()
    assert jwk["kid"] == "k-1"
    assert jwk["alg"] == alg
    assert jwk["use"] == "sig"
    assert jwk["kty"] == ("RSA" if alg == "RS384" else "EC")
    # Only the public half: no private parameters leave the process.
    assert not {"d", "p", "q", "dp", "dq", "qi"} & set(jwk)
    assert "PRIVATE KEY" in key.private_pem
    assert "private_pem=<hidden>" in repr(key)


def test_generated_keys_get_distinct_kids_by_default() -> None:
    assert generate_signing_key("ES384").kid != generate_signing_key("ES384").kid


def test_jwks_keeps_rotated_keys_published() -> None:
    old, new = generate_signing_key("RS384", "old"), generate_signing_key("ES384", "new")
    published = jwks([new, old])
    assert [k["kid"] for k in published["keys"]] == ["new", "old"]


def test_jwks_rejects_duplicate_kid() -> None:
    with pytest.raises(ValueError, match="duplicate kid"):
        jwks([generate_signing_key("ES384", "x"), generate_signing_key("ES384", "x")])


def test_unsupported_alg_is_refused() -> None:
    with pytest.raises(ValueError):
        generate_signing_key("RS256")  # type: ignore[arg-type]


@pytest.mark.parametrize("alg", ["RS384", "ES384"])
def test_client_assertion_claims_follow_smart_backend_services(alg: str) -> None:
    key = generate_signing_key(alg, kid="kid-9")  # type: ignore[arg-type]
    now = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
    token = client_assertion("client-a", "https://ehr.test/token", key, now=now)
    header = jws.extract_compact(token.encode()).headers()
    assert header["alg"] == alg
    assert header["kid"] == "kid-9"
    claims = jwt.decode(token, KeySet.import_key_set(jwks([key])), algorithms=[alg]).claims
    assert claims["iss"] == claims["sub"] == "client-a"
    assert claims["aud"] == "https://ehr.test/token"
    assert claims["exp"] - int(now.timestamp()) <= 300
    assert claims["exp"] > int(now.timestamp())
    second = client_assertion("client-a", "https://ehr.test/token", key, now=now)
    other = jwt.decode(second, KeySet.import_key_set(jwks([key])), algorithms=[alg]).claims
    assert other["jti"] != claims["jti"]
