"""EHR and standalone launch against the sandbox over real HTTP, per client type and per
vendor profile, ending in an authenticated FHIR read, then a refresh after expiry."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator

import pytest
import redis
import requests

from sandbox.testing import running_sandbox
from smart_launch.backend import BackendTokenCache, backend_token
from smart_launch.config import Registration
from smart_launch.discovery import discover
from smart_launch.fhir import FhirClient
from smart_launch.keys import generate_signing_key, jwks
from smart_launch.refresh import Grant, refresh_serialized, token_callbacks
from tests.conftest import REDIS_URL
from tests.smart_launch.sandbox_flow import (
    EHR_SCOPES,
    STANDALONE_SCOPES,
    MemoryStore,
    client_and_registration,
    run_launch,
)

CLIENT_TYPES = ["public", "confidential-symmetric", "confidential-asymmetric"]
PROFILES = ["smart", "epic", "oracle"]


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


@pytest.mark.parametrize("profile", PROFILES)
@pytest.mark.parametrize("client_type", CLIENT_TYPES)
@pytest.mark.parametrize("ehr", [True, False], ids=["ehr-launch", "standalone"])
def test_launch_reads_patient_and_refreshes_after_expiry(
    profile: str,
    client_type: str,
    ehr: bool,
    http: requests.Session,
    redis_conn: redis.Redis,
) -> None:
    with running_sandbox(profile=profile) as sb:
        reg = client_and_registration(
            sb, client_type, scopes=EHR_SCOPES if ehr else STANDALONE_SCOPES
        )
        launched = run_launch(sb, reg, http, ehr=ehr)
        tokens = launched.tokens
        assert tokens.patient, "launch context must carry the patient"
        assert tokens.fhir_user, "fhirUser from the verified id_token"
        assert tokens.refresh_token, "offline_access was asked for"
        with FhirClient(sb.fhir_base, lambda: tokens.access_token, session=http) as fhir:
            assert fhir.read("Patient", tokens.patient)["id"] == tokens.patient

        store, grant = MemoryStore(), f"grant-{uuid.uuid4().hex}"
        store.save(grant, tokens)
        # The sandbox now answers 401 to the first access token (no waiting for it).
        assert sb.expire_tokens() >= 1
        token, on_unauthorized = token_callbacks(
            Grant(grant, reg, launched.conf, store=store, redis=redis_conn, http=http)
        )
        with FhirClient(sb.fhir_base, token, session=http, on_unauthorized=on_unauthorized) as f:
            assert f.read("Patient", tokens.patient)["id"] == tokens.patient
        refreshed = store.load(grant)
        assert refreshed is not None and refreshed.access_token != tokens.access_token
        assert refreshed.patient == tokens.patient
        assert sb.stats()["token_requests"].get("refresh_token", 0) >= 1


def test_token_with_fewer_scopes_reports_what_is_missing(http: requests.Session) -> None:
    with running_sandbox(profile="smart") as sb:
        reg = client_and_registration(sb, "public", scopes=EHR_SCOPES)
        # The EHR allows this client less than it asks for.
        sb.register_client(
            {
                "client_id": reg.client_id,
                "type": "public",
                "redirect_uris": [reg.redirect_uri],
                "scopes": "launch openid fhirUser patient/Patient.read",
            }
        )
        tokens = run_launch(sb, reg, http, ehr=True).tokens
        # The sandbox advertises permission-v2, so CareDesk asked in v2 syntax.
        assert tokens.missing_scopes() == [
            "offline_access",
            "patient/Appointment.rs",
            "patient/Coverage.rs",
        ]
        with FhirClient(sb.fhir_base, lambda: tokens.access_token, session=http) as fhir:
            assert fhir.read("Patient", tokens.patient or "")["resourceType"] == "Patient"


def test_two_workers_refresh_rotating_token_once(
    http: requests.Session, redis_conn: redis.Redis
) -> None:
    from concurrent.futures import ThreadPoolExecutor

    with running_sandbox(profile="smart") as sb:
        reg = client_and_registration(sb, "confidential-symmetric", scopes=EHR_SCOPES)
        launched = run_launch(sb, reg, http, ehr=True)
        store, grant = MemoryStore(), f"grant-{uuid.uuid4().hex}"
        store.save(grant, launched.tokens)
        before = sb.stats()["token_requests"].get("refresh_token", 0)

        def worker() -> str:
            # Both workers just had the first access token refused (401).
            with requests.Session() as own:
                return refresh_serialized(
                    Grant(grant, reg, launched.conf, store=store, redis=redis_conn, http=own),
                    rejected_access_token=launched.tokens.access_token,
                ).access_token

        with ThreadPoolExecutor(2) as pool:
            results = list(pool.map(lambda _: worker(), range(2)))
        assert sb.stats()["token_requests"].get("refresh_token", 0) - before == 1
        assert results[0] == results[1] != launched.tokens.access_token
        stored = store.load(grant)
        assert stored is not None and stored.refresh_token != launched.tokens.refresh_token


def test_no_token_secret_or_code_in_logs(
    http: requests.Session, redis_conn: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    with running_sandbox(profile="smart") as sb:
        reg = client_and_registration(sb, "confidential-symmetric", scopes=EHR_SCOPES)
        launched = run_launch(sb, reg, http, ehr=True)
        store, grant = MemoryStore(), f"grant-{uuid.uuid4().hex}"
        store.save(grant, launched.tokens)
        sb.expire_tokens()
        token, on_unauthorized = token_callbacks(
            Grant(grant, reg, launched.conf, store=store, redis=redis_conn, http=http)
        )
        with FhirClient(sb.fhir_base, token, session=http, on_unauthorized=on_unauthorized) as f:
            f.read("Patient", launched.tokens.patient or "")
        after = store.load(grant)
        assert after is not None
    secrets_ = [
        launched.tokens.access_token,
        launched.tokens.refresh_token,
        launched.tokens.id_token,
        after.access_token,
        after.refresh_token,
        reg.client_secret,
        launched.pending.code_verifier,
        launched.code,
    ]
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert caplog.records, "DEBUG logging must have captured something"
    for secret in secrets_:
        assert secret and secret not in text


def test_backend_services_token_is_cached_and_reads_fhir(http: requests.Session) -> None:
    key = generate_signing_key("ES384")
    with running_sandbox(profile="smart") as sb:
        sb.register_client(
            {
                "client_id": "caredesk-jobs",
                "type": "confidential-asymmetric",
                "jwks": jwks([key]),
                "backend": True,
                "redirect_uris": [],
            }
        )
        reg = Registration(
            id="reg-backend",
            iss=sb.fhir_base,
            client_id="caredesk",
            client_type="public",
            scopes="launch",
            redirect_uri="http://127.0.0.1:9/callback",
            signing_keys=(key,),
            backend_client_id="caredesk-jobs",
            backend_scopes="system/Patient.read",
        )
        conf = discover(reg, http=http, cache=None)
        cache = BackendTokenCache()
        first = backend_token(reg, conf, http=http, cache=cache)
        second = backend_token(reg, conf, http=http, cache=cache)
        assert first is second
        assert sb.stats()["token_requests"]["client_credentials"] == 1
        assert first.scope_requested == "system/Patient.rs"
        with FhirClient(sb.fhir_base, lambda: first.access_token, session=http) as fhir:
            assert fhir.read("Patient", "pat-001")["id"] == "pat-001"


def test_sixty_second_tokens_ten_reads_make_at_most_one_token_request(
    http: requests.Session, redis_conn: redis.Redis
) -> None:
    with running_sandbox(profile="smart", token_lifetime_s=60) as sb:
        reg = client_and_registration(sb, "public", scopes=EHR_SCOPES)
        launched = run_launch(sb, reg, http, ehr=True)
        store, grant = MemoryStore(), f"grant-{uuid.uuid4().hex}"
        store.save(grant, launched.tokens)
        before = sum(sb.stats()["token_requests"].values())
        token, on_unauthorized = token_callbacks(
            Grant(grant, reg, launched.conf, store=store, redis=redis_conn, http=http)
        )
        with FhirClient(sb.fhir_base, token, session=http, on_unauthorized=on_unauthorized) as f:
            for _ in range(10):
                assert f.read("Patient", launched.tokens.patient or "")["resourceType"] == "Patient"
        assert sum(sb.stats()["token_requests"].values()) - before <= 1
