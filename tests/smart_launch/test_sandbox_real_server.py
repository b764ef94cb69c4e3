"""What a real third-party SMART server does that a by-the-book one does not, against the
sandbox's knobs and its ``thirdparty`` profile, over real HTTP: a launch link whose iss
ends with "/", relative or absolute fhirUser, refresh tokens rotated on every use,
refreshed id_tokens without aud or none at all, scopes unticked at consent."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator
from urllib.parse import parse_qsl, urlsplit

import pytest
import redis
import requests

from sandbox.testing import running_sandbox
from smart_launch.discovery import find_registration
from smart_launch.fhir import FhirClient
from smart_launch.refresh import Grant, token_callbacks
from tests.conftest import REDIS_URL
from tests.smart_launch.sandbox_flow import (
    EHR_SCOPES,
    MemoryStore,
    client_and_registration,
    run_launch,
)


@pytest.fixture
def redis_conn() -> Iterator[redis.Redis]:
    conn = redis.Redis.from_url(REDIS_URL)
    try:
        yield conn
    finally:
        conn.close()


@pytest.fixture
def http() -> Iterator[requests.Session]:
    with requests.Session() as session:
        yield session


def test_thirdparty_server_launch_and_refreshes_keep_a_working_grant(
    http: requests.Session, redis_conn: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="smart_launch")
    with running_sandbox(profile="thirdparty") as sb:
        reg = client_and_registration(sb, "confidential-symmetric", scopes=EHR_SCOPES)
        sb.register_client(
            {
                "client_id": reg.client_id,
                "type": "confidential-symmetric",
                "client_secret": reg.client_secret,
                "redirect_uris": [reg.redirect_uri],
                "launch_url": "http://127.0.0.1:9/launch",
            }
        )
        link = dict(parse_qsl(urlsplit(sb.launch(reg.client_id, patient="pat-001")["url"]).query))
        # The launch link's iss ends with "/"; it still finds the registered base.
        assert link["iss"] == sb.fhir_base + "/"
        assert find_registration(link["iss"], {reg.iss: reg}) is reg
        launched = run_launch(sb, reg, http, ehr=True)
        assert launched.tokens.fhir_user is not None
        assert launched.tokens.fhir_user.startswith("Practitioner/")
        identity = launched.tokens.fhir_user

        store, grant = MemoryStore(), f"grant-{uuid.uuid4().hex}"
        store.save(grant, launched.tokens)
        token, on_unauthorized = token_callbacks(
            Grant(grant, reg, launched.conf, store=store, redis=redis_conn, http=http)
        )
        seen_refresh_tokens = {launched.tokens.refresh_token}
        with FhirClient(sb.fhir_base, token, session=http, on_unauthorized=on_unauthorized) as f:
            for _ in range(2):
                # Each access token dies; each refresh rotates the refresh token and
                # sends an id_token without aud, which is dropped, not the tokens.
                sb.expire_tokens()
                assert f.read("Patient", "pat-001")["id"] == "pat-001"
                stored = store.load(grant)
                assert stored is not None and stored.refresh_token not in seen_refresh_tokens
                seen_refresh_tokens.add(stored.refresh_token)
                assert stored.fhir_user == identity
                assert stored.id_token == launched.tokens.id_token
        assert sb.stats()["token_requests"]["refresh_token"] == 2
    dropped = [r for r in caplog.records if "refreshed id_token dropped" in r.getMessage()]
    assert len(dropped) == 2


def test_refresh_without_any_id_token_keeps_the_launch_identity(
    http: requests.Session, redis_conn: redis.Redis
) -> None:
    with running_sandbox(profile="smart", refresh_id_token="omit") as sb:
        reg = client_and_registration(sb, "public", scopes=EHR_SCOPES)
        launched = run_launch(sb, reg, http, ehr=True)
        store, grant = MemoryStore(), f"grant-{uuid.uuid4().hex}"
        store.save(grant, launched.tokens)
        sb.expire_tokens()
        token, on_unauthorized = token_callbacks(
            Grant(grant, reg, launched.conf, store=store, redis=redis_conn, http=http)
        )
        with FhirClient(sb.fhir_base, token, session=http, on_unauthorized=on_unauthorized) as f:
            assert f.read("Patient", "pat-001")["id"] == "pat-001"
        stored = store.load(grant)
        assert stored is not None and stored.access_token != launched.tokens.access_token
        assert (stored.fhir_user, stored.id_claims) == (
            launched.tokens.fhir_user,
            launched.tokens.id_claims,
        )


@pytest.mark.parametrize("relative", [True, False], ids=["relative", "absolute"])
def test_fhir_user_is_one_relative_reference_whatever_the_server_sends(
    http: requests.Session, relative: bool
) -> None:
    with running_sandbox(profile="smart", fhir_user_relative=relative) as sb:
        reg = client_and_registration(sb, "public", scopes=EHR_SCOPES)
        tokens = run_launch(sb, reg, http, ehr=True).tokens
    claim = tokens.id_claims["fhirUser"]
    assert claim.startswith("http") is not relative
    assert tokens.fhir_user == claim.removeprefix(sb.fhir_base + "/")
    assert tokens.fhir_user is not None and tokens.fhir_user.startswith("Practitioner/")


def test_scopes_unticked_at_consent_are_reported_missing_and_the_rest_works(
    http: requests.Session,
) -> None:
    with running_sandbox(
        profile="smart", consent_drop_scopes=["patient/Coverage.rs", "offline_access"]
    ) as sb:
        reg = client_and_registration(sb, "public", scopes=EHR_SCOPES)
        tokens = run_launch(sb, reg, http, ehr=True).tokens
        assert tokens.missing_scopes() == ["offline_access", "patient/Coverage.rs"]
        assert tokens.refresh_token is None
        with FhirClient(sb.fhir_base, lambda: tokens.access_token, session=http) as fhir:
            assert fhir.read("Patient", tokens.patient or "")["resourceType"] == "Patient"
