"""The messaging rows on both stores (SQLite and the real PostgreSQL): a message stored
once per provider id, STOP and START on address and patient, and the conversation's
query over a pending staff reply (a JSON path on the task's payload)."""

from __future__ import annotations

from helpdesk import messaging
from helpdesk.crypto import get_vault
from helpdesk.db import get_store
from helpdesk.models import EhrRegistration
from helpdesk.tasks import new_task
from helpdesk.tickets import open_ticket


def test_messaging_rows_on_both_stores(make_app, store_url) -> None:
    app = make_app(DATABASE_URL=store_url)
    vault = get_vault(app)
    with app.app_context(), get_store(app).session() as session:
        reg = EhrRegistration(
            slug="s",
            name="s",
            iss="http://127.0.0.1:9/fhir",
            client_id="c",
            client_type="public",
            scopes="launch",
        )
        session.add(reg)
        session.flush()
        incoming = messaging.Incoming(
            registration_id=reg.id,
            channel="sms",
            provider="twilio",
            provider_id="SM1",
            sender="(312) 555-0104",
            body="hello",
        )
        first, created = messaging.record_inbound(session, vault, incoming, app=app)
        again, created_again = messaging.record_inbound(session, vault, incoming, app=app)
        assert (created, created_again, first.id) == (True, False, again.id)
        assert vault.decrypt(first.sender_enc) == "+13125550104"
        key = messaging.address_key("+13125550104", app)
        assert first.sender_key == key

        messaging.opt_out(
            session, messaging.Sender(reg.id, "sms", key, "Patient/p1"), keyword="STOP"
        )
        session.flush()
        by_patient = messaging.opt_out_for(
            session, messaging.Sender(reg.id, "sms", None, "Patient/p1")
        )
        other_channel = messaging.opt_out_for(
            session, messaging.Sender(reg.id, "email", key, "Patient/p1")
        )
        assert by_patient is not None and other_channel is None
        assert (
            messaging.opt_in(
                session, messaging.Sender(reg.id, "sms", "other", "Patient/p1"), keyword="START"
            )
            == 1
        )
        session.flush()
        assert messaging.opt_out_for(session, messaging.Sender(reg.id, "sms", key, None)) is None

        ticket = open_ticket(
            session,
            registration_id=reg.id,
            patient_ref="Patient/p1",
            subject="s",
            category="billing",
        )
        messaging.attach(session, first, ticket)
        reply = new_task(
            session,
            registration_id=reg.id,
            kind=messaging.REPLY_KIND,
            patient_ref="Patient/p1",
            payload={
                "ticket_id": ticket.id,
                "in_reply_to": first.id,
                "channel": "sms",
                "body_enc": vault.encrypt("on my way").decode(),
            },
        )
        assert reply is not None
        session.flush()
        entries = messaging.conversation(session, vault, ticket)
        assert [(e.direction, e.body, e.status) for e in entries] == [
            ("inbound", "hello", "received"),
            ("outbound", "on my way", "queued"),
        ]
