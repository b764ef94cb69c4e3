"""Tickets and their notes: the one service every ticket goes through.

Staff tickets (``create_ticket``, for a launch) and tickets opened by the system (a low
survey score, a follow-up that finally failed: ``open_ticket``) get the same SLA due time
and an audit row, so a service-recovery ticket sorts and goes overdue like any other.

Every function that acts for a launch scopes every query with ``helpdesk.access``: to
that launch's EHR registration (a session from EHR A never sees, reads, changes or notes
EHR B's rows) and to the patients its launch may see (a launch from patient A's chart
never sees patient B's tickets). A row out of scope is reported as *not found* (never
*forbidden*) so ids cannot be probed; a filter naming a patient out of scope is 403.
Every read of patient data writes an ``AuditEvent``.

The web edges (``plugin.api`` for JSON, ``plugin.ticket_pages`` and the sidebar for HTML)
validate input with ``plugin.schemas`` and call these functions; nothing here reads the
request.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, NotRequired, TypedDict, Unpack

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from helpdesk.access import get_visible, patient_for, scope_of
from helpdesk.audit import audit_row, audit_shown, entity_of, record
from helpdesk.errors import AppError, ConfigError
from helpdesk.models import LaunchSession, Ticket, TicketNote
from helpdesk.timeutil import utcnow

log = logging.getLogger("caredesk.tickets")

STATUSES = ("open", "pending", "resolved", "closed")
PRIORITIES = ("low", "normal", "high", "urgent")
CATEGORIES = ("scheduling", "billing", "insurance", "clinical-question", "referral", "feedback")
NOTE_CHANNELS = ("phone", "email", "sms", "chat", "portal", "in-person", "internal")
NOTE_DIRECTIONS = ("inbound", "outbound", "internal")
FOLLOW_UP_CHANNELS = ("phone", "sms", "email")
REFERRAL_URGENCIES = ("routine", "urgent", "asap", "stat")  # FHIR request-priority codes
TASK_KINDS = ("follow-up", "referral")

# Which status may follow which. "pending" means waiting on the patient or a third party.
# "resolved" can be reopened (the patient calls back about the same thing); "closed" is
# final, so a closed ticket's history is never rewritten: a new request is a new ticket.
TRANSITIONS: Mapping[str, tuple[str, ...]] = {
    "open": ("pending", "resolved", "closed"),
    "pending": ("open", "resolved", "closed"),
    "resolved": ("open", "closed"),
    "closed": (),
}
ACTIVE_STATUSES = ("open", "pending")

# Hours from creation until a ticket is due, per category. Clinical questions are the
# shortest because an unanswered one can harm the patient; billing and feedback wait for
# the business office's usual turnaround. Override any of them with the JSON config value
# `TICKET_SLA_HOURS` (env `CAREDESK_TICKET_SLA_HOURS='{"billing": 48}'`).
DEFAULT_SLA_HOURS: Mapping[str, float] = {
    "clinical-question": 4,
    "referral": 24,
    "scheduling": 24,
    "insurance": 48,
    "billing": 72,
    "feedback": 72,
}

MAX_PER_PAGE = 100


def sla_hours(config: Mapping[str, Any]) -> dict[str, float]:
    """The SLA table: defaults overridden by ``TICKET_SLA_HOURS`` (a dict or a JSON string).

    A bad override is a deployment mistake, so it fails loudly naming the variable rather
    than silently falling back to defaults nobody chose."""
    table = dict(DEFAULT_SLA_HOURS)
    raw = config.get("TICKET_SLA_HOURS")
    if raw in (None, ""):
        return table
    try:
        override = json.loads(raw) if isinstance(raw, str | bytes) else raw
    except ValueError as exc:
        raise ConfigError("CAREDESK_TICKET_SLA_HOURS is not valid JSON") from exc
    if not isinstance(override, Mapping):
        raise ConfigError('CAREDESK_TICKET_SLA_HOURS must be a JSON object like {"billing": 48}')
    for category, hours in override.items():
        if category not in CATEGORIES:
            raise ConfigError(f"CAREDESK_TICKET_SLA_HOURS: unknown category {category!r}")
        if isinstance(hours, bool) or not isinstance(hours, int | float) or hours <= 0:
            raise ConfigError(f"CAREDESK_TICKET_SLA_HOURS: {category} must be a positive number")
        table[category] = float(hours)
    return table


def sla_due(category: str, created_at: datetime, table: Mapping[str, float]) -> datetime:
    return created_at + timedelta(hours=table[category])


def is_overdue(ticket: Ticket, now: datetime) -> bool:
    return ticket.status in ACTIVE_STATUSES and ticket.due_at is not None and ticket.due_at < now


class TransitionError(AppError, status=409, code="invalid_transition"):
    """The ticket's status cannot change that way (``TRANSITIONS``), or it is closed."""


