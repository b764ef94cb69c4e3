"""Processing inbound texts against the sandbox EHR: matching the sender with backend
services, the patient's conversation on a ticket, the unmatched queue and the staff pick,
and the answers to a reminder (C in the EHR or as a staff task, R as a ticket)."""

from __future__ import annotations

import datetime as dt

from helpdesk import messaging
from helpdesk.db import get_store
from helpdesk.models import CareTask, InboundMessage
from sandbox.testing import running_sandbox
from tests.ehr import connect_backend
from tests.live import serve
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
    tasks,
    tickets,
)

MARGARET = "+1 312-555-0104"  # pat-001's mobile, the only patient with it
ANA = "+1 312-555-0120"  # pat-002, texts only, Spanish
SHARED = "+1 312-555-0111"  # pat-012 and pat-019 share this mobile


def test_a_patients_texts_open_one_ticket_and_join_its_conversation(msg_app, base_url) -> None:
    post_sms(base_url, sms_form(MARGARET, "Is my lab result in?"))
    drain(msg_app)
    post_sms(base_url, sms_form("(312) 555-0104", "Also, can I get a refill?"))
    drain(msg_app)
    [ticket] = tickets(msg_app)
    assert ticket.patient_ref == "Patient/pat-001"
    assert ticket.source == "sms" and ticket.category == "clinical-question"
    assert ticket.due_at is not None  # the ticket service's SLA, like any ticket
    messages = inbound(msg_app)
    assert [m.status for m in messages] == ["processed", "processed"]
    assert {m.match for m in messages} == {"unique"}
    assert len({m.thread_id for m in messages}) == 1


def test_a_sender_shared_by_two_patients_or_unknown_waits_for_staff(msg_app, base_url) -> None:
    post_sms(base_url, sms_form(SHARED, "Need a note for work"))
    post_sms(base_url, sms_form("+1 415-555-0199", "Who is this?"))
    drain(msg_app)
    shared, unknown = inbound(msg_app)
    assert (shared.status, shared.match) == ("unmatched", "several")
    assert shared.candidates == ["Patient/pat-012", "Patient/pat-019"]
    assert (unknown.status, unknown.match, unknown.candidates) == ("unmatched", "none", [])
    assert tickets(msg_app) == []


def test_staff_pick_sends_the_message_to_that_patients_ticket_and_writes_nothing_to_the_ehr(
    msg_app, base_url, sandbox
) -> None:
    post_sms(base_url, sms_form(SHARED, "Need a note for work"))
    drain(msg_app)
    [message] = inbound(msg_app)
    desk = browser(msg_app, base_url)
    page = desk.page("/messages/unmatched")
    assert page.status_code == 200
    assert "Need a note for work" in page.text and "···0111" in page.text
    # Both patients with the number are offered (names need the user's own token).
    assert page.text.count('name="patient"') == 2
    sandbox.clear_requests()
    picked = desk.form(f"/messages/{message.id}/patient", {"patient": "Patient/pat-019"})
    assert picked.status_code == 303
    drain(msg_app)
    [ticket] = tickets(msg_app)
    assert ticket.patient_ref == "Patient/pat-019"
    [message] = inbound(msg_app)
    assert (message.status, message.match, message.resolved_by) == (
        "processed",
        "staff",
        "Practitioner/prac-scheduler-ortiz",
    )
    writes = [r for r in sandbox.requests() if r["method"] in ("POST", "PUT", "PATCH", "DELETE")]
    assert [w for w in writes if "/fhir/" in w["path"] and "_search" not in w["path"]] == []


def test_only_a_launch_reaching_every_patient_sees_the_unmatched_queue(msg_app, base_url) -> None:
    post_sms(base_url, sms_form(SHARED, "private words"))
    drain(msg_app)
    chart = browser(msg_app, base_url, patient="Patient/pat-001")
    page = chart.page("/messages/unmatched")
    assert page.status_code == 403
    assert "private words" not in page.text
    # Without a patient but with a grant that reaches single patients only: refused too.
    narrow = browser(msg_app, base_url, scope="launch openid fhirUser patient/*.rs")
    page = narrow.page("/messages/unmatched")
    assert page.status_code == 403 and "private words" not in page.text
    [message] = inbound(msg_app)
    pick = narrow.form(f"/messages/{message.id}/patient", {"patient": "Patient/pat-012"})
    assert pick.status_code == 403
    assert inbound(msg_app)[0].status == "unmatched"


def _reminder(app, sb, patient: str, appt_id: str) -> str:
    start = dt.datetime.now(dt.UTC) + dt.timedelta(days=2)
    appt = appointment(sb, appt_id, patient, start.replace(microsecond=0))
    queue(
        app,
        kind="reminder",
        patient_ref=patient,
        payload={"appointment_ref": appt, "offset_hours": 72},
    )
    drain(app)
    [sent] = outbound(app, "appointment-reminder")
    return appt


def test_reminder_text_offers_c_and_r_in_the_patients_language(msg_app, sandbox) -> None:
    _reminder(msg_app, sandbox, "Patient/pat-002", "appt-es")
    [sent] = outbound(msg_app, "appointment-reminder")
    assert sent.language == "es"
    assert "Responda C para confirmar, R para cambiar la cita." in decrypt(msg_app, sent.body_enc)


