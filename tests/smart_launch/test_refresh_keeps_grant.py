"""A refresh the server accepted is never lost: it is stored before the refreshed
id_token is checked, a bad refreshed id_token is dropped (the launch's identity stands),
and short-lived tokens refresh once, not on every request."""

from __future__ import annotations

import logging
import secrets
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
import redis
import requests
from joserfc import jwt
from joserfc.jwk import RSAKey

from smart_launch.config import Registration
from smart_launch.discovery import SmartConfiguration
from smart_launch.errors import GrantRejected
from smart_launch.fhir import FhirClient
from smart_launch.refresh import Grant, refresh_serialized, token_callbacks
from smart_launch.tokens import MAX_REFRESH_MARGIN, TokenSet, normalize_fhir_user
from tests.conftest import REDIS_URL
from tests.smart_launch.httpfake import FakeServer, Request, Response
from tests.smart_launch.sandbox_flow import MemoryStore

TZ = timezone(timedelta(hours=5, minutes=30))


@pytest.fixture
def redis_conn() -> Iterator[redis.Redis]:
    conn = redis.Redis.from_url(REDIS_URL)
    try:
        yield conn
    finally:
        conn.close()


class RotatingServer:
    """A token endpoint that rotates the refresh token on every use (the old one dies at
    once, as on a real server seen in integration), and whose refreshed id_token is
    shaped by ``id_token_claims`` (None: no id_token at all)."""

    def __init__(self, fake: FakeServer, key: RSAKey) -> None:
        self.fake, self.key = fake, key
        self.live_refresh = "RT-1"
        self.issued = 0
        self.id_token_claims: dict[str, Any] | None = {"aud": None}
        self.lifetime = 600
        fake.route("POST", "/oauth2/token", self.token)
        fake.route("GET", "/oauth2/jwks", Response(200, {"keys": [key.as_dict(private=False)]}))

    def id_token(self) -> str:
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": f"{self.fake.base_url}/oauth2",
            "aud": "caredesk",
            "sub": "u1",
            "iat": now,
            "exp": now + 300,
            "fhirUser": "Practitioner/other",
        }
        claims.update(self.id_token_claims or {})
        claims = {k: v for k, v in claims.items() if v is not None}
        return jwt.encode({"alg": "RS256", "kid": self.key.kid}, claims, self.key)

    def token(self, req: Request) -> Response:
        form = req.form()
        if form.get("refresh_token") != self.live_refresh:
            return Response(400, {"error": "invalid_grant", "error_description": "dead token"})
        self.issued += 1
        self.live_refresh = f"RT-{self.issued + 1}"
        body: dict[str, Any] = {
            "access_token": f"AT-{self.issued + 1}",
            "token_type": "Bearer",
            "expires_in": self.lifetime,
            "refresh_token": self.live_refresh,
            "scope": "launch openid fhirUser patient/Patient.rs",
        }
        if self.id_token_claims is not None:
            body["id_token"] = self.id_token()
        return Response(200, body)


def conf_for(fake: FakeServer) -> SmartConfiguration:
    return SmartConfiguration(
        fhir_base=f"{fake.base_url}/fhir",
        issuer=f"{fake.base_url}/oauth2",
        authorization_endpoint=f"{fake.base_url}/oauth2/authorize",
        token_endpoint=f"{fake.base_url}/oauth2/token",
        jwks_uri=f"{fake.base_url}/oauth2/jwks",
    )


def reg_for(fake: FakeServer) -> Registration:
    return Registration(
        id="r1",
        iss=f"{fake.base_url}/fhir",
        client_id="caredesk",
        client_type="public",
        scopes="launch openid fhirUser offline_access patient/Patient.rs",
        redirect_uri="http://127.0.0.1/callback",
    )


def launched(expires_in: float = -1, lifetime: float = 600) -> TokenSet:
    """What the launch left: identity verified then (Practitioner/9, sub u1)."""
    now = datetime.now(TZ)
    return TokenSet(
        "AT-1",
        "Bearer",
        now + timedelta(seconds=expires_in),
        "launch openid fhirUser patient/Patient.rs",
        "launch openid fhirUser offline_access patient/Patient.rs",
        refresh_token="RT-1",
        id_token="launch-id-token",
        id_claims={"sub": "u1", "fhirUser": "Practitioner/9"},
        fhir_user="Practitioner/9",
        patient="p1",
        issued_at=now + timedelta(seconds=expires_in - lifetime),
    )


@pytest.fixture
def server_key() -> RSAKey:
    return RSAKey.generate_key(2048, parameters={"kid": "srv-1"})


def refresh_now(grant: str, fake: FakeServer, store: MemoryStore, conn: redis.Redis) -> TokenSet:
    with requests.Session() as http:
        return refresh_serialized(
            Grant(grant, reg_for(fake), conf_for(fake), store=store, redis=conn, http=http)
        )