# --- tickets -------------------------------------------------------------------------------


@dataclass(frozen=True)
class TicketFilters:
    status: tuple[str, ...] = ()
    patient: str | None = None
    category: str | None = None
    assignee: str | None = None
    page: int = 1
    per_page: int = 25


@dataclass(frozen=True)
class TicketPage:
    items: Sequence[Ticket]
    total: int
    page: int
    per_page: int


class TicketFields(TypedDict):
    """What the person or job opening a ticket says about it (``open_ticket``'s and
    ``create_ticket``'s keywords)."""

    subject: str
    category: str  # one of CATEGORIES: it sets the SLA due time
    description: NotRequired[str]  # ""
    priority: NotRequired[str]  # "normal"
    assignee: NotRequired[str | None]


def open_ticket(
    session: Session,
    *,
    registration_id: int,
    patient_ref: str | None,
    source: str = "staff",
    created_by: str | None = None,
    survey_response_id: int | None = None,
    sla: Mapping[str, float] = DEFAULT_SLA_HOURS,
    now: datetime | None = None,
    launch: LaunchSession | None = None,
    **fields: Unpack[TicketFields],
) -> Ticket:
    """Add a ticket with its SLA due time and its audit row; the caller commits (a job
    commits it with the rest of its outcome)."""
    now = now or utcnow()
    category = fields["category"]
    ticket = Ticket(
        registration_id=registration_id,
        patient_ref=patient_ref,
        subject=fields["subject"],
        description=fields.get("description", ""),
        status="open",
        priority=fields.get("priority", "normal"),
        category=category,
        assignee=fields.get("assignee"),
        due_at=sla_due(category, now, sla),
        created_by=created_by,
        source=source,
        survey_response_id=survey_response_id,
        created_at=now,
        updated_at=now,
    )
    session.add(ticket)
    session.flush()  # the id goes on the audit row
    record(
        session,
        "ticket.create",
        launch=launch,
        registration_id=registration_id,
        actor=created_by or source,
        patient_ref=patient_ref,
        entity=entity_of(ticket),
        detail={"source": source},
    )
    return ticket


def create_ticket(
    db: Session,
    launch: LaunchSession,
    *,
    patient: str | None = None,
    sla: Mapping[str, float] = DEFAULT_SLA_HOURS,
    now: datetime | None = None,
    **fields: Unpack[TicketFields],
) -> Ticket:
    """A ticket a person opened from a launch (about that launch's patient)."""
    ticket = open_ticket(
        db,
        registration_id=launch.registration_id,
        patient_ref=patient_for(launch, patient),
        created_by=launch.fhir_user,
        source="staff",
        sla=sla,
        now=now,
        launch=launch,
        **fields,
    )
    db.commit()
    return ticket


def _scoped(db: Session, launch: LaunchSession, ticket_id: int) -> Ticket:
    return get_visible(db, launch, Ticket, ticket_id, missing="No such ticket.")


def get_ticket(db: Session, launch: LaunchSession, ticket_id: int) -> Ticket:
    ticket = _scoped(db, launch, ticket_id)
    audit_row(db, "ticket.read", ticket, launch=launch)
    return ticket


