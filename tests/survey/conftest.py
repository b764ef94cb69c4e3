"""Survey test helpers: an app with the survey blueprints, a registration, invitations,
and the app served over real HTTP on loopback."""

from __future__ import annotations

import secrets
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import pytest
import redis
import requests

from helpdesk import registry
from helpdesk import surveys as domain
from helpdesk.crypto import get_vault
from helpdesk.db import get_store
from helpdesk.models import SurveyInvite
from helpdesk.timeutil import utcnow
from tests.conftest import SURVEY_REDIS_URL
from tests.ehr import connect_backend, sandbox_token
from tests.live import serve

CLINIC = "CareDesk Clinic - Lakeview"


def register_survey(app) -> None:  # type: ignore[no-untyped-def]
    """create_app registers the survey and report blueprints; check it did."""
    assert "survey" in app.blueprints and "reports" in app.blueprints


# Redis database of the survey tests: not the shared test database 13, which other test
# runs flush and whose "default" queue other test workers consume.


@pytest.fixture
def survey_redis_url() -> Iterator[str]:
    conn = redis.Redis.from_url(SURVEY_REDIS_URL)
    conn.flushdb()
    try:
        yield SURVEY_REDIS_URL
    finally:
        conn.flushdb()
        conn.close()


def make_survey_app(make_app, redis_url: str, **config: Any):  # type: ignore[no-untyped-def]
    """The survey tests' app: its own queue on ``redis_url``; ``config`` adds settings
    (``DATABASE_URL``: another store than the test's SQLite)."""
    queue = f"survey-test-{secrets.token_hex(4)}"
    app = make_app(
        REDIS_URL=redis_url,
        QUEUES=queue,
        TASK_QUEUE=queue,
        SURVEY_PUBLIC_URL="http://127.0.0.1:9",
        # Short leases and retries so fault tests take seconds.
        TASK_LEASE_SECONDS=2,
        RETRY_BASE_SECONDS=1,
        TASK_SWEEP_GRACE_SECONDS=0,
        **config,
    )
    register_survey(app)
    return app


@pytest.fixture
def survey_app(make_app, survey_redis_url: str):  # type: ignore[no-untyped-def]
    return make_survey_app(make_app, survey_redis_url)


@pytest.fixture
def reg_id(survey_app) -> int:  # type: ignore[no-untyped-def]
    return add_registration(survey_app, "https://ehr.example/fhir")


def add_registration(app, iss: str, **kwargs: Any) -> int:  # type: ignore[no-untyped-def]
    with app.app_context(), get_store(app).session() as session:
        reg = registry.upsert(
            session,
            get_vault(app),
            slug=kwargs.pop("slug", "ehr-a"),
            iss=iss,
            client_id="caredesk",
            **kwargs,
        )
        session.flush()
        return int(reg.id)


@dataclass
class Served:
    url: str
    http: requests.Session


@pytest.fixture
def served(survey_app) -> Iterator[Served]:  # type: ignore[no-untyped-def]
    with serve(survey_app) as url, requests.Session() as http:
        yield Served(url, http)


def make_invite(  # type: ignore[no-untyped-def]
    app,
    registration_id: int,
    *,
    patient_ref: str = "Patient/pat-001",
    status: str = "sent",
    language: str = "en",
    sent_at: datetime | None = None,
    link_days: int = 7,
    visit_at: datetime | None = None,
    location_ref: str | None = "Location/loc-chicago-main",
    clinic_name: str | None = CLINIC,
    practitioner_ref: str | None = "Practitioner/prac-clinician-lee",
    practitioner_name: str | None = "Dr. Ana Lee",
    encounter_ref: str | None = "Encounter/enc-pat-001-past",
    appointment_ref: str = "Appointment/appt-pat-001-past",
) -> tuple[str, str]:
    """A sent invitation as the invitation job leaves it; returns (link token, invite id)."""
    token, digest = domain.new_link_token()
    sent = sent_at or utcnow()
    with get_store(app).session() as session:
        invite = SurveyInvite(
            id=uuid.uuid4().hex,
            registration_id=registration_id,
            patient_ref=patient_ref,
            appointment_ref=appointment_ref,
            encounter_ref=encounter_ref,
            location_ref=location_ref,
            practitioner_ref=practitioner_ref,
            clinic_name=clinic_name,
            practitioner_name=practitioner_name,
            language=language,
            timezone="America/Chicago",
            token_hash=digest,
            status=status,
            sent_at=sent,
            expires_at=sent + timedelta(days=link_days),
            visit_at=visit_at or sent - timedelta(hours=3),
            channel="sms",
        )
        session.add(invite)
        return token, invite.id


# --- jobs against the sandbox -------------------------------------------------------------

SURVEY_SCOPES = (
    "system/Patient.rs system/Appointment.rs system/Location.rs system/Encounter.rs "
    "system/Questionnaire.crs system/QuestionnaireResponse.crs"
)


def register_backend_ehr(app, sb, *, capabilities=None, allow_writes: bool = True) -> int:  # type: ignore[no-untyped-def]
    """A registration whose jobs authenticate with SMART Backend Services at the sandbox."""
    return connect_backend(
        app,
        sb,
        client_id="caredesk-survey",
        scopes=SURVEY_SCOPES,
        allow_writes=allow_writes,
        capabilities=capabilities,
    )


def work(app, *, include_scheduled: bool = False) -> None:  # type: ignore[no-untyped-def]
    """Run every queued job in this process with RQ (real Redis), as a burst worker.

    In-process (no fork) because the survey handlers are registered by importing
    jobs.survey, which a separate worker process only does once the app registers the
    survey blueprint. ``include_scheduled`` first moves scheduled jobs (retries, sends
    after quiet hours) onto the queue, as RQ's scheduler would when they fall due.
    """
    from jobs.queue import get_queue_state
    from jobs.worker import EmbeddedWorker

    state = get_queue_state(app)
    queues = [state.queue(n) for n in state.queue_names]
    if include_scheduled:
        for queue in queues:
            registry_ = queue.scheduled_job_registry
            for job_id in registry_.get_job_ids():
                registry_.requeue(job_id)
    worker = EmbeddedWorker(queues, connection=state.connection, app=app)
    worker.work(burst=True, with_scheduler=False, logging_level="WARNING")


def questionnaire_responses(sb, identifier: str) -> list[dict[str, Any]]:  # type: ignore[no-untyped-def]
    """The sandbox's QuestionnaireResponses with this identifier, read by a separate client."""
    token = sandbox_token(sb, "system/QuestionnaireResponse.rs")
    with requests.Session() as http:
        resp = http.get(
            f"{sb.fhir_base}/QuestionnaireResponse",
            params={"identifier": identifier},
            headers={"Authorization": f"Bearer {token}", "Accept": "application/fhir+json"},
            timeout=10,
        )
    assert resp.status_code == 200, resp.text
    return [e["resource"] for e in resp.json().get("entry") or []]