def test_refreshed_id_token_without_aud_keeps_the_new_tokens_and_the_launch_identity(
    fake: FakeServer,
    server_key: RSAKey,
    redis_conn: redis.Redis,
    caplog: pytest.LogCaptureFixture,
) -> None:
    server = RotatingServer(fake, server_key)
    store, grant = MemoryStore(), f"grant-{uuid.uuid4().hex}"
    store.save(grant, launched())
    caplog.set_level(logging.WARNING, logger="smart_launch")
    got = refresh_now(grant, fake, store, redis_conn)
    stored = store.load(grant)
    assert stored is not None and stored == got
    assert (stored.access_token, stored.refresh_token) == ("AT-2", "RT-2")
    # The unverified id_token is not kept; the identity of the launch is.
    assert stored.id_token == "launch-id-token"
    assert stored.fhir_user == "Practitioner/9" and stored.id_claims["sub"] == "u1"
    assert stored.patient == "p1"
    assert server.issued == 1
    assert any("refreshed id_token dropped" in r.getMessage() for r in caplog.records)


def test_refresh_is_stored_before_the_refreshed_id_token_is_checked(
    fake: FakeServer, server_key: RSAKey, redis_conn: redis.Redis
) -> None:
    RotatingServer(fake, server_key)
    store, grant = MemoryStore(), f"grant-{uuid.uuid4().hex}"
    store.save(grant, launched())
    seen_at_jwks_fetch: list[str | None] = []

    def jwks(req: Request) -> Response:
        current = store.load(grant)
        seen_at_jwks_fetch.append(current.refresh_token if current else None)
        return Response(200, {"keys": [server_key.as_dict(private=False)]})

    fake.route("GET", "/oauth2/jwks", jwks)
    refresh_now(grant, fake, store, redis_conn)
    # Checking the id_token needs the JWKS; by then the new refresh token is stored.
    assert seen_at_jwks_fetch == ["RT-2"]


@pytest.mark.parametrize(
    "claims",
    [
        {"aud": None},  # the SMART reference launcher
        {"aud": "someone-else"},
        {"exp": int(time.time()) - 3600},
        {"iss": "https://elsewhere.example"},
        {"sub": "another-user"},
        None,  # no id_token in the refresh response at all
    ],
    ids=["no-aud", "other-aud", "expired", "other-iss", "other-sub", "omitted"],
)
def test_rotating_server_refresh_then_failed_id_token_check_leaves_a_working_grant(
    fake: FakeServer, server_key: RSAKey, redis_conn: redis.Redis, claims: dict[str, Any] | None
) -> None:
    server = RotatingServer(fake, server_key)
    server.id_token_claims = claims
    store, grant = MemoryStore(), f"grant-{uuid.uuid4().hex}"
    store.save(grant, launched())
    first = refresh_now(grant, fake, store, redis_conn)
    assert first.refresh_token == "RT-2" and server.live_refresh == "RT-2"
    # The access token dies; the grant must still refresh (with RT-2: RT-1 is dead).
    with requests.Session() as http:
        second = refresh_serialized(
            Grant(grant, reg_for(fake), conf_for(fake), store=store, redis=redis_conn, http=http),
            rejected_access_token=first.access_token,
        )
    assert (second.access_token, second.refresh_token) == ("AT-3", "RT-3")
    assert second.fhir_user == "Practitioner/9"


def test_valid_refreshed_id_token_updates_the_identity_claims(
    fake: FakeServer, server_key: RSAKey, redis_conn: redis.Redis
) -> None:
    server = RotatingServer(fake, server_key)
    server.id_token_claims = {"fhirUser": f"{fake.base_url}/fhir/Practitioner/9"}
    store, grant = MemoryStore(), f"grant-{uuid.uuid4().hex}"
    store.save(grant, launched())
    got = refresh_now(grant, fake, store, redis_conn)
    assert got.id_token not in (None, "launch-id-token")
    assert got.fhir_user == "Practitioner/9"  # absolute under the base -> relative
    assert store.load(grant) == got


def test_refresh_refused_with_invalid_grant_means_launch_again(
    fake: FakeServer, server_key: RSAKey, redis_conn: redis.Redis
) -> None:
    server = RotatingServer(fake, server_key)
    server.live_refresh = "RT-somebody-else"
    store, grant = MemoryStore(), f"grant-{uuid.uuid4().hex}"
    store.save(grant, launched())
    with pytest.raises(GrantRejected) as info:
        refresh_now(grant, fake, store, redis_conn)
    assert (info.value.party, info.value.ehr_text) == ("ehr", "dead token")


