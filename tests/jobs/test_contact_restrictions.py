"""One reading of contact restrictions for every sender (issue 11).

The EHR may write a restriction as ``valueCode`` or as ``valueCoding``. An earlier build
read only ``valueCoding`` in the survey job, so a ``no-contact`` written as ``valueCode``
blocked reminders but not surveys. Every sender now asks ``fhir_mappers.contact``.
"""

from __future__ import annotations

import datetime as dt

import pytest
from sqlalchemy import select

from fhir_mappers.contact import CONTACT_RESTRICTION_URL
from helpdesk.db import get_store
from helpdesk.models import OutboundMessage, SurveyInvite
from tests.jobs.conftest import load_task, new_task, register_backend, run_burst

PATIENT_ID = "pat-restricted"


def _restricted_patient(restriction: dict[str, object]) -> dict[str, object]:
    """A patient every channel could reach (mobile phone, email) but for the restriction."""
    return {
        "resourceType": "Patient",
        "id": PATIENT_ID,
        "extension": [{"url": CONTACT_RESTRICTION_URL, **restriction}],
        "name": [{"family": "Quiet", "given": ["Robin"]}],
        "birthDate": "1970-01-01",
        "telecom": [
            {"system": "phone", "use": "mobile", "value": "+1 312-555-0199", "rank": 1},
            {"system": "email", "value": "robin.quiet@example.org"},
        ],
    }


def _appointment(appt_id: str, status: str, start: dt.datetime) -> dict[str, object]:
    return {
        "resourceType": "Appointment",
        "id": appt_id,
        "status": status,
        "start": start.isoformat(),
        "end": (start + dt.timedelta(minutes=30)).isoformat(),
        "participant": [
            {"actor": {"reference": f"Patient/{PATIENT_ID}"}, "status": "accepted"},
            {"actor": {"reference": "Practitioner/prac-clinician-lee"}, "status": "accepted"},
        ],
    }


@pytest.mark.parametrize(
    "restriction",
    [
        {"valueCode": "no-contact"},
        {"valueCoding": {"code": "no-contact"}},
    ],
    ids=["valueCode", "valueCoding"],
)
def test_a_no_contact_patient_gets_no_reminder_no_survey_and_no_follow_up_message(
    job_app, sandbox, restriction
) -> None:
    reg_id = register_backend(job_app, sandbox)
    now = dt.datetime.now(dt.UTC)
    sandbox.put_resource(_restricted_patient(restriction))
    soon, earlier = now + dt.timedelta(hours=20), now - dt.timedelta(hours=3)
    sandbox.put_resource(_appointment("appt-restricted-next", "booked", soon))
    sandbox.put_resource(_appointment("appt-restricted-done", "fulfilled", earlier))
    patient_ref = f"Patient/{PATIENT_ID}"
    reminder = new_task(
        job_app,
        registration_id=reg_id,
        kind="reminder",
        patient_ref=patient_ref,
        payload={"appointment_ref": "Appointment/appt-restricted-next", "offset_hours": 24},
    )
    survey = new_task(
        job_app,
        registration_id=reg_id,
        kind="survey-invite",
        patient_ref=patient_ref,
        payload={"appointment_ref": "Appointment/appt-restricted-done"},
    )
    follow_up = new_task(
        job_app,
        registration_id=reg_id,
        kind="follow-up",
        patient_ref=patient_ref,
        payload={"reason": "lab results", "channel": "sms"},
    )
    run_burst(job_app)

    with get_store(job_app).session() as session:
        sent = [(m.template, m.channel) for m in session.scalars(select(OutboundMessage))]
        assert sent == []
        [invite] = session.scalars(select(SurveyInvite)).all()
        assert (invite.status, invite.skip_reason) == ("skipped", "opted-out")
    # Each task says why nothing went out; none of them pretends it was sent.
    reminder_task = load_task(job_app, reminder)
    assert reminder_task.fhir_refs.get("reminder_sent") is False
    assert "Not sent" in (reminder_task.status_note or "")
    assert "not sent" in (load_task(job_app, survey).status_note or "")
    follow_up_task = load_task(job_app, follow_up)
    assert follow_up_task.status == "failed"
    assert "contact" in (follow_up_task.last_error or "").lower()
