"""The help-desk store: the only data CareDesk owns. Clinical data stays in the EHR.

Rows point at the EHR's data by FHIR reference (``Patient/123``) instead of copying it: no
patient names, birth dates or addresses in plain columns. What the help desk itself must
keep about a person is either staff-facing and not patient data (the clinic's and the
clinician's names on a survey invitation, shown on the public page without the EHR) or
encrypted by ``helpdesk.crypto`` (the address and text of a message sent to a patient,
client secrets, private keys, token sets); columns holding ciphertext end in ``_enc``.
Free text staff type (a ticket's subject, a note) may mention a patient: it never goes
to a log (database errors hide statement values) and is shown only to the registration.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from helpdesk.timeutil import utcnow


class UTCDateTime(TypeDecorator[datetime]):
    """Stored as UTC, always returned aware. SQLite drops tzinfo; this puts it back."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime written to the store")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


class Base(DeclarativeBase):
    type_annotation_map = {datetime: UTCDateTime(), dict[str, Any]: JSON(), list[Any]: JSON()}


class TimestampMixin:
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class EhrRegistration(TimestampMixin, Base):
    """One EHR (FHIR base) CareDesk is registered with. Only these may launch it."""

    __tablename__ = "ehr_registration"

    id: Mapped[int] = mapped_column(primary_key=True)
    slug: Mapped[str] = mapped_column(String(64), unique=True)
    name: Mapped[str] = mapped_column(String(200))
    iss: Mapped[str] = mapped_column(String(1024), unique=True)
    client_id: Mapped[str] = mapped_column(String(255))
    # public | confidential-symmetric | confidential-asymmetric
    client_type: Mapped[str] = mapped_column(String(32))
    client_secret_enc: Mapped[bytes | None] = mapped_column(LargeBinary)
    scopes: Mapped[str] = mapped_column(Text)
    backend_client_id: Mapped[str | None] = mapped_column(String(255))
    backend_scopes: Mapped[str | None] = mapped_column(Text)
    frame_origins: Mapped[list[Any]] = mapped_column(default=list)
    # Allows write-back (ServiceRequest/Task/QuestionnaireResponse) where the EHR permits.
    allow_writes: Mapped[bool] = mapped_column(Boolean, default=True)
    # Last `caredesk ehr check` result: capabilities CareDesk relies on.
    capabilities: Mapped[dict[str, Any]] = mapped_column(default=dict)
    checked_at: Mapped[datetime | None]

    signing_keys: Mapped[list[SigningKey]] = relationship(
        back_populates="registration", cascade="all, delete-orphan", order_by="SigningKey.id"
    )


class SigningKey(Base):
    """A private key CareDesk signs client assertions with; its public half is in our JWKS.

    A rotated key is ``retired`` (no longer used to sign) but stays published until it is
    removed, so the EHR can still verify assertions made just before the rotation.
    """

    __tablename__ = "signing_key"

    id: Mapped[int] = mapped_column(primary_key=True)
    registration_id: Mapped[int] = mapped_column(ForeignKey("ehr_registration.id"))
    kid: Mapped[str] = mapped_column(String(128), unique=True)
    alg: Mapped[str] = mapped_column(String(16))
    private_key_enc: Mapped[bytes] = mapped_column(LargeBinary)
    public_jwk: Mapped[dict[str, Any]]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    retired_at: Mapped[datetime | None]

    registration: Mapped[EhrRegistration] = relationship(back_populates="signing_keys")


class LaunchSession(TimestampMixin, Base):
    """One SMART launch: pending (state + PKCE verifier) until the callback, then active.

    ``id`` is the per-launch id carried in the URL; the browser also holds a cookie whose
    hash is ``browser_hash``, so knowing a launch id alone is not enough to use it.
    """

    __tablename__ = "launch_session"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    registration_id: Mapped[int] = mapped_column(ForeignKey("ehr_registration.id"))
    status: Mapped[str] = mapped_column(String(16), default="pending")
    state_hash: Mapped[str | None] = mapped_column(String(64), unique=True)
    state_expires_at: Mapped[datetime | None]
    code_verifier_enc: Mapped[bytes | None] = mapped_column(LargeBinary)
    launch_param_enc: Mapped[bytes | None] = mapped_column(LargeBinary)
    browser_hash: Mapped[str | None] = mapped_column(String(64))
    token_set_enc: Mapped[bytes | None] = mapped_column(LargeBinary)
    scope_requested: Mapped[str | None] = mapped_column(Text)
    scope_granted: Mapped[str | None] = mapped_column(Text)
    access_expires_at: Mapped[datetime | None]
    has_refresh_token: Mapped[bool] = mapped_column(Boolean, default=False)
    patient_ref: Mapped[str | None] = mapped_column(String(300))
    encounter_ref: Mapped[str | None] = mapped_column(String(300))
    fhir_user: Mapped[str | None] = mapped_column(String(1024))
    context: Mapped[dict[str, Any]] = mapped_column(default=dict)
    last_seen_at: Mapped[datetime | None]

    registration: Mapped[EhrRegistration] = relationship()


