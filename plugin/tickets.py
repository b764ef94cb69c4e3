"""Help-desk work: tickets, their notes, and the follow-up/referral tasks queued from them.

Every function here takes the launch it acts for and scopes every query to that launch's
EHR registration: a session from EHR A never sees, reads, changes or notes EHR B's rows.
A row of another registration is reported as *not found* (never *forbidden*) so ids
cannot be probed across EHRs. Every read of patient data writes an ``AuditEvent``.

The web edges (``plugin.api``: JSON and HTML) validate input with ``plugin.schemas`` and
call these functions; nothing here reads the request.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from plugin.audit import audit
from plugin.config import ConfigError
from plugin.errors import AppError, NotFound
from plugin.models import CareTask, LaunchSession, Ticket, TicketNote
from plugin.timeutil import utcnow

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


class TransitionError(AppError):
    status = 409
    code = "invalid_transition"


class NoPatient(AppError):
    status = 422
    code = "no_patient"


def patient_for(launch: LaunchSession, requested: str | None) -> str:
    """The patient a new ticket or task is about.

    A launch with patient context works on that patient only (the EHR granted access to
    that chart); a launch without one (the help-desk queue) names the patient itself."""
    if launch.patient_ref:
        if requested and requested != launch.patient_ref:
            raise NoPatient("This launch is for another patient; open that patient's chart.")
        return launch.patient_ref
    if not requested:
        raise NoPatient("Name the patient (`Patient/<id>`): this launch has no patient context.")
    return requested


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


def create_ticket(
    db: Session,
    launch: LaunchSession,
    *,
    subject: str,
    category: str,
    description: str = "",
    priority: str = "normal",
    assignee: str | None = None,
    patient: str | None = None,
    sla: Mapping[str, float] = DEFAULT_SLA_HOURS,
    now: datetime | None = None,
) -> Ticket:
    now = now or utcnow()
    ticket = Ticket(
        registration_id=launch.registration_id,
        patient_ref=patient_for(launch, patient),
        subject=subject,
        description=description,
        status="open",
        priority=priority,
        category=category,
        assignee=assignee,
        due_at=sla_due(category, now, sla),
        created_by=launch.fhir_user,
        source="staff",
        created_at=now,
        updated_at=now,
    )
    db.add(ticket)
    db.commit()
    audit("ticket.create", launch=launch, patient_ref=ticket.patient_ref, entity=_ref(ticket))
    return ticket


def _ref(ticket: Ticket) -> str:
    return f"Ticket/{ticket.id}"


def _scoped(db: Session, launch: LaunchSession, ticket_id: int) -> Ticket:
    ticket = db.get(Ticket, ticket_id)
    if ticket is None or ticket.registration_id != launch.registration_id:
        # Same answer for "absent" and "another EHR's", so ids are not probeable.
        raise NotFound("No such ticket.")
    return ticket


def get_ticket(db: Session, launch: LaunchSession, ticket_id: int) -> Ticket:
    ticket = _scoped(db, launch, ticket_id)
    audit("ticket.read", launch=launch, patient_ref=ticket.patient_ref, entity=_ref(ticket))
    return ticket


def list_tickets(db: Session, launch: LaunchSession, filters: TicketFilters) -> TicketPage:
    where = [Ticket.registration_id == launch.registration_id]
    if filters.status:
        where.append(Ticket.status.in_(filters.status))
    if filters.patient:
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
        # Most urgent work first: due soonest, then newest; id makes paging stable.
        .order_by(Ticket.due_at.is_(None), Ticket.due_at, Ticket.id.desc())
        .limit(per_page)
        .offset((page - 1) * per_page)
    ).all()
    # One audit row per patient shown, so "who looked at patient X" is one indexed query.
    for patient_ref in sorted({t.patient_ref for t in items if t.patient_ref}):
        audit(
            "ticket.list",
            launch=launch,
            patient_ref=patient_ref,
            entity="Ticket",
            detail={"ids": [t.id for t in items if t.patient_ref == patient_ref]},
        )
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
        db.commit()
    audit(
        "ticket.update",
        launch=launch,
        patient_ref=ticket.patient_ref,
        entity=_ref(ticket),
        detail={"changes": changed},
    )
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
    db.commit()
    audit(
        "ticket.note",
        launch=launch,
        patient_ref=ticket.patient_ref,
        entity=_ref(ticket),
        detail={"note_id": note.id, "channel": channel, "direction": direction},
    )
    return note


# --- follow-up and referral tasks ----------------------------------------------------------


def list_tasks(
    db: Session,
    launch: LaunchSession,
    *,
    kind: str | None = None,
    patient: str | None = None,
    limit: int = 50,
) -> Sequence[CareTask]:
    """The launch's patient's tasks; a launch without a patient sees its registration's."""
    where = [CareTask.registration_id == launch.registration_id]
    patient_ref = launch.patient_ref or patient
    if patient_ref:
        where.append(CareTask.patient_ref == patient_ref)
    if kind:
        where.append(CareTask.kind == kind)
    tasks = db.scalars(
        select(CareTask).where(*where).order_by(CareTask.id.desc()).limit(limit)
    ).all()
    for ref in sorted({t.patient_ref for t in tasks if t.patient_ref}):
        audit(
            "task.list",
            launch=launch,
            patient_ref=ref,
            entity="CareTask",
            detail={"ids": [t.id for t in tasks if t.patient_ref == ref]},
        )
    return tasks


