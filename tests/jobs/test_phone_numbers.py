"""Phone numbers become E.164 with libphonenumber before any SMS: national forms read in
the clinic's region (PHONE_REGION), international forms as written, WhatsApp addresses as
the same number; what is not a possible number is refused, not texted."""

from __future__ import annotations

import datetime as dt

import pytest
from sqlalchemy import select

from helpdesk import registry
from helpdesk.crypto import get_vault
from helpdesk.db import get_store
from helpdesk.messaging import normalise_phone
from helpdesk.models import OutboundMessage
from helpdesk.tasks import new_task
from jobs.context import JobContext
from jobs.outbound import NoReachableChannel


@pytest.mark.parametrize(
    ("raw", "region", "e164"),
    [
        ("(312) 555-0120", "US", "+13125550120"),
        ("312.555.0120", "US", "+13125550120"),
        ("+1 312-555-0120", "GB", "+13125550120"),  # international: the region is moot
        ("020 7946 0018", "GB", "+442079460018"),
        ("07700 900123", "GB", "+447700900123"),
        ("07700 900123", "US", None),  # a UK mobile written nationally is no US number
        ("whatsapp:+447700900123", "US", "+447700900123"),
        ("555", "US", None),
        ("call the front desk", "US", None),
        ("", "US", None),
    ],
)
def test_normalise_phone(raw: str, region: str, e164: str | None) -> None:
    assert normalise_phone(raw, region) == e164


def _patient(phone: str) -> dict:  # type: ignore[type-arg]
    return {
        "resourceType": "Patient",
        "id": "pat-gb",
        "name": [{"given": ["Olivia"], "family": "Hughes"}],
        "telecom": [{"system": "phone", "use": "mobile", "value": phone, "rank": 1}],
    }


def _send(app, phone: str) -> str:  # type: ignore[no-untyped-def]
    """A follow-up text to a patient whose EHR record has ``phone``; the number the
    message went to."""
    with app.app_context(), get_store(app).session() as session:
        reg = registry.upsert(
            session, get_vault(app), slug="gb", iss="https://ehr.example/fhir", client_id="c"
        )
        session.flush()
        task = new_task(
            session,
            registration_id=reg.id,
            kind="follow-up",
            patient_ref="Patient/pat-gb",
            payload={"reason": "results"},
        )
        assert task is not None
        session.flush()
        ctx = JobContext(app=app, session=session, task=task, now=dt.datetime.now(dt.UTC))
        ctx.send(
            patient=_patient(phone),
            channel="sms",
            template="follow-up",
            language="en",
            params={"reason": "results"},
        )
        row = session.scalars(select(OutboundMessage)).one()
        return get_vault(app).decrypt(row.to_enc)


def test_sms_goes_to_the_e164_number_read_in_the_configured_region(make_app) -> None:  # type: ignore[no-untyped-def]
    app = make_app(PHONE_REGION="GB")
    assert _send(app, "07700 900123") == "+447700900123"


def test_a_number_that_cannot_be_read_is_not_texted(make_app) -> None:  # type: ignore[no-untyped-def]
    app = make_app(PHONE_REGION="US")
    with pytest.raises(NoReachableChannel, match="cannot be read as a phone number"):
        _send(app, "07700 900123")
    with get_store(app).session() as session:
        assert session.scalars(select(OutboundMessage)).all() == []