class Ticket(TimestampMixin, Base):
    __tablename__ = "ticket"
    __table_args__ = (
        Index("ix_ticket_reg_patient_status", "registration_id", "patient_ref", "status"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    registration_id: Mapped[int] = mapped_column(ForeignKey("ehr_registration.id"))
    patient_ref: Mapped[str | None] = mapped_column(String(300))
    subject: Mapped[str] = mapped_column(String(300))
    description: Mapped[str] = mapped_column(Text, default="")
    # open | pending | resolved | closed
    status: Mapped[str] = mapped_column(String(16), default="open")
    # low | normal | high | urgent
    priority: Mapped[str] = mapped_column(String(16), default="normal")
    # scheduling | billing | insurance | clinical-question | referral | feedback
    category: Mapped[str] = mapped_column(String(32))
    assignee: Mapped[str | None] = mapped_column(String(300))
    due_at: Mapped[datetime | None]
    created_by: Mapped[str | None] = mapped_column(String(1024))
    source: Mapped[str] = mapped_column(String(32), default="staff")
    # The service-recovery ticket of a survey answer: at most one per answer, whichever
    # run of the write-back job opens it (helpdesk.surveys.open_recovery).
    survey_response_id: Mapped[int | None] = mapped_column(
        ForeignKey("survey_response.id"), unique=True
    )

    notes: Mapped[list[TicketNote]] = relationship(
        back_populates="ticket", cascade="all, delete-orphan", order_by="TicketNote.id"
    )


class TicketNote(Base):
    __tablename__ = "ticket_note"

    id: Mapped[int] = mapped_column(primary_key=True)
    ticket_id: Mapped[int] = mapped_column(ForeignKey("ticket.id"))
    author: Mapped[str | None] = mapped_column(String(1024))
    # phone | email | sms | chat | portal | in-person | internal
    channel: Mapped[str] = mapped_column(String(16), default="internal")
    # inbound | outbound | internal
    direction: Mapped[str] = mapped_column(String(16), default="internal")
    body: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    ticket: Mapped[Ticket] = relationship(back_populates="notes")


class CareTask(TimestampMixin, Base):
    """The outbox row of a follow-up, referral, reminder or survey job.

    The row is committed before its job is enqueued; a sweeper re-enqueues rows whose job
    vanished. Jobs receive only ``id``; everything else is read from here.
    """

    __tablename__ = "care_task"
    __table_args__ = (Index("ix_care_task_status_due", "status", "due_at"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    registration_id: Mapped[int] = mapped_column(ForeignKey("ehr_registration.id"))
    patient_ref: Mapped[str | None] = mapped_column(String(300))
    # follow-up | referral | reminder | survey-invite | survey-writeback
    kind: Mapped[str] = mapped_column(String(32))
    # queued | scheduled | running | waiting | done | failed | needs-authorization | cancelled
    status: Mapped[str] = mapped_column(String(24), default="queued")
    payload: Mapped[dict[str, Any]] = mapped_column(default=dict)
    due_at: Mapped[datetime | None]
    assignee: Mapped[str | None] = mapped_column(String(300))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    max_attempts: Mapped[int] = mapped_column(Integer, default=5)
    last_error: Mapped[str | None] = mapped_column(Text)
    job_id: Mapped[str | None] = mapped_column(String(128))
    launch_session_id: Mapped[str | None] = mapped_column(ForeignKey("launch_session.id"))
    fhir_refs: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_by: Mapped[str | None] = mapped_column(String(1024))
    # Makes "never twice" a database guarantee (e.g. reminder:<appointment>:<offset>).
    dedupe_key: Mapped[str | None] = mapped_column(String(300), unique=True)
    finished_at: Mapped[datetime | None]
    # The RQ queue the job runs on (per registration) and when the current attempt began.
    queue: Mapped[str | None] = mapped_column(String(64))
    started_at: Mapped[datetime | None]
    # What the sidebar says beside the status ("the EHR cannot take writes: kept here").
    status_note: Mapped[str | None] = mapped_column(Text)


class TaskAttempt(Base):
    """One run of a CareTask's job: the audit trail behind ``CareTask.attempts``."""

    __tablename__ = "task_attempt"
    __table_args__ = (Index("ix_task_attempt_task", "task_id", "attempt"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    task_id: Mapped[int] = mapped_column(ForeignKey("care_task.id", ondelete="CASCADE"))
    attempt: Mapped[int] = mapped_column(Integer)
    job_id: Mapped[str | None] = mapped_column(String(128))
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[datetime | None]
    # running | done | retry | failed | needs-authorization | abandoned
    outcome: Mapped[str] = mapped_column(String(24), default="running")
    error: Mapped[str | None] = mapped_column(Text)


class CallAttempt(Base):
    """One phone call a person made for a follow-up task, and how it went.

    The follow-up's job only puts the call on a work list; these rows are what ends it
    (reached, wrong number, or the last unanswered attempt). ``note`` is free text staff
    type: like a ticket note it never goes to a log.
    """

    __tablename__ = "call_attempt"
    __table_args__ = (Index("ix_call_attempt_task", "task_id", "attempt"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    task_id: Mapped[int] = mapped_column(ForeignKey("care_task.id", ondelete="CASCADE"))
    attempt: Mapped[int] = mapped_column(Integer)
    # reached | voicemail | no-answer | wrong-number
    outcome: Mapped[str] = mapped_column(String(16))
    note: Mapped[str | None] = mapped_column(Text)
    by: Mapped[str | None] = mapped_column(String(1024))
    at: Mapped[datetime] = mapped_column(default=utcnow)
    # The next attempt this call set (none when it ended the task).
    next_due_at: Mapped[datetime | None]


class OutboundMessage(Base):
    """A patient-facing message CareDesk sent (or handed to the demo outbox).

    The address and the rendered text are patient data, so they are stored encrypted;
    the plain columns say only which task, which channel and what happened.
    """

    __tablename__ = "outbound_message"
    __table_args__ = (Index("ix_outbound_message_task", "task_id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    task_id: Mapped[int | None] = mapped_column(ForeignKey("care_task.id", ondelete="SET NULL"))
    registration_id: Mapped[int | None] = mapped_column(ForeignKey("ehr_registration.id"))
    patient_ref: Mapped[str | None] = mapped_column(String(300))
    # email | sms
    channel: Mapped[str] = mapped_column(String(16))
    # smtp | twilio | outbox
    adapter: Mapped[str] = mapped_column(String(16))
    template: Mapped[str] = mapped_column(String(64))
    language: Mapped[str] = mapped_column(String(16))
    to_enc: Mapped[bytes] = mapped_column(LargeBinary)
    subject_enc: Mapped[bytes | None] = mapped_column(LargeBinary)
    body_enc: Mapped[bytes] = mapped_column(LargeBinary)
    provider_id: Mapped[str | None] = mapped_column(String(128))
    # sent | failed
    status: Mapped[str] = mapped_column(String(16), default="sent")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    # The conversation it belongs to (a staff reply, or a sweep's message the patient
    # answered): the ticket page shows it in the thread.
    thread_id: Mapped[int | None] = mapped_column(ForeignKey("message_thread.id"))
    # Who wrote it when a person did (a staff reply); None for CareDesk's own messages.
    author: Mapped[str | None] = mapped_column(String(1024))


class SurveyInvite(TimestampMixin, Base):
    """A single-use survey link. Only the SHA-256 of the link token is stored."""

    __tablename__ = "survey_invite"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    registration_id: Mapped[int] = mapped_column(ForeignKey("ehr_registration.id"))
    patient_ref: Mapped[str] = mapped_column(String(300))
    appointment_ref: Mapped[str | None] = mapped_column(String(300))
    encounter_ref: Mapped[str | None] = mapped_column(String(300))
    location_ref: Mapped[str | None] = mapped_column(String(300))
    practitioner_ref: Mapped[str | None] = mapped_column(String(300))
    language: Mapped[str] = mapped_column(String(16), default="en")
    channel: Mapped[str | None] = mapped_column(String(16))
    token_hash: Mapped[str | None] = mapped_column(String(64), unique=True)
    # pending | sent | answered | expired | skipped
    status: Mapped[str] = mapped_column(String(16), default="pending")
    send_at: Mapped[datetime | None]
    sent_at: Mapped[datetime | None]
    expires_at: Mapped[datetime | None]
    answered_at: Mapped[datetime | None]
    visit_at: Mapped[datetime | None]
    # Shown on the public page and grouped by in /reports/csat: the clinic's and the
    # clinician's names are not patient data, and the page must not need the EHR to render.
    clinic_name: Mapped[str | None] = mapped_column(String(200))
    practitioner_name: Mapped[str | None] = mapped_column(String(200))
    # IANA zone the visit date is shown in and quiet hours are counted in.
    timezone: Mapped[str | None] = mapped_column(String(64))
    # fatigue | opted-out | not-sampled | unreachable | no-patient (when status is skipped)
    skip_reason: Mapped[str | None] = mapped_column(String(32))


class SurveyResponse(Base):
    """The patient's answer, committed before anything else happens to it."""

    __tablename__ = "survey_response"

    id: Mapped[int] = mapped_column(primary_key=True)
    invite_id: Mapped[str] = mapped_column(ForeignKey("survey_invite.id"), unique=True)
    answers: Mapped[dict[str, Any]]
    csat: Mapped[int | None]
    nps: Mapped[int | None]
    comment: Mapped[str | None] = mapped_column(Text)
    contact_ok: Mapped[bool | None]
    submitted_at: Mapped[datetime] = mapped_column(default=utcnow)
    # pending | written | not-supported | failed
    writeback_status: Mapped[str] = mapped_column(String(16), default="pending")
    fhir_id: Mapped[str | None] = mapped_column(String(300))
    writeback_error: Mapped[str | None] = mapped_column(Text)
    written_at: Mapped[datetime | None]


class AuditEvent(Base):
    """Who read or changed what, about which patient. Never the data itself."""

    __tablename__ = "audit_event"
    __table_args__ = (Index("ix_audit_event_patient", "patient_ref", "at"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    at: Mapped[datetime] = mapped_column(default=utcnow)
    registration_id: Mapped[int | None] = mapped_column(ForeignKey("ehr_registration.id"))
    actor: Mapped[str | None] = mapped_column(String(1024))
    action: Mapped[str] = mapped_column(String(64))
    patient_ref: Mapped[str | None] = mapped_column(String(300))
    entity: Mapped[str | None] = mapped_column(String(300))
    outcome: Mapped[str] = mapped_column(String(16), default="success")
    request_id: Mapped[str | None] = mapped_column(String(64))
    detail: Mapped[dict[str, Any]] = mapped_column(default=dict)


class MessageThread(Base):
    """A ticket's conversation with the patient, across SMS, WhatsApp and email.

    ``token`` goes in the subject of every email CareDesk sends on the thread
    (``[CD-<token>]``), so a reply finds its ticket even when the patient's mail program
    drops ``In-Reply-To``.
    """

    __tablename__ = "message_thread"

    id: Mapped[int] = mapped_column(primary_key=True)
    registration_id: Mapped[int] = mapped_column(ForeignKey("ehr_registration.id"))
    ticket_id: Mapped[int] = mapped_column(ForeignKey("ticket.id"), unique=True)
    token: Mapped[str] = mapped_column(String(16), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_message_at: Mapped[datetime] = mapped_column(default=utcnow)


class InboundMessage(Base):
    """A message a patient (or anyone) sent the clinic: committed before anything else
    happens to it, once per provider message id (providers retry deliveries).

    Sender, text and attachment names are patient data, so encrypted; ``sender_key`` is
    an HMAC of the normalised address (E.164 or lower-case email) for look-ups without
    decrypting. ``status``: received | processed | unmatched | ignored.
    """

    __tablename__ = "inbound_message"
    __table_args__ = (
        UniqueConstraint("provider", "provider_id", name="uq_inbound_message_provider_id"),
        Index("ix_inbound_message_reg_status", "registration_id", "status"),
        Index("ix_inbound_message_thread", "thread_id"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    registration_id: Mapped[int] = mapped_column(ForeignKey("ehr_registration.id"))
    # sms | whatsapp | email
    channel: Mapped[str] = mapped_column(String(16))
    # twilio | imap
    provider: Mapped[str] = mapped_column(String(16))
    provider_id: Mapped[str] = mapped_column(String(300))
    sender_enc: Mapped[bytes] = mapped_column(LargeBinary)
    sender_key: Mapped[str] = mapped_column(String(64), index=True)
    subject_enc: Mapped[bytes | None] = mapped_column(LargeBinary)
    body_enc: Mapped[bytes] = mapped_column(LargeBinary)
    # Attachment names, types and sizes (never their bodies), as encrypted JSON.
    attachments_enc: Mapped[bytes | None] = mapped_column(LargeBinary)
    attachment_count: Mapped[int] = mapped_column(Integer, default=0)
    # Email threading headers: message ids, not patient data.
    message_id_header: Mapped[str | None] = mapped_column(String(998), index=True)
    in_reply_to: Mapped[list[Any]] = mapped_column(default=list)
    received_at: Mapped[datetime] = mapped_column(default=utcnow)
    status: Mapped[str] = mapped_column(String(16), default="received")
    # stop | start | help | confirm | reschedule | message
    intent: Mapped[str | None] = mapped_column(String(16))
    patient_ref: Mapped[str | None] = mapped_column(String(300))
    # unique | several | none | thread | staff: how the sender was matched
    match: Mapped[str | None] = mapped_column(String(16))
    # The patients the sender's address matched (several: staff pick one of them).
    candidates: Mapped[list[Any]] = mapped_column(default=list)
    thread_id: Mapped[int | None] = mapped_column(ForeignKey("message_thread.id"))
    appointment_ref: Mapped[str | None] = mapped_column(String(300))
    # What came of it, in words staff read ("Appointment confirmed in the EHR."), and as a
    # code the board and sidebar read: confirmed-in-ehr | confirmed-staff-task |
    # reschedule-ticket | ticket | opted-out | opted-in | help | unmatched.
    outcome: Mapped[str | None] = mapped_column(Text)
    result: Mapped[str | None] = mapped_column(String(24))
    processed_at: Mapped[datetime | None]
    resolved_by: Mapped[str | None] = mapped_column(String(1024))


class ContactOptOut(Base):
    """A STOP: CareDesk sends nothing on ``channel`` to this address, nor to this patient
    on this channel, until START (``lifted_at``). Every sender goes through
    ``jobs.context.JobContext.send``, which consults these rows."""

    __tablename__ = "contact_opt_out"
    __table_args__ = (
        Index("ix_contact_opt_out_lookup", "registration_id", "channel", "address_key"),
        Index("ix_contact_opt_out_patient", "registration_id", "patient_ref"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    registration_id: Mapped[int] = mapped_column(ForeignKey("ehr_registration.id"))
    # sms | whatsapp | email
    channel: Mapped[str] = mapped_column(String(16))
    address_key: Mapped[str] = mapped_column(String(64))
    patient_ref: Mapped[str | None] = mapped_column(String(300))
    keyword: Mapped[str] = mapped_column(String(32))
    opted_out_at: Mapped[datetime] = mapped_column(default=utcnow)
    lifted_at: Mapped[datetime | None]
    lifted_keyword: Mapped[str | None] = mapped_column(String(32))
    message_id: Mapped[int | None] = mapped_column(ForeignKey("inbound_message.id"))


class RuleRun(Base):
    """One run of an automation rule on a ticket (routing, auto-acknowledge, escalation):
    the ticket page lists them, so staff see why a ticket moved."""

    __tablename__ = "rule_run"
    __table_args__ = (
        Index("ix_rule_run_ticket", "ticket_id"),
        # An escalation or acknowledgement happens once per ticket; routing once too.
        UniqueConstraint("ticket_id", "rule", name="uq_rule_run_ticket_rule"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    ticket_id: Mapped[int] = mapped_column(ForeignKey("ticket.id", ondelete="CASCADE"))
    rule: Mapped[str] = mapped_column(String(100))
    # route | acknowledge | escalate
    action: Mapped[str] = mapped_column(String(16))
    at: Mapped[datetime] = mapped_column(default=utcnow)
    # What it did, in words ("assigned to billing-team").
    outcome: Mapped[str] = mapped_column(Text)