def create_task(
    db: Session,
    launch: LaunchSession,
    *,
    kind: str,
    payload: Mapping[str, Any],
    due_at: datetime | None,
    assignee: str | None = None,
    patient: str | None = None,
) -> CareTask:
    """The outbox pattern: the CareTask row is committed first, then its job is dispatched.

    ``dispatch`` does not raise for queue trouble: the row stays queued and the outbox
    sweeper enqueues it later, so the caller gets its task either way and never retries
    into a duplicate."""
    from jobs import outbox

    patient_ref = patient_for(launch, patient)
    task = outbox.create_task(
        db,
        registration_id=launch.registration_id,
        kind=kind,
        patient_ref=patient_ref,
        payload=dict(payload),
        due_at=due_at,
        launch_session_id=launch.id,
        created_by=launch.fhir_user,
        assignee=assignee,
    )
    # None only for a duplicate dedupe_key, and a user's task has none.
    assert task is not None
    db.commit()
    audit("task.create", launch=launch, patient_ref=patient_ref, entity=f"CareTask/{task.id}")
    outbox.dispatch([task.id])
    db.refresh(task)
    return task


# --- "due" phrases -------------------------------------------------------------------------

# Named parts of the day, as a front desk uses them. Morning starts when the phones open.
DAY_PARTS: Mapping[str, time] = {
    "morning": time(9, 0),
    "noon": time(12, 0),
    "midday": time(12, 0),
    "afternoon": time(14, 0),
    "evening": time(17, 0),
    "end of day": time(17, 0),
    "eod": time(17, 0),
}
DEFAULT_TIME = DAY_PARTS["morning"]
WEEKDAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
_NUMBER_WORDS = {"a": 1, "an": 1, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5}

_RELATIVE = re.compile(
    r"^in\s+(?P<n>\d{1,3}|a|an|one|two|three|four|five)\s+"
    r"(?P<unit>minute|hour|day|week)s?$"
)
_CLOCK = re.compile(r"(?:^|\s)(?P<at>at\s+)?(?P<h>\d{1,2})(?::(?P<m>\d{2}))?\s*(?P<ampm>am|pm)?$")


class DuePhraseError(ValueError):
    """The phrase is not understood, or names a time that has passed. Message is user-safe."""


def viewer_zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ConfigError(f"CAREDESK_VIEWER_TIMEZONE: unknown time zone {name!r}") from exc


def parse_due(phrase: str, *, now: datetime, tz: ZoneInfo) -> datetime:
    """An aware datetime for phrases like "in 2 days, morning", "tomorrow at 3pm",
    "next monday afternoon", "today 16:30", "in 3 hours". Calendar words are read in the
    viewer's time zone ``tz`` (so "tomorrow" is the viewer's tomorrow, across DST).
    A phrase without a time of day means the morning. The result is always in the future.
    """
    if now.tzinfo is None:
        raise ValueError("naive `now`")
    local_now = now.astimezone(tz)
    text = " ".join(phrase.strip().lower().replace(",", " ").split())
    if not text:
        raise DuePhraseError("Say when, e.g. “tomorrow morning” or “in 2 days”.")
    day: date | None = None
    exact: datetime | None = None
    clock: time | None = None
    rest = text
    # Time-of-day part first (it comes last in the phrase): "..., morning", "at 3pm".
    for name, value in sorted(DAY_PARTS.items(), key=lambda kv: -len(kv[0])):
        if rest == name or rest.endswith(" " + name):
            clock, rest = value, rest[: -len(name)].strip()
            break
    else:
        match = _CLOCK.search(rest)
        # A bare trailing number is not a time ("in 2"); it needs "at", minutes or am/pm.
        if match and (match["at"] or match["m"] or match["ampm"]):
            clock, rest = _clock(match), rest[: match.start()].strip()
    rest = rest.removesuffix(" at").removesuffix(" in the").strip()
    if rest in ("", "today"):
        day = local_now.date()
    elif rest == "tomorrow":
        day = local_now.date() + timedelta(days=1)
    elif rest in ("next week",):
        day = local_now.date() + timedelta(days=7 - local_now.weekday())
    elif (weekday := rest.removeprefix("next ").removeprefix("on ")) in WEEKDAYS:
        ahead = (WEEKDAYS.index(weekday) - local_now.weekday()) % 7 or 7
        day = local_now.date() + timedelta(days=ahead)
    elif match := _RELATIVE.match(rest):
        raw = match["n"]
        n = int(raw) if raw.isdigit() else _NUMBER_WORDS[raw]
        unit = match["unit"]
        if unit in ("minute", "hour"):
            if clock is not None:
                raise DuePhraseError(f"“{phrase}” gives both a delay and a time of day.")
            exact = now + (timedelta(hours=n) if unit == "hour" else timedelta(minutes=n))
        else:
            day = local_now.date() + timedelta(days=n * (7 if unit == "week" else 1))
    else:
        raise DuePhraseError(
            f"“{phrase}” is not understood. Try “tomorrow morning”, “in 2 days, afternoon”, "
            "“next monday at 10am” or “in 3 hours”."
        )
    if exact is None:
        assert day is not None
        if rest in ("", "today") and clock is None:
            raise DuePhraseError("Say what time today, e.g. “today 4pm” or “today, afternoon”.")
        exact = datetime.combine(day, clock or DEFAULT_TIME, tzinfo=tz)
    if exact <= now:
        raise DuePhraseError(f"“{phrase}” is already past.")
    return exact


def _clock(match: re.Match[str]) -> time:
    hour, minute = int(match["h"]), int(match["m"] or 0)
    ampm = match["ampm"]
    if ampm:
        if not 1 <= hour <= 12:
            raise DuePhraseError("Use an hour from 1 to 12 with am/pm.")
        hour = hour % 12 + (12 if ampm == "pm" else 0)
    if hour > 23 or minute > 59:
        raise DuePhraseError("That is not a time of day.")
    return time(hour, minute)