def test_sixty_second_tokens_ten_requests_in_a_row_make_at_most_one_token_request(
    fake: FakeServer, server_key: RSAKey, redis_conn: redis.Redis
) -> None:
    server = RotatingServer(fake, server_key)
    server.lifetime = 60
    fake.route("GET", "/fhir/Patient/p1", Response(200, {"resourceType": "Patient", "id": "p1"}))
    store, grant = MemoryStore(), f"grant-{uuid.uuid4().hex}"
    # A fresh 60-second token: a fixed 60-second margin called it "expiring" at once.
    store.save(grant, launched(expires_in=60, lifetime=60))
    with requests.Session() as http:
        token, on_unauthorized = token_callbacks(
            Grant(grant, reg_for(fake), conf_for(fake), store=store, redis=redis_conn, http=http)
        )
        with FhirClient(
            f"{fake.base_url}/fhir", token, session=http, on_unauthorized=on_unauthorized
        ) as fhir:
            for _ in range(10):
                assert fhir.read("Patient", "p1")["id"] == "p1"
    assert len(fake.hits("/oauth2/token")) <= 1


class CountingStore(MemoryStore):
    def __init__(self) -> None:
        super().__init__()
        self.loads = 0

    def load(self, grant_id: str) -> TokenSet | None:
        self.loads += 1
        return super().load(grant_id)


def test_one_clients_requests_load_the_token_set_once_while_it_is_fresh(
    fake: FakeServer, server_key: RSAKey, redis_conn: redis.Redis
) -> None:
    """One page's reads (or one job's) read and decrypt the stored grant once, not once
    per FHIR request; a 401 still loads it again (another process may have refreshed)."""
    server = RotatingServer(fake, server_key)
    fake.route("GET", "/fhir/Patient/p1", Response(200, {"resourceType": "Patient", "id": "p1"}))
    store, grant = CountingStore(), f"grant-{uuid.uuid4().hex}"
    store.save(grant, launched(expires_in=600))
    with requests.Session() as http:
        token, on_unauthorized = token_callbacks(
            Grant(grant, reg_for(fake), conf_for(fake), store=store, redis=redis_conn, http=http)
        )
        with FhirClient(
            f"{fake.base_url}/fhir", token, session=http, on_unauthorized=on_unauthorized
        ) as fhir:
            for _ in range(6):
                assert fhir.read("Patient", "p1")["id"] == "p1"
    assert store.loads == 1
    assert server.issued == 0


NOW = datetime(2026, 11, 3, 9, 30, tzinfo=TZ)


@pytest.mark.parametrize(
    ("lifetime", "margin"),
    [
        (60, timedelta(seconds=6)),
        (2, timedelta(seconds=0.2)),
        (600, timedelta(seconds=60)),
        (3600, MAX_REFRESH_MARGIN),
        (None, MAX_REFRESH_MARGIN),  # stored before issued_at was recorded
    ],
)
def test_refresh_margin_is_a_tenth_of_the_lifetime_at_most_a_minute(
    lifetime: int | None, margin: timedelta
) -> None:
    expires = NOW + timedelta(seconds=lifetime or 60)
    ts = TokenSet("a", "Bearer", expires, "", "", issued_at=NOW if lifetime is not None else None)
    assert ts.refresh_margin() == margin
    assert not ts.expires_soon(expires - margin - timedelta(milliseconds=10))
    assert ts.expires_soon((expires - margin).astimezone(UTC))


def test_issued_at_survives_json() -> None:
    ts = TokenSet.from_response(
        {"access_token": "a", "token_type": "Bearer", "expires_in": 60},
        scope_requested="",
        now=NOW,
    )
    again = TokenSet.from_json(ts.to_json())
    assert again.issued_at == NOW and again.refresh_margin() == timedelta(seconds=6)


@pytest.mark.parametrize(
    ("claim", "expected"),
    [
        ("Practitioner/123", "Practitioner/123"),
        ("https://ehr.test/fhir/Practitioner/123", "Practitioner/123"),
        ("https://ehr.test/fhir/Practitioner/123/_history/4", "Practitioner/123"),
        ("https://EHR.test:443/fhir/PractitionerRole/r-1", "PractitionerRole/r-1"),
        ("/Patient/p.9", "Patient/p.9"),
        # Another server's resource stays absolute: it cannot be read from this base.
        ("https://other.test/fhir/Practitioner/1", "https://other.test/fhir/Practitioner/1"),
        ("just-a-name", None),
        ("", None),
        (7, None),
    ],
)
def test_fhir_user_is_normalised_to_a_relative_reference(
    claim: object, expected: str | None
) -> None:
    assert normalize_fhir_user(claim, "https://ehr.test/fhir/") == expected


def test_token_set_normalises_fhir_user_from_the_id_token_claims() -> None:
    ts = TokenSet.from_response(
        {"access_token": secrets.token_hex(4), "token_type": "Bearer"},
        scope_requested="openid fhirUser",
        now=NOW,
        id_claims={"fhirUser": "https://ehr.test/fhir/Practitioner/123"},
        fhir_base="https://ehr.test/fhir",
    )
    assert ts.fhir_user == "Practitioner/123"