# Most urgent work first: due soonest, then newest; id makes paging stable. The ticket
# list and the sidebar's open tickets (the context's rows) read in this order.
MOST_URGENT_FIRST = (Ticket.due_at.is_(None), Ticket.due_at, Ticket.id.desc())


def list_tickets(db: Session, launch: LaunchSession, filters: TicketFilters) -> TicketPage:
    scope = scope_of(launch)
    where = scope.where(Ticket.registration_id, Ticket.patient_ref)
    if filters.status:
        where.append(Ticket.status.in_(filters.status))
    if filters.patient:
        scope.check(filters.patient)
        where.append(Ticket.patient_ref == filters.patient)
    if filters.category:
        where.append(Ticket.category == filters.category)
    if filters.assignee:
        where.append(Ticket.assignee == filters.assignee)
    per_page = max(1, min(filters.per_page, MAX_PER_PAGE))
    page = max(1, filters.page)
    total = db.scalar(select(func.count()).select_from(Ticket).where(*where)) or 0
    items = db.scalars(
        select(Ticket)
        .where(*where)
        .order_by(*MOST_URGENT_FIRST)
        .limit(per_page)
        .offset((page - 1) * per_page)
    ).all()
    audit_shown("ticket.list", launch=launch, entity="Ticket", rows=items)
    return TicketPage(items=items, total=total, page=page, per_page=per_page)


def allowed_transitions(status: str) -> tuple[str, ...]:
    return TRANSITIONS.get(status, ())


# Values of these fields are codes, safe for the audit trail; free-text fields are recorded
# by name only (a subject may hold PHI).
_CODED_FIELDS = ("status", "priority", "category")


def update_ticket(
    db: Session,
    launch: LaunchSession,
    ticket_id: int,
    changes: Mapping[str, Any],
    *,
    sla: Mapping[str, float] = DEFAULT_SLA_HOURS,
) -> Ticket:
    """Apply ``changes`` (already validated field values). A category change moves the due
    time to the new category's SLA from creation, unless ``due_at`` is given too."""
    ticket = _scoped(db, launch, ticket_id)
    new_status = changes.get("status")
    if new_status is not None and new_status != ticket.status:
        allowed = allowed_transitions(ticket.status)
        if new_status not in allowed:
            raise TransitionError(
                f"A {ticket.status} ticket cannot become {new_status}; "
                + (f"allowed: {', '.join(allowed)}." if allowed else "it is final.")
            )
    changed: dict[str, Any] = {}
    for field in ("status", "priority", "category", "assignee", "subject", "description"):
        if field in changes and changes[field] != getattr(ticket, field):
            before = getattr(ticket, field)
            setattr(ticket, field, changes[field])
            changed[field] = [before, changes[field]] if field in _CODED_FIELDS else True
    if "due_at" in changes:
        if changes["due_at"] != ticket.due_at:
            ticket.due_at = changes["due_at"]
            changed["due_at"] = True
    elif "category" in changed:
        ticket.due_at = sla_due(ticket.category, ticket.created_at, sla)
        changed["due_at"] = True
    if changed:
        ticket.updated_at = utcnow()
    audit_row(db, "ticket.update", ticket, launch=launch, changes=changed)
    return ticket


def add_note(
    db: Session,
    launch: LaunchSession,
    ticket_id: int,
    *,
    body: str,
    channel: str = "internal",
    direction: str = "internal",
) -> TicketNote:
    ticket = _scoped(db, launch, ticket_id)
    if ticket.status == "closed":
        raise TransitionError("This ticket is closed; open a new ticket instead.")
    note = TicketNote(
        ticket_id=ticket.id,
        author=launch.fhir_user,
        channel=channel,
        direction=direction,
        body=body,
        created_at=utcnow(),
    )
    db.add(note)
    ticket.updated_at = utcnow()
    db.flush()  # the note's id goes on the audit row
    audit_row(
        db,
        "ticket.note",
        ticket,
        launch=launch,
        note_id=note.id,
        channel=channel,
        direction=direction,
    )
    return note
