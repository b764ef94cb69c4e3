"""The store on both backends: migrations, round trips, aware datetimes."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import inspect, select
from sqlalchemy.exc import IntegrityError

from helpdesk import migrate, registry
from helpdesk.crypto import get_vault
from helpdesk.db import get_store
from helpdesk.models import AuditEvent, CareTask, Ticket, TicketNote

CHICAGO_WINTER = timezone(timedelta(hours=-6))


@pytest.fixture
def store_app(make_app, store_url: str):  # type: ignore[no-untyped-def]
    return make_app(DATABASE_URL=store_url)


def test_migrations_create_every_table_and_match_the_models(store_app, store_url: str) -> None:
    tables = set(inspect(get_store(store_app).engine).get_table_names())
    assert {
        "ehr_registration",
        "signing_key",
        "launch_session",
        "ticket",
        "ticket_note",
        "care_task",
        "survey_invite",
        "survey_response",
        "audit_event",
        "alembic_version",
    } <= tables
    migrate.check(store_url)  # raises if a model change has no migration


def test_downgrade_to_base_and_back(store_app, store_url: str) -> None:
    migrate.downgrade(store_url, "base")
    assert "ticket" not in inspect(get_store(store_app).engine).get_table_names()
    migrate.upgrade(store_url)
    assert "ticket" in inspect(get_store(store_app).engine).get_table_names()


def test_ticket_with_notes_round_trips_with_aware_datetimes(store_app) -> None:
    due = datetime(2026, 11, 30, 9, 0, tzinfo=CHICAGO_WINTER)
    with store_app.app_context(), get_store(store_app).session() as session:
        reg = registry.upsert(
            session,
            get_vault(store_app),
            slug="ehr-a",
            iss="https://ehr.example/fhir/",
            client_id="cd",
            frame_origins=["https://ehr.example"],
        )
        ticket = Ticket(
            registration_id=reg.id,
            patient_ref="Patient/123",
            subject="Call back",
            category="scheduling",
            due_at=due,
        )
        ticket.notes.append(
            TicketNote(body="Left voicemail", channel="phone", direction="outbound")
        )
        session.add(ticket)
    with get_store(store_app).session() as session:
        loaded = session.scalars(select(Ticket)).one()
        assert loaded.due_at == due
        assert loaded.due_at.tzinfo is not None
        assert loaded.created_at.tzinfo is not None
        assert [n.body for n in loaded.notes] == ["Left voicemail"]
        assert loaded.status == "open"


def test_registration_iss_is_exact_and_unique(store_app) -> None:
    with store_app.app_context(), get_store(store_app).session() as session:
        reg = registry.upsert(
            session, get_vault(store_app), slug="a", iss="https://ehr.example/fhir/", client_id="x"
        )
        assert reg.iss == "https://ehr.example/fhir"
        assert registry.find_by_iss(session, "https://ehr.example/fhir") is reg
        assert registry.find_by_iss(session, "https://ehr.example/FHIR") is None
        assert registry.find(session, "a") is reg


def test_client_secret_is_stored_encrypted(store_app) -> None:
    with store_app.app_context(), get_store(store_app).session() as session:
        reg = registry.upsert(
            session,
            get_vault(store_app),
            slug="s",
            iss="https://e/fhir",
            client_id="x",
            client_type="confidential-symmetric",
            client_secret="s3cret-value",
        )
        assert reg.client_secret_enc and b"s3cret-value" not in reg.client_secret_enc
        assert get_vault(store_app).decrypt(reg.client_secret_enc) == "s3cret-value"


def test_care_task_dedupe_key_is_unique(store_app) -> None:
    with store_app.app_context(), get_store(store_app).session() as session:
        reg = registry.upsert(
            session, get_vault(store_app), slug="d", iss="https://d/fhir", client_id="x"
        )
        reg_id = reg.id
        session.add(
            CareTask(
                registration_id=reg_id, kind="reminder", dedupe_key="reminder:Appointment/1:72h"
            )
        )
    with pytest.raises(IntegrityError) as raised, get_store(store_app).session() as session:
        session.add(
            CareTask(
                registration_id=reg_id, kind="reminder", dedupe_key="reminder:Appointment/1:72h"
            )
        )
    # Database errors (and so logged tracebacks) do not list the statement's values.
    # (PostgreSQL's own DETAIL still names a duplicate key; our unique keys are ids and
    # FHIR references, never patient data.)
    assert "SQL parameters hidden" in str(raised.value)


def test_naive_datetime_is_refused(store_app) -> None:
    with pytest.raises(Exception, match="naive"), get_store(store_app).session() as session:
        session.add(AuditEvent(action="read", at=datetime(2026, 1, 1)))  # noqa: DTZ001
