"""Invitations: the policy (quiet hours, sampling) and the job against the sandbox, and the
whole flow: fulfilled visit -> message in the outbox -> answered in Chromium -> a
QuestionnaireResponse in the EHR."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest
import time_machine
from fhir.resources.R4B.questionnaireresponse import QuestionnaireResponse
from sqlalchemy import select

from helpdesk import survey_policy as policy
from helpdesk import surveys as domain
from helpdesk.crypto import get_vault
from helpdesk.db import get_store
from helpdesk.models import (
    CareTask,
    EhrRegistration,
    OutboundMessage,
    SurveyInvite,
    SurveyResponse,
    Ticket,
)
from jobs import outbox
from sandbox.testing import SandboxHandle, running_sandbox
from tests.survey.conftest import questionnaire_responses, register_backend_ehr, work

CHICAGO = ZoneInfo("America/Chicago")
DENVER = ZoneInfo("America/Denver")
QUIET = (time(21, 0), time(8, 0))
APPOINTMENT = "Appointment/appt-pat-001-past"


@pytest.mark.parametrize(
    ("local", "tz", "expected"),
    [
        (
            datetime(2026, 11, 27, 14, 0, tzinfo=CHICAGO),
            CHICAGO,
            datetime(2026, 11, 27, 14, 0, tzinfo=CHICAGO),
        ),
        (
            datetime(2026, 11, 27, 21, 0, tzinfo=CHICAGO),
            CHICAGO,
            datetime(2026, 11, 28, 8, 0, tzinfo=CHICAGO),
        ),
        (
            datetime(2026, 11, 27, 23, 30, tzinfo=CHICAGO),
            CHICAGO,
            datetime(2026, 11, 28, 8, 0, tzinfo=CHICAGO),
        ),
        (
            datetime(2026, 11, 28, 2, 15, tzinfo=CHICAGO),
            CHICAGO,
            datetime(2026, 11, 28, 8, 0, tzinfo=CHICAGO),
        ),
        (
            datetime(2026, 11, 28, 7, 59, tzinfo=CHICAGO),
            CHICAGO,
            datetime(2026, 11, 28, 8, 0, tzinfo=CHICAGO),
        ),
        (
            datetime(2026, 11, 28, 8, 0, tzinfo=CHICAGO),
            CHICAGO,
            datetime(2026, 11, 28, 8, 0, tzinfo=CHICAGO),
        ),
        # 21:30 in Chicago is 20:30 in Denver: not night there yet.
        (
            datetime(2026, 11, 27, 21, 30, tzinfo=CHICAGO),
            DENVER,
            datetime(2026, 11, 27, 20, 30, tzinfo=DENVER),
        ),
        # The night DST ends (Nov 1 2026): still 08:00 on the wall clock.
        (
            datetime(2026, 10, 31, 22, 0, tzinfo=CHICAGO),
            CHICAGO,
            datetime(2026, 11, 1, 8, 0, tzinfo=CHICAGO),
        ),
    ],
)
def test_send_time_skips_the_patients_night(local, tz, expected) -> None:  # type: ignore[no-untyped-def]
    got = policy.send_time(local, tz, QUIET)
    assert got == expected and got.tzinfo is not None
    assert got.astimezone(tz).hour == expected.astimezone(tz).hour


def test_quiet_hours_setting_is_parsed_and_checked() -> None:
    assert policy.parse_quiet_hours("21:00-08:00") == QUIET
    assert policy.parse_quiet_hours("") is None
    assert policy.parse_quiet_hours("13:00-15:30") == (time(13), time(15, 30))
    with pytest.raises(ValueError):
        policy.parse_quiet_hours("9pm to 8am")


def test_sampling_is_stable_per_visit_and_close_to_the_percentage() -> None:
    refs = [f"Appointment/a{i}" for i in range(4000)]
    chosen = [r for r in refs if policy.in_sample(r, 25)]
    assert 0.22 < len(chosen) / len(refs) < 0.28
    assert chosen == [r for r in refs if policy.in_sample(r, 25)]
    assert all(policy.in_sample(r, 100) for r in refs[:50])
    assert not any(policy.in_sample(r, 0) for r in refs[:50])


def test_link_tokens_are_random_256_bit_and_stored_only_hashed() -> None:
    token, digest = domain.new_link_token()
    other, _ = domain.new_link_token()
    assert len(token) >= 43 and token != other  # 32 bytes, URL-safe base64
    assert digest == domain.hash_token(token) and token not in digest and len(digest) == 64


@pytest.fixture
def sandbox() -> Iterator[SandboxHandle]:
    with running_sandbox() as sb:
        yield sb


def _request(app, reg_id: int, fulfilled_at: datetime) -> int:  # type: ignore[no-untyped-def]
    with app.app_context():
        with get_store(app).session() as s:
            task = domain.request_survey(
                s,
                app,
                registration_id=reg_id,
                appointment_ref=APPOINTMENT,
                patient_ref="Patient/pat-001",
                now=fulfilled_at + timedelta(hours=3),
                fulfilled_at=fulfilled_at,
            )
            s.flush()
            task_id = task.id
        outbox.dispatch([task_id], app=app)
    return task_id


def _invites(app) -> list[SurveyInvite]:  # type: ignore[no-untyped-def]
    with get_store(app).session() as s:
        rows = list(s.scalars(select(SurveyInvite)))
        for r in rows:
            s.expunge(r)
        return rows


def test_invitation_at_night_waits_for_the_morning_in_the_patients_zone(
    survey_app, sandbox
) -> None:
    reg_id = register_backend_ehr(survey_app, sandbox)
    night = datetime(2026, 11, 27, 23, 10, tzinfo=CHICAGO)
    with time_machine.travel(night, tick=True):
        task_id = _request(survey_app, reg_id, night - timedelta(hours=3))
        work(survey_app)
    [invite] = _invites(survey_app)
    assert invite.status == "pending" and invite.token_hash is None
    assert invite.send_at == datetime(2026, 11, 28, 8, 0, tzinfo=CHICAGO)
    assert invite.clinic_name == "CareDesk Clinic - Lakeview"
    assert invite.encounter_ref == "Encounter/enc-pat-001-past"
    with get_store(survey_app).session() as s:
        waiting = s.scalars(select(CareTask).where(CareTask.id != task_id)).one()
        assert waiting.status == "scheduled" and waiting.payload == {"invite_id": invite.id}
        assert waiting.due_at == invite.send_at
        assert s.scalar(select(OutboundMessage.id)) is None  # nothing sent at night


def test_second_visit_within_the_fatigue_window_is_not_surveyed(survey_app, sandbox) -> None:
    from tests.survey.conftest import make_invite

    survey_app.config["SURVEY_QUIET_HOURS"] = ""
    reg_id = register_backend_ehr(survey_app, sandbox)
    make_invite(
        survey_app,
        reg_id,
        sent_at=datetime.now(CHICAGO) - timedelta(days=29),
        appointment_ref="Appointment/appt-pat-001-earlier",
    )
    _request(survey_app, reg_id, datetime.now(CHICAGO) - timedelta(hours=3))
    work(survey_app)
    skipped = [i for i in _invites(survey_app) if i.appointment_ref == APPOINTMENT]
    assert [(i.status, i.skip_reason) for i in skipped] == [("skipped", "fatigue")]


def test_visit_outside_the_sample_is_not_surveyed(survey_app, sandbox) -> None:
    survey_app.config.update(SURVEY_QUIET_HOURS="", SURVEY_SAMPLE_PERCENT=0)
    reg_id = register_backend_ehr(survey_app, sandbox)
    _request(survey_app, reg_id, datetime.now(CHICAGO) - timedelta(hours=3))
    work(survey_app)
    assert [(i.status, i.skip_reason) for i in _invites(survey_app)] == [("skipped", "not-sampled")]


@pytest.mark.browser
def test_fulfilled_visit_to_questionnaire_response_end_to_end(
    survey_app, sandbox, served, chromium
) -> None:
    survey_app.config.update(SURVEY_QUIET_HOURS="", SURVEY_PUBLIC_URL=served.url)
    reg_id = register_backend_ehr(survey_app, sandbox)
    _request(survey_app, reg_id, datetime.now(CHICAGO) - timedelta(hours=3))
    work(survey_app)

    [invite] = _invites(survey_app)
    assert invite.status == "sent" and invite.channel in ("sms", "email")
    with get_store(survey_app).session() as s:
        message = s.scalars(select(OutboundMessage)).one()
        body = get_vault(survey_app).decrypt(message.body_enc)
    link = re.search(r"(http://127\.0\.0\.1:\d+/s/[A-Za-z0-9_\-]+)", body).group(1)
    assert domain.hash_token(link.rsplit("/", 1)[1]) == invite.token_hash

    # One Chromium for the whole run (tests/conftest.py): Playwright's sync API cannot
    # start a second driver while the session's is running.
    context = chromium.new_context(
        viewport={"width": 390, "height": 844}, java_script_enabled=False
    )
    try:
        page = context.new_page()
        page.goto(link)
        assert "CareDesk Clinic - Lakeview" in page.content()
        page.get_by_label("Very dissatisfied").check()
        page.locator("label.sv-num", has_text="3").first.click()
        page.locator("textarea[name=comment]").fill("Nobody called me back")
        page.locator("input[name='contact-ok'][value=yes]").check()
        page.get_by_role("button", name="Send my answers").click()
        page.wait_for_selector("text=Thank you")
    finally:
        context.close()

    work(survey_app)
    with get_store(survey_app).session() as s:
        response = s.scalars(select(SurveyResponse)).one()
        assert (response.csat, response.nps, response.contact_ok) == (1, 3, True)
        assert response.writeback_status == "written" and response.fhir_id
        ticket = s.scalars(select(Ticket)).one()
        assert ticket.survey_response_id == response.id and ticket.priority == "high"
        assert s.scalars(select(CareTask).where(CareTask.kind == "follow-up")).one()
    [qr] = questionnaire_responses(
        sandbox, f"{survey_app.config['SURVEY_IDENTIFIER_SYSTEM']}|{invite.id}"
    )
    QuestionnaireResponse.model_validate(qr)
    assert qr["id"] == response.fhir_id
    assert qr["subject"] == {"reference": "Patient/pat-001"}
    assert qr["questionnaire"] == "https://caredesk.example/fhir/Questionnaire/csat|1.0.0"
    assert qr["item"][2]["answer"] == [{"valueString": "Nobody called me back"}]


def test_a_survey_task_for_one_patient_about_anothers_visit_sends_nothing(
    survey_app, sandbox
) -> None:
    """Jobs carry the patient they were queued for (a launch's): pointed at another
    patient's visit, the invitation fails before anything is created or sent, even with
    backend credentials that could read every patient."""
    survey_app.config["SURVEY_QUIET_HOURS"] = ""
    reg_id = register_backend_ehr(survey_app, sandbox)
    with survey_app.app_context(), get_store(survey_app).session() as s:
        task = domain.request_survey(
            s,
            survey_app,
            registration_id=reg_id,
            appointment_ref="Appointment/appt-pat-002-past",
            patient_ref="Patient/pat-001",
            now=datetime.now(CHICAGO),
            fulfilled_at=datetime.now(CHICAGO) - timedelta(hours=3),
        )
        s.flush()
        task_id = task.id
    outbox.dispatch([task_id], app=survey_app)
    work(survey_app)
    with get_store(survey_app).session() as s:
        row = s.get(CareTask, task_id)
        assert row.status == "failed"
        assert "not the patient's" in row.last_error
        assert s.scalar(select(SurveyInvite.id)) is None
        assert s.scalar(select(OutboundMessage.id)) is None


def test_invitation_names_the_practitioner_when_references_carry_no_display(
    survey_app,
) -> None:
    """A real third-party server sent no display on references: the name is read from the
    Practitioner (the CSAT report groups by it), not left as a bare reference."""
    with running_sandbox(omit_display=True) as sb:
        reg_id = register_backend_ehr(survey_app, sb)
        with get_store(survey_app).session() as s:
            s.get(EhrRegistration, reg_id).backend_scopes += " system/Practitioner.rs"
        fulfilled = datetime.now(CHICAGO).replace(hour=12, minute=0)
        with time_machine.travel(fulfilled + timedelta(hours=3), tick=True):
            _request(survey_app, reg_id, fulfilled)
            work(survey_app)
    [invite] = _invites(survey_app)
    assert invite.practitioner_ref == "Practitioner/prac-clinician-okafor"
    assert invite.practitioner_name is not None and "Chinedu Okafor" in invite.practitioner_name
    assert invite.clinic_name == "CareDesk Clinic - Lakeview"
