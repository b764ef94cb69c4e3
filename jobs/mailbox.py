"""Inbound email: a poller that reads the clinic's mailbox over IMAP.

It takes each message that does not carry CareDesk's keyword flag (``$CareDeskTaken``),
stores it (an ``InboundMessage`` and the task that processes it, one commit), and only
then sets the flag (and ``\\Seen``) on the server. So:

- a message is never taken twice: the flag is on the server, and the row is unique per
  message id, so a message stored but not yet flagged (a poller killed between the two)
  is found as stored on the next poll and only flagged then;
- a poller killed mid-batch loses nothing: what it did not store is still unflagged;
- bodies are fetched with ``BODY.PEEK[]`` so a mailbox a person also reads does not
  show them as read before CareDesk has them.

Attachments are kept as metadata (name, type, size), never their contents; logs name
only UIDs and counts.
"""

from __future__ import annotations

import email
import email.policy
import hashlib
import imaplib
import logging
import re
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import getaddresses, parseaddr
from typing import Any

from flask import Flask, current_app
from sqlalchemy import select

from helpdesk import messaging
from helpdesk.crypto import get_vault
from helpdesk.db import get_store
from helpdesk.errors import ConfigError
from helpdesk.models import EhrRegistration
from helpdesk.timeutil import utcnow
from jobs.inbound import queue_processing
from jobs.outbox import dispatch

log = logging.getLogger("caredesk.jobs.mailbox")

TAKEN_FLAG = "$CareDeskTaken"
_TAGS = re.compile(r"<[^>]+>")


@dataclass
class PollResult:
    seen: int = 0
    stored: int = 0
    already: int = 0
    uids: list[int] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"seen": self.seen, "stored": self.stored, "already": self.already}


def registration_id(app: Flask) -> int:
    slug = app.config.get("IMAP_REGISTRATION")
    with get_store(app).session() as session:
        if slug:
            found = session.scalar(select(EhrRegistration.id).where(EhrRegistration.slug == slug))
            if found is None:
                raise ConfigError(f"CAREDESK_IMAP_REGISTRATION: no registration {slug!r}")
            return int(found)
        ids = list(session.scalars(select(EhrRegistration.id).limit(2)))
    if len(ids) != 1:
        raise ConfigError(
            "CAREDESK_IMAP_REGISTRATION is not set and there is not exactly one registration: "
            "name the EHR whose patients write to this mailbox."
        )
    return int(ids[0])


def connect(app: Flask) -> imaplib.IMAP4:
    cfg = app.config
    if not cfg.get("IMAP_HOST"):
        raise ConfigError("CAREDESK_IMAP_HOST is not set: there is no mailbox to read.")
    host, port = str(cfg["IMAP_HOST"]), int(cfg["IMAP_PORT"])
    conn: imaplib.IMAP4
    if cfg.get("IMAP_SSL"):
        conn = imaplib.IMAP4_SSL(host, port, timeout=30)
    else:
        conn = imaplib.IMAP4(host, port, timeout=30)
    conn.login(str(cfg.get("IMAP_USERNAME") or ""), str(cfg.get("IMAP_PASSWORD") or ""))
    return conn


