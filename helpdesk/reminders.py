"""Reminders a scheduler queues from the board: which visits get one now, which are
skipped and why. A reminder is a message (``queue_reminders``) or a call a person makes
(``queue_calls``: a phone follow-up on the call list, for patients a message cannot reach
or who should hear it from a person).

The board (or any other edge) hands in the visits it shows, read from the EHR; this
decides, on the store's rows, what to queue and adds one ``reminder`` task per visit,
the same kind of task the cron sweep makes (``jobs.reminders`` sends it). Nothing is
queued twice: a visit that already has a reminder waiting to go out, one sent in the last
day, or one asked for from the board today is skipped with that reason. The caller
commits, then dispatches the returned task ids.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from helpdesk.models import CareTask
from helpdesk.tasks import OPEN_CALL_STATUSES, new_task
from helpdesk.timeutil import as_utc

# FHIR Appointment statuses a reminder is for: a visit that is still going to happen.
REMIND_STATUSES = ("booked", "pending", "proposed")
# Task statuses that mean a reminder is still on its way.
ON_ITS_WAY = ("queued", "scheduled", "running")
# A reminder sent this recently makes another one noise.
RECENT = timedelta(hours=24)
MAX_ATTEMPTS = 3

# Why a visit got no reminder, in the words the board shows (most specific first).
NO_PATIENT = "no-patient"
NOT_BOOKED = "not-booked"
STARTED = "started"
DECEASED = "deceased"
UNREACHABLE = "unreachable"
ALREADY_QUEUED = "already-queued"
RECENTLY_SENT = "recently-sent"
ASKED_TODAY = "asked-today"
CALL_OPEN = "call-open"
NO_PHONE = "no-phone"
REASONS = {
    CALL_OPEN: "A call about this visit is already on the call list",
    NO_PHONE: "No phone number the patient can be called on",
    ALREADY_QUEUED: "A reminder is already queued",
    RECENTLY_SENT: "A reminder went out in the last 24 hours",
    ASKED_TODAY: "Already asked for from the board today",
    UNREACHABLE: "No phone or email the patient can be reached on",
    NOT_BOOKED: "The visit is not booked (cancelled, no-show or done)",
    STARTED: "The visit has started or is over",
    DECEASED: "The patient is recorded as deceased",
    NO_PATIENT: "No patient on the appointment",
}


@dataclass(frozen=True)
class Visit:
    """One visit the scheduler asked to remind, as the EHR describes it."""

    appointment_ref: str  # Appointment/<id>
    patient_ref: str | None
    status: str | None  # the Appointment's FHIR status
    start: datetime | None  # aware
    reachable: bool  # the patient has a channel they may be sent a message on
    deceased: bool = False
    callable: bool = False  # the patient has a current phone number to call


@dataclass(frozen=True)
class Skipped:
    visit: Visit
    reason: str  # a key of REASONS
    task_id: int | None = None  # the reminder that makes this one unnecessary

    @property
    def words(self) -> str:
        return REASONS[self.reason]


@dataclass
class Outcome:
    queued: list[tuple[Visit, CareTask]] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)

    def add(self, visit: Visit, task: CareTask | None) -> None:
        """The task ``new_task`` made for ``visit``, or None: its key exists, another
        request of today won the race."""
        if task is None:
            self.skipped.append(Skipped(visit, ASKED_TODAY))
        else:
            self.queued.append((visit, task))

    def task_ids(self) -> list[int]:
        return [task.id for _, task in self.queued]

    def by_reason(self) -> list[tuple[str, list[Skipped]]]:
        """Skipped visits grouped by reason, in REASONS' order."""
        groups: dict[str, list[Skipped]] = {}
        for item in self.skipped:
            groups.setdefault(item.reason, []).append(item)
        return [(REASONS[r], groups[r]) for r in REASONS if r in groups]


def board_key(registration_id: int, appointment_ref: str, day: str) -> str:
    """The dedupe key of a reminder asked for from the board on ``day`` (the viewer's
    date): beside the cron sweep's ``reminder:<reg>:<appointment>:<offset>h`` keys."""
    return f"reminder:{registration_id}:{appointment_ref}:board:{day}"


def queue_reminders(
    session: Session,
    *,
    registration_id: int,
    visits: Sequence[Visit],
    now: datetime,
    today: str,
    requested_by: str | None = None,
    launch_session_id: str | None = None,
) -> Outcome:
    """Add a reminder task for each visit that should get one now; say why for the rest.

    ``today`` is the viewer's date (``YYYY-MM-DD``): one board request per visit and day.
    Flushes (the tasks have ids) but does not commit.
    """
    now = as_utc(now)
    outcome = Outcome()
    earlier = _tasks_by_appointment(session, registration_id, visits, kind="reminder")
    for visit in _once_each(visits):
        key = board_key(registration_id, visit.appointment_ref, today)
        reason, blocking = _why_not(visit, earlier.get(visit.appointment_ref, ()), now=now, key=key)
        if reason is not None:
            outcome.skipped.append(Skipped(visit, reason, blocking))
            continue
        task = new_task(
            session,
            registration_id=registration_id,
            kind="reminder",
            patient_ref=visit.patient_ref,
            payload={"appointment_ref": visit.appointment_ref, "requested": "board"},
            dedupe_key=key,
            launch_session_id=launch_session_id,
            created_by=requested_by,
            max_attempts=MAX_ATTEMPTS,
        )
        outcome.add(visit, task)
    session.flush()
    return outcome


