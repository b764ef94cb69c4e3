"""Two-way messaging on rows: inbound messages, threads, STOP/START, the conversation.

The rules here are the ones several layers need, so they live once, beneath the web
edge (the webhook, the unmatched queue, the ticket page) and the jobs (processing an
inbound message, the IMAP poller, every send):

- addresses are normalised before they are compared or texted: phone numbers to E.164
  (libphonenumber, region ``PHONE_REGION``), emails to lower case; rows keep an HMAC of
  the normal form (``address_key``) so look-ups never decrypt, and logs never see one;
- an inbound message is stored once per provider message id (``record_inbound``: the
  provider retries a delivery it thinks failed);
- a STOP (``opt_out``) is a CareDesk-side restriction on the channel for that address
  and, when the sender is known, for that patient; START lifts it; ``opt_out_for`` is
  what every send consults;
- the carriers' keywords are single words (Twilio: "STOP PLEASE" is not an opt-out), so
  ``classify`` reads a message as a keyword only when it is one word.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, TypedDict

import phonenumbers
from flask import Flask, current_app
from sqlalchemy import or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from helpdesk.crypto import Vault
from helpdesk.models import (
    CareTask,
    ContactOptOut,
    InboundMessage,
    MessageThread,
    OutboundMessage,
    RuleRun,
    Ticket,
)
from helpdesk.timeutil import utcnow

TEXT_CHANNELS = ("sms", "whatsapp")
CHANNELS = (*TEXT_CHANNELS, "email")

# Carrier conventions (CTIA; Twilio's default keyword handling) plus their Spanish
# equivalents. Only a message that is exactly one of these words counts. YES is an opt-in
# word for Twilio, but a patient answering a reminder "yes" means "I will come", not
# "text me again": CareDesk stays on the stricter side and does not take it as START.
STOP_WORDS = frozenset(
    {"STOP", "STOPALL", "UNSUBSCRIBE", "CANCEL", "END", "QUIT", "REVOKE", "OPTOUT"}
    | {"ALTO", "PARAR", "PARE", "DETENER", "CANCELAR", "BAJA"}
)
START_WORDS = frozenset({"START", "UNSTOP", "INICIO", "INICIAR", "COMENZAR", "REANUDAR"})
HELP_WORDS = frozenset({"HELP", "INFO", "AYUDA"})
# Answers to "Reply C to confirm, R to reschedule" (the reminder templates, EN/ES).
CONFIRM_WORDS = frozenset({"C", "CONFIRM", "CONFIRMED", "CONFIRMAR", "CONFIRMO"})
RESCHEDULE_WORDS = frozenset({"R", "RESCHEDULE", "REPROGRAMAR", "CAMBIAR"})

INTENTS = ("stop", "start", "help", "confirm", "reschedule", "message")

TOKEN_RE = re.compile(r"\[CD-([0-9a-f]{8})\]", re.IGNORECASE)


# --- addresses ---------------------------------------------------------------------------


def normalise_phone(raw: str, region: str = "US") -> str | None:
    """E.164 (``+13125550104``) or None when it is not a possible phone number.

    ``whatsapp:`` prefixes (Twilio's WhatsApp addresses) are dropped: the number is the
    same person's. Possible, not valid: libphonenumber calls fictional ranges (555-01xx)
    invalid, and a clinic's test patients live there.
    """
    text = raw.strip().removeprefix("whatsapp:").strip()
    if not text or len(text) > 64:
        return None
    try:
        number = phonenumbers.parse(text, region.upper() or None)
    except phonenumbers.NumberParseException:
        return None
    if not phonenumbers.is_possible_number(number):
        return None
    return str(phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164))


def normalise_address(channel: str, raw: str, region: str = "US") -> str | None:
    if channel == "email":
        address = raw.strip().lower()
        return address if "@" in address and len(address) <= 320 else None
    return normalise_phone(raw, region)


def phone_region(app: Flask | None = None) -> str:
    return str((app or current_app).config.get("PHONE_REGION") or "US")


def address_key(address: str, app: Flask | None = None) -> str:
    """HMAC of a normalised address: rows compare senders without decrypting them, and a
    leaked table does not give out phone numbers (their space is small enough to hash
    through, so a plain hash would)."""
    secret = str((app or current_app).config["SECRET_KEY"]).encode()
    return hmac.new(secret, b"address:" + address.encode(), hashlib.sha256).hexdigest()


# --- keywords ----------------------------------------------------------------------------


def one_word(text: str) -> str:
    """The message as one upper-case word without accents or trailing punctuation, or ""
    when it is more than a word."""
    stripped = text.strip().strip(".!¡?¿,;:\"'").strip()
    if not stripped or any(c.isspace() for c in stripped):
        return ""
    folded = unicodedata.normalize("NFKD", stripped)
    return "".join(c for c in folded if not unicodedata.combining(c)).upper()


def classify(text: str) -> str:
    """``stop``, ``start``, ``help``, ``confirm``, ``reschedule`` or ``message``."""
    word = one_word(text)
    if word in STOP_WORDS:
        return "stop"
    if word in START_WORDS:
        return "start"
    if word in HELP_WORDS:
        return "help"
    if word in CONFIRM_WORDS:
        return "confirm"
    if word in RESCHEDULE_WORDS:
        return "reschedule"
    return "message"


def first_line(text: str) -> str:
    """An email reply's own words: the first non-empty line above the quoted message."""
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith(">"):
            break
        if stripped:
            return stripped
    return ""


# --- storing what arrives ----------------------------------------------------------------


@dataclass(frozen=True)
class Incoming:
    registration_id: int
    channel: str
    provider: str
    provider_id: str
    sender: str  # as the provider gave it
    body: str
    subject: str | None = None
    message_id_header: str | None = None
    in_reply_to: tuple[str, ...] = ()
    attachments: tuple[dict[str, Any], ...] = ()
    received_at: datetime | None = None


def record_inbound(
    session: Session, vault: Vault, incoming: Incoming, *, app: Flask | None = None
) -> tuple[InboundMessage, bool]:
    """Store a message once per (provider, provider id); ``(row, created)``. Commits.

    The unique constraint makes "once" hold across processes: two deliveries racing in
    two web workers store one row, and the loser reads the winner's.
    """
    found = _by_provider_id(session, incoming.provider, incoming.provider_id)
    if found is not None:
        return found, False
    normal = normalise_address(incoming.channel, incoming.sender, phone_region(app))
    row = InboundMessage(
        registration_id=incoming.registration_id,
        channel=incoming.channel,
        provider=incoming.provider,
        provider_id=incoming.provider_id,
        sender_enc=vault.encrypt(normal or incoming.sender),
        sender_key=address_key(normal or incoming.sender.strip(), app),
        subject_enc=vault.encrypt_optional(incoming.subject),
        body_enc=vault.encrypt(incoming.body),
        attachments_enc=vault.encrypt(json.dumps(list(incoming.attachments)))
        if incoming.attachments
        else None,
        attachment_count=len(incoming.attachments),
        message_id_header=incoming.message_id_header,
        in_reply_to=list(incoming.in_reply_to),
        received_at=incoming.received_at or utcnow(),
        status="received",
    )
    session.add(row)
    try:
        session.commit()
    except IntegrityError:
        session.rollback()
        existing = _by_provider_id(session, incoming.provider, incoming.provider_id)
        if existing is None:
            raise
        return existing, False
    return row, True


def _by_provider_id(session: Session, provider: str, provider_id: str) -> InboundMessage | None:
    return session.scalar(
        select(InboundMessage).where(
            InboundMessage.provider == provider, InboundMessage.provider_id == provider_id
        )
    )


# --- STOP and START ----------------------------------------------------------------------


@dataclass(frozen=True)
class Sender:
    """Whom a STOP or START is about: an address (by its ``address_key``) on a channel of
    one EHR, and the patient it is known to be, if any. Either may be unknown when
    asking whether a STOP stands (``opt_out_for``)."""

    registration_id: int
    channel: str
    address_key: str | None
    patient_ref: str | None

    @classmethod
    def of(cls, message: InboundMessage) -> Sender:
        """The sender of an inbound message, as matched so far."""
        return cls(
            message.registration_id, message.channel, message.sender_key, message.patient_ref
        )


def opt_out(
    session: Session,
    sender: Sender,
    *,
    keyword: str,
    message_id: int | None = None,
    now: datetime | None = None,
) -> ContactOptOut:
    """Record a STOP from ``sender``'s address (the caller commits). A second STOP while
    one stands adds nothing."""
    if not sender.address_key:
        raise ValueError("a STOP is recorded against the address it came from")
    current = session.scalar(
        select(ContactOptOut).where(
            ContactOptOut.registration_id == sender.registration_id,
            ContactOptOut.channel == sender.channel,
            ContactOptOut.address_key == sender.address_key,
            ContactOptOut.lifted_at.is_(None),
        )
    )
    if current is not None:
        if sender.patient_ref and not current.patient_ref:
            current.patient_ref = sender.patient_ref
        return current
    row = ContactOptOut(
        registration_id=sender.registration_id,
        channel=sender.channel,
        address_key=sender.address_key,
        patient_ref=sender.patient_ref,
        keyword=keyword,
        opted_out_at=now or utcnow(),
        message_id=message_id,
    )
    session.add(row)
    return row


def opt_in(session: Session, sender: Sender, *, keyword: str, now: datetime | None = None) -> int:
    """START: lift every standing STOP of this address on this channel, and the patient's
    on this channel (they texted from the number the STOP came from, or a new one of
    theirs). Returns how many were lifted; the caller commits."""
    where = _standing(sender)
    if not where:
        return 0
    rows = session.scalars(select(ContactOptOut).where(*where)).all()
    for row in rows:
        row.lifted_at = now or utcnow()
        row.lifted_keyword = keyword
    return len(rows)


def opt_out_for(session: Session, sender: Sender) -> ContactOptOut | None:
    """The standing STOP that forbids sending on the sender's channel to this address or
    this patient."""
    where = _standing(sender)
    if not where:
        return None
    return session.scalar(
        select(ContactOptOut).where(*where).order_by(ContactOptOut.id.desc()).limit(1)
    )


def _standing(sender: Sender) -> list[Any]:
    """Where-clauses of the STOPs still standing for ``sender``'s address or patient on
    its channel; empty when neither is known."""
    match = []
    if sender.address_key:
        match.append(ContactOptOut.address_key == sender.address_key)
    if sender.patient_ref:
        match.append(ContactOptOut.patient_ref == sender.patient_ref)
    if not match:
        return []
    return [
        ContactOptOut.registration_id == sender.registration_id,
        ContactOptOut.channel == sender.channel,
        ContactOptOut.lifted_at.is_(None),
        or_(*match),
    ]


def opt_outs_of(session: Session, registration_id: int, patient_ref: str) -> list[ContactOptOut]:
    """The patient's standing STOPs (the sidebar shows them)."""
    return list(
        session.scalars(
            select(ContactOptOut)
            .where(
                ContactOptOut.registration_id == registration_id,
                ContactOptOut.patient_ref == patient_ref,
                ContactOptOut.lifted_at.is_(None),
            )
            .order_by(ContactOptOut.id)
        )
    )


CHANNEL_WORDS = {"sms": "texts", "whatsapp": "WhatsApp messages", "email": "emails"}


def opt_out_reason(row: ContactOptOut, zone: Any = None) -> str:
    """Why a send was refused, in words staff read on the task, the ticket or the page."""
    return _reason(row.channel, row.keyword, row.opted_out_at, zone)


def _reason(channel: str, keyword: str, at: datetime, zone: Any) -> str:
    when = at.astimezone(zone) if zone else at
    what = CHANNEL_WORDS.get(channel, channel)
    return (
        f"The patient replied {keyword} on {when:%b %-d, %Y}: CareDesk sends them no "
        f"{what} until they reply START."
    )


# --- threads -----------------------------------------------------------------------------


def thread_of(session: Session, ticket: Ticket) -> MessageThread:
    """The ticket's conversation, made on first use (the caller commits)."""
    found = session.scalar(select(MessageThread).where(MessageThread.ticket_id == ticket.id))
    if found is not None:
        return found
    thread = MessageThread(
        registration_id=ticket.registration_id,
        ticket_id=ticket.id,
        token=secrets.token_hex(4),
        created_at=utcnow(),
        last_message_at=utcnow(),
    )
    session.add(thread)
    session.flush()
    return thread


def thread_by_token(
    session: Session, registration_id: int, subject: str | None
) -> MessageThread | None:
    for token in TOKEN_RE.findall(subject or ""):
        found = session.scalar(
            select(MessageThread).where(
                MessageThread.registration_id == registration_id,
                MessageThread.token == token.lower(),
            )
        )
        if found is not None:
            return found
    return None


def thread_by_headers(
    session: Session, registration_id: int, message_ids: Sequence[str]
) -> MessageThread | None:
    """The thread an email answers: one of our sent messages' Message-ID, or an earlier
    inbound message's, among its In-Reply-To/References (newest reference first)."""
    ids = [m for m in message_ids if m][-20:]
    if not ids:
        return None
    for message_id in reversed(ids):
        thread_id = session.scalar(
            select(OutboundMessage.thread_id).where(
                OutboundMessage.registration_id == registration_id,
                OutboundMessage.provider_id == message_id,
                OutboundMessage.thread_id.is_not(None),
            )
        ) or session.scalar(
            select(InboundMessage.thread_id).where(
                InboundMessage.registration_id == registration_id,
                InboundMessage.message_id_header == message_id,
                InboundMessage.thread_id.is_not(None),
            )
        )
        if thread_id is not None:
            return session.get(MessageThread, thread_id)
    return None


def attach(
    session: Session, message: InboundMessage, ticket: Ticket, *, now: datetime | None = None
) -> MessageThread:
    """Put an inbound message on a ticket's thread (the caller commits)."""
    thread = thread_of(session, ticket)
    message.thread_id = thread.id
    message.patient_ref = message.patient_ref or ticket.patient_ref
    message.status = "processed"
    message.processed_at = now or utcnow()
    thread.last_message_at = max(thread.last_message_at, message.received_at)
    ticket.updated_at = now or utcnow()
    if ticket.status == "pending":
        # "pending" waits on the patient; they have answered.
        ticket.status = "open"
    return thread


def recent_ticket(
    session: Session, registration_id: int, patient_ref: str, *, window: timedelta, now: datetime
) -> Ticket | None:
    """The patient's open ticket whose conversation moved within ``window``, newest first."""
    return session.scalar(
        select(Ticket)
        .join(MessageThread, MessageThread.ticket_id == Ticket.id)
        .where(
            Ticket.registration_id == registration_id,
            Ticket.patient_ref == patient_ref,
            Ticket.status.in_(("open", "pending")),
            MessageThread.last_message_at >= now - window,
        )
        .order_by(MessageThread.last_message_at.desc())
        .limit(1)
    )


# --- what the ticket page shows ----------------------------------------------------------


@dataclass(frozen=True)
class Entry:
    at: datetime
    direction: str  # inbound | outbound
    channel: str
    body: str
    subject: str | None
    who: str | None
    status: str  # received | sent | queued | failed | ...
    note: str | None = None
    attachments: tuple[dict[str, Any], ...] = ()
    kind: str = "message"


class _Content(TypedDict):
    channel: str
    body: str
    subject: str | None


def _content(vault: Vault, message: InboundMessage | OutboundMessage) -> _Content:
    """What a stored message said, inbound or outbound: its channel and its text, decrypted."""
    return {
        "channel": message.channel,
        "body": vault.decrypt(message.body_enc),
        "subject": vault.decrypt_optional(message.subject_enc),
    }


def conversation(session: Session, vault: Vault, ticket: Ticket) -> list[Entry]:
    """The ticket's thread in order: what the patient sent, what CareDesk and staff sent,
    and staff replies still on their way (or refused, with the reason)."""
    thread = session.scalar(select(MessageThread).where(MessageThread.ticket_id == ticket.id))
    entries: list[Entry] = []
    if thread is not None:
        for msg in session.scalars(
            select(InboundMessage).where(InboundMessage.thread_id == thread.id)
        ):
            attachments = (
                tuple(json.loads(vault.decrypt(msg.attachments_enc))) if msg.attachments_enc else ()
            )
            entries.append(
                Entry(
                    **_content(vault, msg),
                    at=msg.received_at,
                    direction="inbound",
                    who="patient",
                    status="received",
                    # "Added to ticket 3" says nothing on ticket 3's own page.
                    note=msg.outcome if msg.result not in ("ticket", None) else None,
                    attachments=attachments,
                )
            )
        for out in session.scalars(
            select(OutboundMessage).where(OutboundMessage.thread_id == thread.id)
        ):
            entries.append(
                Entry(
                    **_content(vault, out),
                    at=out.created_at,
                    direction="outbound",
                    who=out.author or "CareDesk",
                    status=out.status,
                    kind="reply" if out.template == REPLY_TEMPLATE else out.template,
                )
            )
    for task in session.scalars(
        select(CareTask).where(
            CareTask.registration_id == ticket.registration_id,
            CareTask.kind == REPLY_KIND,
            CareTask.status != "done",
            CareTask.payload["ticket_id"].as_integer() == ticket.id,
        )
    ):
        entries.append(
            Entry(
                at=task.created_at,
                direction="outbound",
                channel=str(task.payload.get("channel") or ""),
                body=vault.decrypt(str(task.payload["body_enc"]).encode()),
                subject=None,
                who=task.created_by,
                status=task.status,
                note=task.last_error or task.status_note,
                kind="reply",
            )
        )
    entries.sort(key=lambda e: e.at)
    return entries


def rule_runs(session: Session, ticket_id: int) -> list[RuleRun]:
    return list(
        session.scalars(select(RuleRun).where(RuleRun.ticket_id == ticket_id).order_by(RuleRun.id))
    )


# --- staff replies -----------------------------------------------------------------------

REPLY_KIND = "staff-reply"
REPLY_TEMPLATE = "staff-reply"


def reply_channel(session: Session, ticket: Ticket) -> InboundMessage | None:
    """The patient's latest message on the ticket: a reply goes back on its channel, to
    the address it came from."""
    thread = session.scalar(select(MessageThread).where(MessageThread.ticket_id == ticket.id))
    if thread is None:
        return None
    return session.scalar(
        select(InboundMessage)
        .where(InboundMessage.thread_id == thread.id)
        .order_by(InboundMessage.received_at.desc(), InboundMessage.id.desc())
        .limit(1)
    )


def unmatched(session: Session, registration_id: int, limit: int = 100) -> list[InboundMessage]:
    return list(
        session.scalars(
            select(InboundMessage)
            .where(
                InboundMessage.registration_id == registration_id,
                InboundMessage.status == "unmatched",
            )
            .order_by(InboundMessage.received_at, InboundMessage.id)
            .limit(limit)
        )
    )


# --- what the sidebar and the board read -------------------------------------------------


def appointment_replies(
    session: Session, registration_id: int, appointment_refs: Sequence[str]
) -> dict[str, dict[str, Any]]:
    """The patient's latest answer to a reminder per appointment: ``{"intent": "confirm" |
    "reschedule", "at", "result", "text"}`` (``result`` says whether the EHR took it)."""
    if not appointment_refs:
        return {}
    out: dict[str, dict[str, Any]] = {}
    for row in session.scalars(
        select(InboundMessage)
        .where(
            InboundMessage.registration_id == registration_id,
            InboundMessage.appointment_ref.in_(list(appointment_refs)),
            InboundMessage.intent.in_(("confirm", "reschedule")),
            InboundMessage.status == "processed",
        )
        .order_by(InboundMessage.received_at, InboundMessage.id)
    ):
        out[str(row.appointment_ref)] = {
            "intent": row.intent,
            "at": row.received_at.isoformat(),
            "result": row.result,
            "text": REPLY_TEXT.get(str(row.result), row.outcome or ""),
        }
    return out


REPLY_TEXT = {
    "confirmed-in-ehr": "Confirmed by the patient (text reply)",
    "confirmed-staff-task": "Patient confirmed by text; staff to update the EHR",
    "reschedule-ticket": "Patient asked to reschedule",
}


def summary(
    session: Session, registration_id: int, patient_ref: str, appointment_refs: Sequence[str]
) -> dict[str, Any]:
    """The sidebar's ``messaging`` part: standing STOPs and answers to reminders."""
    return {
        "opt_outs": [
            {
                "channel": row.channel,
                "keyword": row.keyword,
                "since": row.opted_out_at.isoformat(),
                "text": f"Replied {row.keyword}: no {CHANNEL_WORDS.get(row.channel, row.channel)}",
            }
            for row in opt_outs_of(session, registration_id, patient_ref)
        ],
        "replies": appointment_replies(session, registration_id, appointment_refs),
    }


def stopped_channels(
    session: Session, registration_id: int, patient_ref: str, zone: Any = None
) -> dict[str, str]:
    """The follow-up channels a STOP closes for the patient, with the reason: what the
    sidebar disables (the send path refuses them anyway)."""
    rows = opt_outs_of(session, registration_id, patient_ref)
    return _stopped([(r.channel, r.keyword, r.opted_out_at) for r in rows], zone)


def stopped_in_summary(summary: Mapping[str, Any], zone: Any = None) -> dict[str, str]:
    """``stopped_channels`` from a ``summary`` already read (the sidebar's cached context
    holds one), without reading the store again."""
    standing = []
    for item in summary.get("opt_outs") or ():
        try:
            # ``summary`` wrote it with isoformat(): the row's own value comes back.
            at = datetime.fromisoformat(str(item.get("since")))
        except ValueError:
            continue
        standing.append((str(item.get("channel")), str(item.get("keyword")), at))
    return _stopped(standing, zone)


def _stopped(standing: Sequence[tuple[str, str, datetime]], zone: Any) -> dict[str, str]:
    out: dict[str, str] = {}
    for channel, keyword, at in standing:
        if channel in ("sms", "email"):
            out.setdefault(channel, _reason(channel, keyword, at, zone))
    return out
