"""Token endpoint, id_token verification and serialized refresh against a fake auth server
(real HTTP, real Redis)."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import redis
import requests
from joserfc import jwt
from joserfc.jwk import KeySet, RSAKey

from smart_launch.config import Registration
from smart_launch.discovery import SmartConfiguration
from smart_launch.errors import (
    ConfigurationError,
    GrantRejected,
    IdTokenInvalid,
    NeedsAuthorization,
)
from smart_launch.keys import generate_signing_key
from smart_launch.launch import JwksCache, refresh, verify_id_token
from smart_launch.refresh import Grant, refresh_serialized
from smart_launch.tokens import TokenSet
from tests.conftest import REDIS_URL
from tests.smart_launch.httpfake import FakeServer, Request, Response, exchange_any_code


@pytest.fixture
def redis_conn() -> Iterator[redis.Redis]:
    conn = redis.Redis.from_url(REDIS_URL)
    try:
        yield conn
    finally:
        conn.close()


@pytest.fixture
def server_key() -> RSAKey:
    return RSAKey.generate_key(2048, parameters={"kid": "srv-1"})


def conf_for(fake: FakeServer, issuer: str | None = None) -> SmartConfiguration:
    return SmartConfiguration(
        fhir_base=f"{fake.base_url}/fhir",
        issuer=issuer or f"{fake.base_url}/oauth2",
        authorization_endpoint=f"{fake.base_url}/oauth2/authorize",
        token_endpoint=f"{fake.base_url}/oauth2/token",
        jwks_uri=f"{fake.base_url}/oauth2/jwks",
    )


def reg_for(fake: FakeServer, client_type: str = "public", **kw: Any) -> Registration:
    return Registration(
        id="r1",
        iss=f"{fake.base_url}/fhir",
        client_id="caredesk",
        client_type=client_type,  # type: ignore[arg-type]
        scopes="launch openid fhirUser patient/Patient.read",
        redirect_uri="http://127.0.0.1/callback",
        **kw,
    )


def id_token(key: RSAKey, **claims: Any) -> str:
    now = int(time.time())
    payload = {"iss": "X", "aud": "caredesk", "sub": "u1", "iat": now, "exp": now + 300}
    payload.update(claims)
    payload = {k: v for k, v in payload.items() if v is not None}
    return jwt.encode({"alg": "RS256", "kid": key.kid}, payload, key, algorithms=["RS256"])


def publish(fake: FakeServer, *keys: RSAKey) -> None:
    jwks = {"keys": [k.as_dict(private=False) for k in keys]}
    fake.route("GET", "/oauth2/jwks", Response(200, jwks))


def test_id_token_with_valid_signature_issuer_and_audience_verifies(
    fake: FakeServer, http: requests.Session, server_key: RSAKey
) -> None:
    publish(fake, server_key)
    conf = conf_for(fake)
    token = id_token(server_key, iss=conf.issuer, fhirUser="Practitioner/1")
    claims = verify_id_token(token, conf, client_id="caredesk", http=http, jwks_cache=JwksCache())
    assert claims["fhirUser"] == "Practitioner/1"


def test_id_token_with_bad_signature_is_refused(
    fake: FakeServer, http: requests.Session, server_key: RSAKey
) -> None:
    publish(fake, server_key)
    forger = RSAKey.generate_key(2048, parameters={"kid": "srv-1"})  # same kid, other key
    conf = conf_for(fake)
    with pytest.raises(IdTokenInvalid, match="signature"):
        verify_id_token(
            id_token(forger, iss=conf.issuer),
            conf,
            client_id="caredesk",
            http=http,
            jwks_cache=JwksCache(),
        )


def test_id_token_from_wrong_issuer_is_refused(
    fake: FakeServer, http: requests.Session, server_key: RSAKey
) -> None:
    publish(fake, server_key)
    conf = conf_for(fake)
    # Epic-like: the FHIR base is not the issuer; a token claiming it must fail.
    with pytest.raises(IdTokenInvalid, match="different server"):
        verify_id_token(
            id_token(server_key, iss=conf.fhir_base),
            conf,
            client_id="caredesk",
            http=http,
            jwks_cache=JwksCache(),
        )


@pytest.mark.parametrize(
    ("claims", "message"),
    [
        ({"aud": "someone-else"}, "different app"),
        ({"aud": ["other", "another"]}, "different app"),
        ({"aud": None}, "lacks its aud claim"),
        ({"exp": int(time.time()) - 3600}, "expired"),
        ({"exp": None}, "lacks its exp claim"),
        ({"iat": int(time.time()) + 3600}, "issued in the future"),
        ({"iss": None}, "lacks its iss claim"),
        ({"sub": None}, "lacks its sub claim"),
    ],
)
def test_id_token_with_a_failing_claim_is_refused(
    fake: FakeServer,
    http: requests.Session,
    server_key: RSAKey,
    claims: dict[str, Any],
    message: str,
) -> None:
    publish(fake, server_key)
    conf = conf_for(fake)
    with pytest.raises(IdTokenInvalid, match=message):
        verify_id_token(
            id_token(server_key, **{"iss": conf.issuer, **claims}),
            conf,
            client_id="caredesk",
            http=http,
            jwks_cache=JwksCache(),
        )


def test_jwks_is_refetched_when_server_rotates_its_key(
    fake: FakeServer, http: requests.Session, server_key: RSAKey
) -> None:
    cache = JwksCache()
    conf = conf_for(fake)
    publish(fake, server_key)
    verify_id_token(
        id_token(server_key, iss=conf.issuer),
        conf,
        client_id="caredesk",
        http=http,
        jwks_cache=cache,
    )
    rotated = RSAKey.generate_key(2048, parameters={"kid": "srv-2"})
    publish(fake, server_key, rotated)
    verify_id_token(
        id_token(rotated, iss=conf.issuer), conf, client_id="caredesk", http=http, jwks_cache=cache
    )
    verify_id_token(
        id_token(rotated, iss=conf.issuer), conf, client_id="caredesk", http=http, jwks_cache=cache
    )
    assert len(fake.hits("/oauth2/jwks")) == 2


def test_token_error_carries_oauth_error_description(
    fake: FakeServer, http: requests.Session
) -> None:
    fake.route(
        "POST",
        "/oauth2/token",
        Response(400, {"error": "invalid_grant", "error_description": "Code was already used"}),
    )
    with pytest.raises(GrantRejected) as info:
        exchange_any_code(reg_for(fake), conf_for(fake), http)
    assert info.value.error == "invalid_grant"
    assert info.value.ehr_text == "Code was already used"
    assert info.value.party == "ehr"


def test_code_exchange_authenticates_per_client_type(
    fake: FakeServer, http: requests.Session
) -> None:
    fake.route(
        "POST",
        "/oauth2/token",
        Response(
            200, {"access_token": "a", "token_type": "Bearer", "expires_in": 60, "scope": "launch"}
        ),
    )
    key = generate_signing_key("ES384", kid="mine")
    regs = [
        reg_for(fake),
        reg_for(fake, "confidential-symmetric", client_secret="s3cret"),
        reg_for(fake, "confidential-asymmetric", signing_keys=(key,)),
    ]
    for reg in regs:
        ts = exchange_any_code(reg, conf_for(fake), http)
        assert ts.access_token == "a"
    public, symmetric, asymmetric = fake.hits("/oauth2/token")
    assert public.form()["client_id"] == "caredesk" and "authorization" not in public.headers
    assert public.form()["code_verifier"] == "v" * 43
    assert symmetric.headers["authorization"].startswith("Basic ")
    assert "client_secret" not in symmetric.form()
    form = asymmetric.form()
    assert form["client_assertion_type"] == "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
    claims = jwt.decode(
        form["client_assertion"],
        KeySet.import_key_set({"keys": [key.public_jwk()]}),
        algorithms=["ES384"],
    ).claims
    assert claims["aud"] == f"{fake.base_url}/oauth2/token"
    assert claims["exp"] - claims["iat"] <= 300


def test_refresh_without_refresh_token_needs_authorization(
    fake: FakeServer, http: requests.Session
) -> None:
    ts = TokenSet("a", "Bearer", datetime.now(UTC), "", "")
    with pytest.raises(NeedsAuthorization):
        refresh(reg_for(fake), conf_for(fake), ts, http=http)
    assert fake.requests == []


class MemoryStore:
    def __init__(self) -> None:
        self.data: dict[str, str] = {}
        self.lock = threading.Lock()

    def load(self, grant_id: str) -> TokenSet | None:
        with self.lock:
            text = self.data.get(grant_id)
        return TokenSet.from_json(text) if text else None

    def save(self, grant_id: str, token_set: TokenSet) -> None:
        with self.lock:
            self.data[grant_id] = token_set.to_json()


def test_concurrent_refreshes_of_one_grant_use_the_refresh_token_once(
    fake: FakeServer, redis_conn: redis.Redis
) -> None:
    used: list[str] = []

    def token(req: Request) -> Response:
        form = req.form()
        used.append(form["refresh_token"])
        time.sleep(0.2)  # widen the race window
        if form["refresh_token"] != "RT-1":
            return Response(400, {"error": "invalid_grant"})
        return Response(
            200,
            {
                "access_token": "AT-2",
                "token_type": "Bearer",
                "expires_in": 600,
                "refresh_token": "RT-2",
            },
        )

    fake.route("POST", "/oauth2/token", token)
    store = MemoryStore()
    grant = f"grant-{uuid.uuid4().hex}"
    store.save(
        grant,
        TokenSet(
            "AT-1", "Bearer", datetime.now(UTC) - timedelta(seconds=1), "", "", refresh_token="RT-1"
        ),
    )
    results: list[TokenSet | Exception] = []

    def worker() -> None:
        with requests.Session() as http:
            try:
                results.append(
                    refresh_serialized(
                        Grant(
                            grant,
                            reg_for(fake),
                            conf_for(fake),
                            store=store,
                            redis=redis_conn,
                            http=http,
                        )
                    )
                )
            except Exception as exc:
                results.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert used == ["RT-1"]
    assert [r.access_token for r in results if isinstance(r, TokenSet)] == ["AT-2", "AT-2"]
    stored = store.load(grant)
    assert stored is not None and stored.refresh_token == "RT-2"


def test_refresh_after_401_is_skipped_when_another_worker_already_refreshed(
    fake: FakeServer, redis_conn: redis.Redis, http: requests.Session
) -> None:
    store = MemoryStore()
    grant = f"grant-{uuid.uuid4().hex}"
    fresh = TokenSet(
        "AT-new", "Bearer", datetime.now(UTC) + timedelta(hours=1), "", "", refresh_token="RT"
    )
    store.save(grant, fresh)
    got = refresh_serialized(
        Grant(grant, reg_for(fake), conf_for(fake), store=store, redis=redis_conn, http=http),
        rejected_access_token="AT-old",
    )
    assert got.access_token == "AT-new"
    assert fake.requests == []


def test_code_exchange_without_redirect_uri_is_refused_before_any_request(
    fake: FakeServer, http: requests.Session
) -> None:
    reg = Registration(
        id="r1", iss=f"{fake.base_url}/fhir", client_id="c", client_type="public", scopes="x"
    )
    with pytest.raises(ConfigurationError, match="no redirect URI"):
        exchange_any_code(reg, conf_for(fake), http)
    assert fake.requests == []


def test_id_token_within_clock_skew_and_with_several_audiences_verifies(
    fake: FakeServer, http: requests.Session, server_key: RSAKey
) -> None:
    publish(fake, server_key)
    conf = conf_for(fake)
    now = int(time.time())
    token = id_token(
        server_key, iss=conf.issuer, aud=["other", "caredesk"], exp=now - 60, iat=now + 60
    )
    claims = verify_id_token(token, conf, client_id="caredesk", http=http, jwks_cache=JwksCache())
    assert claims["sub"] == "u1"


def test_id_token_nonce_is_checked_when_the_authorize_request_sent_one(
    fake: FakeServer, http: requests.Session, server_key: RSAKey
) -> None:
    publish(fake, server_key)
    conf, cache = conf_for(fake), JwksCache()
    good = id_token(server_key, iss=conf.issuer, nonce="n-1")
    assert verify_id_token(
        good, conf, client_id="caredesk", http=http, jwks_cache=cache, nonce="n-1"
    )
    for token in (
        id_token(server_key, iss=conf.issuer, nonce="n-2"),
        id_token(server_key, iss=conf.issuer),
    ):
        with pytest.raises(IdTokenInvalid, match="nonce"):
            verify_id_token(
                token, conf, client_id="caredesk", http=http, jwks_cache=cache, nonce="n-1"
            )


def test_epic_like_issuer_is_the_oauth_server_not_the_fhir_base(
    fake: FakeServer, http: requests.Session, server_key: RSAKey
) -> None:
    publish(fake, server_key)
    # Discovery's issuer (/oauth2) is what Epic signs with; the FHIR base is not.
    conf = conf_for(fake, issuer=f"{fake.base_url}/oauth2")
    token = id_token(server_key, iss=f"{fake.base_url}/oauth2")
    assert verify_id_token(token, conf, client_id="caredesk", http=http, jwks_cache=JwksCache())
