"""Survey test helpers: an app with the survey blueprints, a registration, invitations,
and the app served over real HTTP on loopback."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import pytest
import requests
from werkzeug.serving import WSGIRequestHandler, make_server

from jobs import survey as domain
from plugin import create_app, migrate, registry
from plugin.crypto import get_vault
from plugin.db import get_store
from plugin.models import SurveyInvite
from plugin.timeutil import utcnow

CLINIC = "CareDesk Clinic - Lakeview"


class _Quiet(WSGIRequestHandler):
    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        return None


def register_survey(app) -> None:  # type: ignore[no-untyped-def]
    """What the lead's create_app will do: register the survey and report blueprints."""
    from plugin import reports, survey

    app.register_blueprint(survey.bp)
    app.register_blueprint(reports.bp)


@pytest.fixture
def survey_app(sqlite_url: str, redis_url: str):  # type: ignore[no-untyped-def]
    app = create_app(
        {
            "ENV": "test",
            "DATABASE_URL": sqlite_url,
            "REDIS_URL": redis_url,
            "SURVEY_PUBLIC_URL": "http://127.0.0.1:9",
        }
    )
    register_survey(app)
    migrate.upgrade(sqlite_url)
    yield app
    app.extensions["caredesk.db"].engine.dispose()
    app.extensions["caredesk.queue"].connection.close()


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
    server = make_server("127.0.0.1", 0, survey_app, threaded=True, request_handler=_Quiet)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    http = requests.Session()
    try:
        yield Served(f"http://127.0.0.1:{server.server_port}", http)
    finally:
        http.close()
        server.shutdown()
        server.server_close()
        thread.join(5)


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
) -> tuple[str, str]:
    """A sent invitation as the invitation job leaves it; returns (link token, invite id)."""
    token, digest = domain.new_link_token()
    sent = sent_at or utcnow()
    with get_store(app).session() as session:
        invite = SurveyInvite(
            id=domain.uuid.uuid4().hex,
            registration_id=registration_id,
            patient_ref=patient_ref,
            appointment_ref="Appointment/appt-pat-001-past",
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