def poll(app: Flask, *, limit: int | None = None) -> PollResult:
    """Take what is new in the mailbox (at most ``limit``, default ``IMAP_BATCH``)."""
    reg_id = registration_id(app)
    batch = int(limit or app.config["IMAP_BATCH"])
    result = PollResult()
    conn = connect(app)
    try:
        status, _ = conn.select(str(app.config["IMAP_MAILBOX"]))
        if status != "OK":
            raise ConfigError(f"CAREDESK_IMAP_MAILBOX: cannot open {app.config['IMAP_MAILBOX']!r}")
        validity = (conn.response("UIDVALIDITY")[1] or [b"0"])[0]
        status, data = conn.uid("SEARCH", "UNKEYWORD", TAKEN_FLAG)
        uids = [int(u) for u in (data[0] or b"").split()][:batch] if status == "OK" else []
        for uid in uids:
            result.seen += 1
            status, parts = conn.uid("FETCH", str(uid), "(INTERNALDATE BODY.PEEK[])")
            found = next((p for p in parts or () if isinstance(p, tuple) and len(p) > 1), None)
            if status != "OK" or found is None or not isinstance(found[1], bytes):
                log.warning("IMAP: UID %s could not be fetched; left for the next poll", uid)
                continue
            created = _store(
                app,
                reg_id,
                found[1],
                fallback_id=f"{validity.decode()}:{uid}",
                arrived=_internal_date(found[0]),
            )
            if created:
                result.stored += 1
            else:
                result.already += 1
            # Flag only once the row is committed: a kill before this line leaves the
            # message unflagged, and the next poll finds it stored and flags it.
            conn.uid("STORE", str(uid), "+FLAGS", f"({TAKEN_FLAG} \\Seen)")
            result.uids.append(uid)
    finally:
        try:
            conn.logout()
        except (imaplib.IMAP4.error, OSError):
            pass
    log.info(
        "IMAP poll: %d seen, %d stored, %d already stored",
        result.seen,
        result.stored,
        result.already,
    )
    return result


def _internal_date(header: bytes) -> datetime | None:
    """When the mail server received the message (IMAP INTERNALDATE): the thread's order
    follows arrival, not the Date a sender's clock wrote."""
    parsed = imaplib.Internaldate2tuple(header)
    return datetime.fromtimestamp(time.mktime(parsed), UTC) if parsed else None


def _store(
    app: Flask, reg_id: int, raw: bytes, *, fallback_id: str, arrived: datetime | None
) -> bool:
    incoming = parse(raw, reg_id, fallback_id=fallback_id, arrived=arrived)
    with get_store(app).session() as session:
        row, created = messaging.record_inbound(session, get_vault(app), incoming, app=app)
        task = queue_processing(session, row)
        session.commit()
        task_id = task.id if task is not None else None
    if task_id is not None:
        dispatch([task_id], app=app)
    return created


def parse(
    raw: bytes, reg_id: int, *, fallback_id: str, arrived: datetime | None = None
) -> messaging.Incoming:
    """An email as CareDesk keeps it: sender, subject, the text part, threading headers,
    and attachments as metadata only."""
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(msg, EmailMessage)
    sender = parseaddr(str(msg.get("From") or ""))[1]
    message_id = str(msg.get("Message-ID") or "").strip() or None
    references = [
        m
        for header in ("References", "In-Reply-To")
        for m in re.findall(r"<[^<>\s]+>", str(msg.get(header) or ""))
    ]
    # Oldest reference first, the direct parent (In-Reply-To) last.
    ordered = list(dict.fromkeys(references))
    body_part = msg.get_body(preferencelist=("plain", "html"))
    body = ""
    if body_part is not None:
        content = body_part.get_content()
        body = content if body_part.get_content_subtype() == "plain" else _TAGS.sub(" ", content)
    attachments = []
    for part in msg.iter_attachments():
        payload = part.get_payload(decode=True)
        attachments.append(
            {
                "filename": part.get_filename() or "",
                "content_type": part.get_content_type(),
                "size": len(payload) if isinstance(payload, bytes) else 0,
            }
        )
    received = arrived or utcnow()
    provider_id = message_id or fallback_id
    if len(provider_id) > 300:
        provider_id = "sha256:" + hashlib.sha256(provider_id.encode()).hexdigest()
    return messaging.Incoming(
        registration_id=reg_id,
        channel="email",
        provider="imap",
        provider_id=provider_id,
        sender=sender or str(getaddresses([str(msg.get("From") or "")])),
        body=body.strip() + "\n" if body.strip() else "",
        subject=str(msg.get("Subject") or "") or None,
        message_id_header=message_id[:998] if message_id else None,
        in_reply_to=tuple(ordered),
        attachments=tuple(attachments),
        received_at=received,
    )


def poll_job() -> dict[str, Any]:
    """The cron entry point."""
    app: Flask = current_app._get_current_object()  # type: ignore[attr-defined]
    return poll(app).to_json()