def call_key(registration_id: int, appointment_ref: str, day: str) -> str:
    """The dedupe key of a reminder call asked for from the board on ``day``."""
    return f"call:{registration_id}:{appointment_ref}:board:{day}"


def queue_calls(
    session: Session,
    *,
    registration_id: int,
    visits: Sequence[Visit],
    now: datetime,
    today: str,
    requested_by: str | None = None,
    launch_session_id: str | None = None,
) -> Outcome:
    """Put a reminder call for each visit on the call list (a phone follow-up, due now,
    assigned to nobody so every scheduler sees it); say why for the rest. A visit whose
    call is still open (queued, scheduled or waiting for a person) or that was asked for
    from the board today gets none. Flushes but does not commit."""
    now = as_utc(now)
    outcome = Outcome()
    earlier = _calls_of(session, registration_id, visits)
    for visit in _once_each(visits):
        key = call_key(registration_id, visit.appointment_ref, today)
        reason, blocking = _not_a_visit_to_remind(visit, now=now)
        if reason is None:
            reason, blocking = _why_no_call(visit, earlier.get(visit.appointment_ref, ()), key)
        if reason is not None:
            outcome.skipped.append(Skipped(visit, reason, blocking))
            continue
        task = new_task(
            session,
            registration_id=registration_id,
            kind="follow-up",
            patient_ref=visit.patient_ref,
            payload={
                "channel": "phone",
                "reason": "Reminder call about the coming visit",
                "appointment_ref": visit.appointment_ref,
                "requested": "board",
            },
            due_at=now,
            dedupe_key=key,
            launch_session_id=launch_session_id,
            created_by=requested_by,
        )
        outcome.add(visit, task)
    session.flush()
    return outcome


def _why_no_call(
    visit: Visit, earlier: Sequence[CareTask], key: str
) -> tuple[str | None, int | None]:
    for task in earlier:
        if task.status in (*OPEN_CALL_STATUSES, "running"):
            return CALL_OPEN, task.id
    for task in earlier:
        if task.dedupe_key == key:
            return ASKED_TODAY, task.id
    if not visit.callable:
        return NO_PHONE, None
    return None, None


def _calls_of(
    session: Session, registration_id: int, visits: Sequence[Visit]
) -> dict[str, list[CareTask]]:
    """Every phone follow-up of these visits' patients about an appointment, by
    appointment."""
    follow_ups = _tasks_by_appointment(session, registration_id, visits, kind="follow-up")
    calls = {
        ref: [task for task in tasks if (task.payload or {}).get("channel", "phone") == "phone"]
        for ref, tasks in follow_ups.items()
    }
    return {ref: tasks for ref, tasks in calls.items() if tasks}


def _not_a_visit_to_remind(visit: Visit, *, now: datetime) -> tuple[str | None, int | None]:
    """What rules a visit out of any reminder, a message or a call."""
    if not visit.patient_ref:
        return NO_PATIENT, None
    if visit.status not in REMIND_STATUSES:
        return NOT_BOOKED, None
    if visit.start is None or as_utc(visit.start) <= now:
        return STARTED, None
    if visit.deceased:
        return DECEASED, None
    return None, None


def _why_not(
    visit: Visit, earlier: Sequence[CareTask], *, now: datetime, key: str
) -> tuple[str | None, int | None]:
    ruled_out = _not_a_visit_to_remind(visit, now=now)
    if ruled_out[0] is not None:
        return ruled_out
    for task in earlier:
        if task.status in ON_ITS_WAY:
            return ALREADY_QUEUED, task.id
    for task in earlier:
        sent = (task.fhir_refs or {}).get("reminder_sent") is True
        if sent and task.finished_at is not None and as_utc(task.finished_at) > now - RECENT:
            return RECENTLY_SENT, task.id
    for task in earlier:
        if task.dedupe_key == key:
            return ASKED_TODAY, task.id
    if not visit.reachable:
        return UNREACHABLE, None
    return None, None


def _once_each(visits: Sequence[Visit]) -> Iterator[Visit]:
    """The visits, each appointment once (the same row may be selected twice)."""
    seen: set[str] = set()
    for visit in visits:
        if visit.appointment_ref not in seen:
            seen.add(visit.appointment_ref)
            yield visit


def _tasks_by_appointment(
    session: Session, registration_id: int, visits: Sequence[Visit], *, kind: str
) -> dict[str, list[CareTask]]:
    """Every task of ``kind`` of these visits' patients, by the appointment it is about
    (newest first): one query for the whole request."""
    patient_refs = sorted({v.patient_ref for v in visits if v.patient_ref})
    if not patient_refs:
        return {}
    found: dict[str, list[CareTask]] = {}
    rows = session.scalars(
        select(CareTask)
        .where(
            CareTask.registration_id == registration_id,
            CareTask.kind == kind,
            CareTask.patient_ref.in_(patient_refs),
        )
        .order_by(CareTask.id.desc())
    )
    for task in rows:
        ref = str((task.payload or {}).get("appointment_ref") or "")
        if ref:
            found.setdefault(ref, []).append(task)
    return found