def test_c_marks_the_patient_accepted_on_the_sandbox_appointment(
    msg_app, base_url, sandbox
) -> None:
    appt = _reminder(msg_app, sandbox, "Patient/pat-001", "appt-c")
    post_sms(base_url, sms_form(MARGARET, "c"))
    drain(msg_app)
    stored = sandbox.resource("Appointment", "appt-c")
    statuses = {p["actor"]["reference"]: p["status"] for p in stored["participant"]}
    assert statuses["Patient/pat-001"] == "accepted"
    assert statuses["Practitioner/prac-clinician-lee"] == "accepted"
    [message] = inbound(msg_app)
    assert (message.intent, message.result, message.appointment_ref) == (
        "confirm",
        "confirmed-in-ehr",
        appt,
    )
    assert tickets(msg_app) == []
    # What the board and the sidebar read.
    with get_store(msg_app).session() as session:
        replies = messaging.appointment_replies(session, registration_id(msg_app), [appt])
    assert replies[appt]["text"] == "Confirmed by the patient (text reply)"


def test_c_in_the_epic_profile_becomes_a_staff_task(make_app) -> None:
    with running_sandbox(profile="epic") as sb:
        app = make_app(**CONFIG)
        connect_backend(app, sb, client_id="caredesk-epic", scopes=SCOPES, slug="clinic")
        with serve(app) as base:
            appt = _reminder(app, sb, "Patient/pat-001", "appt-epic")
            post_sms(base, sms_form(MARGARET, "C"))
            drain(app)
        stored = sb.resource("Appointment", "appt-epic")
    patient_status = [
        p["status"] for p in stored["participant"] if "Patient" in p["actor"]["reference"]
    ]
    assert patient_status == ["needs-action"]  # the EHR refused the update
    [message] = inbound(app)
    assert message.result == "confirmed-staff-task"
    assert "405" in (message.outcome or "")
    [staff] = [t for t in tasks(app, "follow-up") if t.payload.get("appointment_ref") == appt]
    assert staff.status == "waiting" and staff.assignee == "front-desk"
    assert "mark it confirmed in the EHR" in staff.payload["reason"]


def test_r_opens_a_scheduling_ticket_with_the_appointment(msg_app, base_url, sandbox) -> None:
    appt = _reminder(msg_app, sandbox, "Patient/pat-001", "appt-r")
    post_sms(base_url, sms_form(MARGARET, "R"))
    drain(msg_app)
    [ticket] = tickets(msg_app)
    assert ticket.category == "scheduling" and ticket.patient_ref == "Patient/pat-001"
    assert appt in ticket.description
    [message] = inbound(msg_app)
    assert message.result == "reschedule-ticket" and message.appointment_ref == appt
    # The reminder is in the ticket's thread with the answer.
    [reminder] = outbound(msg_app, "appointment-reminder")
    assert reminder.thread_id == message.thread_id is not None
    stored = sandbox.resource("Appointment", "appt-r")
    assert [p["status"] for p in stored["participant"]][0] == "needs-action"


def test_other_words_after_a_reminder_become_a_scheduling_ticket_message(
    msg_app, base_url, sandbox
) -> None:
    _reminder(msg_app, sandbox, "Patient/pat-001", "appt-words")
    post_sms(base_url, sms_form(MARGARET, "Can I bring my daughter?"))
    drain(msg_app)
    [ticket] = tickets(msg_app)
    assert ticket.category == "scheduling"
    assert "reply to appointment reminder" in ticket.subject


def test_help_answers_with_the_clinics_contact_details(msg_app, base_url) -> None:
    post_sms(base_url, sms_form(MARGARET, "help"))
    drain(msg_app)
    [answer] = outbound(msg_app, "contact-help")
    assert answer.channel == "sms"
    text = decrypt(msg_app, answer.body_enc)
    assert "+1 312-555-0100" in text and "STOP" in text
    assert decrypt(msg_app, answer.to_enc) == "+13125550104"
    assert tickets(msg_app) == []


def test_a_message_is_processed_once_however_often_its_task_runs(msg_app, base_url) -> None:
    post_sms(base_url, sms_form(MARGARET, "hello"))
    drain(msg_app)
    [message] = inbound(msg_app)
    # Another processing task for the same message (a sweeper, a replay) changes nothing.
    queue(msg_app, kind="inbound-message", patient_ref=None, payload={"message_id": message.id})
    drain(msg_app)
    assert len(tickets(msg_app)) == 1
    assert rows(msg_app, CareTask, CareTask.kind == "inbound-message")[-1].status == "done"
    assert rows(msg_app, InboundMessage)[0].status == "processed"
    assert task(msg_app, rows(msg_app, CareTask)[0].id).status == "done"


def test_ayuda_from_an_unknown_number_is_answered_in_spanish(msg_app, base_url) -> None:
    post_sms(base_url, sms_form("+1 415-555-0142", "Ayuda"))
    drain(msg_app)
    [answer] = outbound(msg_app, "contact-help")
    assert answer.language == "es"
    assert "llámenos al +1 312-555-0100" in decrypt(msg_app, answer.body_enc)
