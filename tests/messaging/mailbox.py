"""The test IMAP server (Debian's dovecot, started by `make services`:
scripts/ensure-dovecot.sh) and a fresh folder per test."""

from __future__ import annotations

import datetime as dt
import imaplib
import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid
from typing import Any

IMAP_PORT = int(os.environ.get("CAREDESK_TEST_IMAP_PORT", "10143"))
USER = "caredesk-test"
PASSWORD = "caredesk-test-password"


def imap_config(folder: str) -> dict[str, Any]:
    return {
        "IMAP_HOST": "127.0.0.1",
        "IMAP_PORT": IMAP_PORT,
        "IMAP_SSL": False,
        "IMAP_USERNAME": USER,
        "IMAP_PASSWORD": PASSWORD,
        "IMAP_MAILBOX": folder,
        "IMAP_REGISTRATION": "clinic",
    }


@contextmanager
def connection() -> Iterator[imaplib.IMAP4]:
    conn = imaplib.IMAP4("127.0.0.1", IMAP_PORT, timeout=10)
    try:
        conn.login(USER, PASSWORD)
        yield conn
    finally:
        conn.logout()


@contextmanager
def folder() -> Iterator[str]:
    """A folder of the test mailbox that lives for one test."""
    name = "t" + secrets.token_hex(6)
    with connection() as conn:
        status, _ = conn.create(name)
        assert status == "OK"
    try:
        yield name
    finally:
        with connection() as conn:
            conn.delete(name)


def mail(
    sender: str,
    subject: str,
    body: str,
    *,
    in_reply_to: str | None = None,
    references: str | None = None,
    attachment: tuple[str, bytes] | None = None,
    message_id: str | None = None,
) -> tuple[bytes, str]:
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = "desk@clinic.example"
    msg["Subject"] = subject
    msg["Date"] = format_datetime(dt.datetime.now(dt.UTC) - dt.timedelta(seconds=5))
    mid = message_id or make_msgid(domain="patient.example")
    msg["Message-ID"] = mid
    if in_reply_to:
        msg["In-Reply-To"] = in_reply_to
    if references:
        msg["References"] = references
    msg.set_content(body)
    if attachment:
        name, data = attachment
        msg.add_attachment(data, maintype="application", subtype="pdf", filename=name)
    return msg.as_bytes(), mid


def deliver(name: str, *messages: bytes, arrived: dt.datetime | None = None) -> None:
    """Put mail in the folder as the mail server's delivery would (IMAP APPEND); ``arrived``
    is the server's receipt time (INTERNALDATE, whole seconds), default now."""
    when = imaplib.Time2Internaldate(arrived.timestamp()) if arrived else None
    with connection() as conn:
        for raw in messages:
            status, _ = conn.append(name, None, when, raw)
            assert status == "OK"


def flags(name: str) -> dict[int, str]:
    with connection() as conn:
        conn.select(name, readonly=True)
        status, data = conn.uid("FETCH", "1:*", "(FLAGS)")
        out: dict[int, str] = {}
        for line in data or []:
            if isinstance(line, bytes) and b"UID" in line:
                text = line.decode()
                uid = int(text.split("UID ")[1].split()[0].rstrip(")"))
                out[uid] = text
        return out
