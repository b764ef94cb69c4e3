"""Inbound email from a real mailbox (dovecot over IMAP): a new mail becomes a ticket, a
reply threads onto it (In-Reply-To/References, or the ticket token in the subject), the
poller never takes a message twice, and a poller killed mid-batch loses nothing."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from aiosmtpd.controller import Controller
from sqlalchemy import func, select

from helpdesk.db import get_store
from helpdesk.models import InboundMessage
from jobs.mailbox import TAKEN_FLAG, poll
from tests.ehr import connect_backend
from tests.messaging import mailbox
from tests.messaging.conftest import (
    CONFIG,
    SCOPES,
    SECRET,
    decrypt,
    drain,
    inbound,
    outbound,
    queue,
    rows,
    tickets,
)

ROOT = Path(__file__).resolve().parents[2]
MARGARET = "Margaret Okonkwo <Margaret.1@Example.com>"  # pat-001's email, any case


@pytest.fixture
def box():
    with mailbox.folder() as name:
        yield name


@pytest.fixture
def app(make_app, sandbox, box):
    app = make_app(**CONFIG, **mailbox.imap_config(box))
    connect_backend(app, sandbox, client_id="caredesk-mail", scopes=SCOPES, slug="clinic")
    return app


def test_a_new_mail_becomes_a_ticket_and_is_flagged_taken(app, box) -> None:
    raw, _ = mailbox.mail(MARGARET, "Question about my bill", "Why was I charged twice?\n")
    mailbox.deliver(box, raw)
    result = poll(app)
    assert (result.seen, result.stored, result.already) == (1, 1, 0)
    drain(app)
    [ticket] = tickets(app)
    assert ticket.patient_ref == "Patient/pat-001" and ticket.source == "email"
    [message] = inbound(app)
    assert message.channel == "email" and message.status == "processed"
    assert decrypt(app, message.subject_enc) == "Question about my bill"
    assert decrypt(app, message.sender_enc) == "margaret.1@example.com"
    [flag_line] = mailbox.flags(box).values()
    assert TAKEN_FLAG in flag_line and "\\Seen" in flag_line


def test_replies_thread_by_headers_and_by_the_token_in_the_subject(app, box) -> None:
    first, first_id = mailbox.mail(MARGARET, "Refill", "I need a refill of my inhaler.\n")
    mailbox.deliver(box, first)
    poll(app)
    drain(app)
    [ticket] = tickets(app)
    # The patient writes again, answering their own mail (References/In-Reply-To).
    again, _ = mailbox.mail(
        MARGARET, "Re: Refill", "Also my eye drops.\n", in_reply_to=first_id, references=first_id
    )
    mailbox.deliver(box, again)
    poll(app)
    drain(app)
    # Staff answer by email over SMTP (a real local server), in the thread.
    sink = _SmtpSink()
    with sink.running() as port:
        app.config.update(OUTBOUND_EMAIL="smtp", SMTP_HOST="127.0.0.1", SMTP_PORT=port)
        [last] = [m for m in inbound(app) if m.thread_id][-1:]
        queue(
            app,
            kind="staff-reply",
            patient_ref="Patient/pat-001",
            payload={
                "ticket_id": ticket.id,
                "in_reply_to": last.id,
                "channel": "email",
                "body_enc": _encrypt(app, "Both refills are at the pharmacy."),
            },
            created_by="Practitioner/prac-clinician-lee",
        )
        drain(app)
    [reply] = outbound(app, "staff-reply")
    assert reply.thread_id == last.thread_id and reply.author == "Practitioner/prac-clinician-lee"
    [sent_raw] = sink.messages
    assert b"In-Reply-To: " + last.message_id_header.encode() in sent_raw
    token = rows(app, __import__("helpdesk.models", fromlist=["MessageThread"]).MessageThread)[
        0
    ].token
    assert f"[CD-{token}]".encode() in sent_raw
    # The patient answers our reply; then someone else writes with only the token.
    answer, _ = mailbox.mail(MARGARET, "Re: Refill", "Thank you!\n", in_reply_to=reply.provider_id)
    other, _ = mailbox.mail(
        "Chidi <chidi@family.example>", f"About my mother [CD-{token}]", "Can I pick them up?\n"
    )
    mailbox.deliver(box, answer, other)
    poll(app)
    drain(app)
    assert len(tickets(app)) == 1
    messages = inbound(app)
    assert len(messages) == 4
    assert {m.thread_id for m in messages} == {ticket.id and messages[0].thread_id}
    assert [m.match for m in messages] == ["unique", "thread", "thread", "thread"]


def test_polling_twice_takes_nothing_twice(app, box) -> None:
    mailbox.deliver(
        box, *(mailbox.mail(MARGARET, f"Note {i}", f"Message {i}\n")[0] for i in range(3))
    )
    first = poll(app)
    second = poll(app)
    assert (first.stored, second.seen, second.stored) == (3, 0, 0)
    # Even with the flags gone (someone cleared them by hand), the rows stay unique.
    with mailbox.connection() as conn:
        conn.select(box)
        conn.uid("STORE", "1:*", "-FLAGS", f"({TAKEN_FLAG})")
    third = poll(app)
    assert (third.seen, third.stored, third.already) == (3, 0, 3)
    assert len(inbound(app)) == 3


def test_a_poller_killed_mid_batch_loses_nothing(app, box) -> None:
    count = 120
    mailbox.deliver(
        box, *(mailbox.mail(MARGARET, f"Batch {i}", f"Message {i}\n")[0] for i in range(count))
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("CAREDESK_")}
    env.update({f"CAREDESK_{k}": str(v) for k, v in mailbox.imap_config(box).items()})
    env.update(
        CAREDESK_ENV="test",
        CAREDESK_SECRET_KEY=SECRET,
        CAREDESK_DATABASE_URL=app.config["DATABASE_URL"],
        CAREDESK_REDIS_URL=app.config["REDIS_URL"],
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "plugin.cli", "inbound", "poll", "--limit", str(count)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    stored = 0
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        stored = _count(app)
        if stored >= 10:
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    assert proc.returncode == -signal.SIGKILL
    killed_at = _count(app)
    assert 10 <= killed_at < count, "the poller was not killed mid-batch"
    rest = poll(app, limit=count)
    assert rest.stored == count - killed_at
    assert rest.already <= 1  # at most the one stored just before the kill, not yet flagged
    assert _count(app) == count
    with get_store(app).session() as session:
        ids = list(session.scalars(select(InboundMessage.provider_id)))
    assert len(set(ids)) == count
    assert all(TAKEN_FLAG in line for line in mailbox.flags(box).values())
    assert len(mailbox.flags(box)) == count


def test_attachments_are_kept_as_metadata_and_nothing_of_the_mail_is_logged(
    app, box, caplog
) -> None:
    # CareDesk's own loggers at their most talkative (urllib3's DEBUG lines carry request
    # URLs: a FHIR search by email is a GET with the address in its query string).
    caplog.set_level(logging.DEBUG, logger="caredesk")
    raw, _ = mailbox.mail(
        MARGARET,
        "My lab report",
        "See the attached report.\n",
        attachment=("okonkwo-labs.pdf", b"%PDF-1.4 secret lab values"),
    )
    mailbox.deliver(box, raw)
    poll(app)
    drain(app)
    [message] = inbound(app)
    assert message.attachment_count == 1
    [meta] = json.loads(decrypt(app, message.attachments_enc))
    assert meta == {"filename": "okonkwo-labs.pdf", "content_type": "application/pdf", "size": 26}
    assert b"secret lab values" not in decrypt(app, message.body_enc).encode()
    for needle in ("okonkwo", "lab report", "Margaret", "example.com", "secret lab"):
        assert needle.lower() not in caplog.text.lower()


def _count(app) -> int:
    with get_store(app).session() as session:
        return int(session.scalar(select(func.count()).select_from(InboundMessage)) or 0)


def _encrypt(app, text: str) -> str:
    from helpdesk.crypto import get_vault

    return get_vault(app).encrypt(text).decode()


class _SmtpSink:
    def __init__(self) -> None:
        self.messages: list[bytes] = []
        self._lock = threading.Lock()

    async def handle_DATA(self, server, session, envelope):  # type: ignore[no-untyped-def]
        with self._lock:
            self.messages.append(envelope.content)
        return "250 OK"

    def running(self):  # type: ignore[no-untyped-def]
        import contextlib
        import socket

        @contextlib.contextmanager
        def run():  # type: ignore[no-untyped-def]
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                port = int(s.getsockname()[1])
            controller = Controller(self, hostname="127.0.0.1", port=port)
            controller.start()
            try:
                yield port
            finally:
                controller.stop()

        return run()
