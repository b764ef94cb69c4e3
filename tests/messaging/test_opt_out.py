"""STOP is honoured by every sender (reminders, surveys, follow-ups, insurance outreach,
staff replies, automatic answers), each refusing with the reason shown where staff look;
START lifts it; the sidebar's data carries it."""

from __future__ import annotations

import datetime as dt

import pytest

from helpdesk import messaging
from helpdesk.db import get_store
from helpdesk.models import ContactOptOut, SurveyInvite
from tests.messaging.conftest import (
    CONFIG,
    SCOPES,
    appointment,
    browser,
    decrypt,
    drain,
    inbound,
    outbound,
    post_sms,
    queue,
    registration_id,
    rows,
    sms_form,
    task,
    tickets,
)

ANA = "+1 312-555-0120"  # pat-002: a mobile and nothing else, so a STOP leaves no channel
PATIENT = "Patient/pat-002"


@pytest.fixture
def app(make_app, sandbox):
    from tests.ehr import connect_backend

    settings = {"SURVEY_QUIET_HOURS": "", "SURVEY_DELAY_MINUTES": 0}
    app = make_app(**CONFIG, **settings, SURVEY_PUBLIC_URL="https://survey.clinic.example")
    connect_backend(app, sandbox, client_id="caredesk-optout", scopes=SCOPES, slug="clinic")
    return app


@pytest.fixture
def base(app):
    from tests.live import serve

    with serve(app) as url:
        yield url


def _every_kind(app, sb, tag: str) -> dict[str, int]:
    """One of each kind of outbound message to the patient, queued and run."""
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    upcoming = appointment(sb, f"up-{tag}", PATIENT, now + dt.timedelta(days=2))
    past = appointment(sb, f"done-{tag}", PATIENT, now - dt.timedelta(hours=3), status="fulfilled")
    ids = {
        "reminder": queue(
            app,
            kind="reminder",
            patient_ref=PATIENT,
            payload={"appointment_ref": upcoming, "offset_hours": 72},
        ),
        "survey": queue(
            app, kind="survey-invite", patient_ref=PATIENT, payload={"appointment_ref": past}
        ),
        "follow-up": queue(
            app,
            kind="follow-up",
            patient_ref=PATIENT,
            payload={"channel": "sms", "reason": "check how the new dose is going"},
            max_attempts=1,
        ),
        "outreach": queue(
            app,
            kind="insurance-outreach",
            patient_ref=PATIENT,
            payload={"coverage_ref": "Coverage/cov-x", "period_end": "2027-01-31"},
        ),
    }
    drain(app)
    return ids


def test_stop_refuses_every_kind_of_message_with_the_reason_and_start_lifts_it(
    app, base, sandbox
) -> None:
    # The patient writes first (a ticket with a conversation staff can reply on).
    post_sms(base, sms_form(ANA, "Tengo una pregunta"))
    drain(app)
    [ticket] = tickets(app)
    post_sms(base, sms_form(ANA, "PARAR"))
    drain(app)
    [stop] = [m for m in inbound(app) if m.intent == "stop"]
    assert stop.result == "opted-out" and stop.patient_ref == PATIENT
    [standing] = rows(app, ContactOptOut)
    assert (standing.channel, standing.keyword, standing.lifted_at) == ("sms", "PARAR", None)
    sent_before = len(outbound(app))

    ids = _every_kind(app, sandbox, "a")
    reason = "The patient replied PARAR on"
    reminder = task(app, ids["reminder"])
    assert reminder.status == "done" and reminder.status_note.startswith(f"Not sent: {reason}")
    follow_up = task(app, ids["follow-up"])
    assert follow_up.status == "failed" and reason in follow_up.last_error
    outreach = task(app, ids["outreach"])
    assert outreach.status_note.startswith(f"Not sent: {reason}")
    survey = task(app, ids["survey"])
    assert reason in survey.status_note
    [invite] = rows(app, SurveyInvite)
    assert (invite.status, invite.skip_reason) == ("skipped", "opted-out")

    # Staff reply: refused on the page with the reason, and by the job if it got there.
    desk = browser(app, base)
    page = desk.page(f"/tickets/{ticket.id}")
    assert "No reply possible: The patient replied PARAR" in page.text
    refused = desk.form(f"/tickets/{ticket.id}/reply", {"body": "¿Sigue ahí?"})
    assert refused.status_code == 409 and "replied PARAR" in refused.text
    reply_task = queue(
        app,
        kind="staff-reply",
        patient_ref=PATIENT,
        payload={
            "ticket_id": ticket.id,
            "in_reply_to": inbound(app)[0].id,
            "channel": "sms",
            "body_enc": _encrypt(app, "¿Sigue ahí?"),
        },
        max_attempts=1,
    )
    drain(app)
    assert task(app, reply_task).status == "failed"
    assert reason in task(app, reply_task).last_error
    # HELP while opted out: carriers do not answer it either.
    post_sms(base, sms_form(ANA, "AYUDA"))
    drain(app)
    assert inbound(app)[-1].outcome.startswith("HELP not answered: The patient replied PARAR")
    assert len(outbound(app)) == sent_before  # nothing at all went out

    # The sidebar's data shows the STOP.
    with get_store(app).session() as session:
        summary = messaging.summary(session, registration_id(app), PATIENT, [])
    assert summary["opt_outs"][0]["text"] == "Replied PARAR: no texts"

    post_sms(base, sms_form(ANA, "Inicio"))
    drain(app)
    [lifted] = rows(app, ContactOptOut)
    assert lifted.lifted_at is not None and lifted.lifted_keyword == "INICIO"
    ids = _every_kind(app, sandbox, "b")
    assert task(app, ids["reminder"]).status_note.startswith("Reminder sent by sms")
    assert task(app, ids["follow-up"]).status == "waiting"
    assert task(app, ids["outreach"]).status_note.startswith("Insurance reminder sent by sms")
    templates = {m.template for m in outbound(app)}
    assert {"appointment-reminder", "follow-up", "insurance-outreach"} <= templates
    [sms] = outbound(app, "insurance-outreach")
    assert decrypt(app, sms.to_enc) == "+13125550120"  # E.164, whatever the EHR wrote


def test_stop_from_an_unknown_number_still_blocks_that_number(app, base) -> None:
    post_sms(base, sms_form("+1 415-555-0142", "STOP"))
    drain(app)
    [message] = inbound(app)
    assert message.patient_ref is None and message.result == "opted-out"
    [row] = rows(app, ContactOptOut)
    assert row.patient_ref is None and row.address_key == message.sender_key


@pytest.mark.parametrize(
    ("text", "intent"),
    [
        ("STOP", "stop"),
        ("stop.", "stop"),
        ("Unsubscribe", "stop"),
        ("alto", "stop"),
        ("Parar", "stop"),
        ("STOP texting me please", "message"),
        ("START", "start"),
        ("unstop", "start"),
        ("Inicio", "start"),
        ("HELP", "help"),
        ("ayuda", "help"),
        ("c", "confirm"),
        ("Confirmar", "confirm"),
        ("R", "reschedule"),
        ("yes", "message"),
        ("", "message"),
    ],
)
def test_keywords_are_single_words_as_carriers_read_them(text: str, intent: str) -> None:
    assert messaging.classify(text) == intent


def _encrypt(app, text: str) -> str:
    from helpdesk.crypto import get_vault

    return get_vault(app).encrypt(text).decode()
