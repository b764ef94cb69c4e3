"""Reminders a scheduler queues from the board: which visits get one now, which are
skipped and why. A reminder is a message (``queue(..., "message")``) or a call a person
makes (``queue(..., "call")``: a phone follow-up on the call list, for patients a message
cannot reach or who should hear it from a person).

The board (or any other edge) hands in the visits it shows, read from the EHR; this
decides, on the store's rows, what to queue and adds one task per visit: for a message a
``reminder`` task, the same kind of task the cron sweep makes (``jobs.reminders`` sends
it). Nothing is queued twice: a visit that already has a reminder waiting to go out, one
sent in the last day, or one asked for from the board today is skipped with that reason.
The caller commits, then dispatches the returned task ids.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from operator import attrgetter
from typing import Literal

from sqlalchemy import select
from sqlalchemy.orm import Session

from helpdesk.models import CareTask
from helpdesk.tasks import DEFAULT_ATTEMPTS, OPEN_CALL_STATUSES, new_task
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


Way = Literal["message", "call"]


@dataclass(frozen=True)
class _Way:
    """What a reminder message and a reminder call do differently; ``queue`` is the rest.

    The checks run in one order for both: a reminder still on its way, one sent
    recently (messages only), one asked for from the board today, no way to reach the
    patient."""

    kind: str  # of the task made, and of the earlier tasks that can make it unnecessary
    key: str  # the first word of the board's dedupe key
    counts: Callable[[CareTask], bool]  # which earlier tasks of that kind are about this
    on_its_way: tuple[str, ...]  # an earlier task in one of these statuses blocks a new one
    on_its_way_reason: str
    quiet_after_sent: timedelta | None  # a reminder sent this recently makes another noise
    reaches: Callable[[Visit], bool]
    unreachable_reason: str
    payload: Mapping[str, str]  # beside the appointment and where it was asked for
    due_now: bool  # on the call list from now; a message goes when its job runs
    max_attempts: int


def _a_call(task: CareTask) -> bool:
    """A phone follow-up (a follow-up without a channel is a call: it predates the others)."""
    return bool((task.payload or {}).get("channel", "phone") == "phone")


_WAYS: dict[Way, _Way] = {
    "message": _Way(
        kind="reminder",
        key="reminder",
        counts=lambda task: True,
        on_its_way=ON_ITS_WAY,
        on_its_way_reason=ALREADY_QUEUED,
        quiet_after_sent=RECENT,
        reaches=attrgetter("reachable"),
        unreachable_reason=UNREACHABLE,
        payload={},
        due_now=False,
        max_attempts=MAX_ATTEMPTS,
    ),
    "call": _Way(
        kind="follow-up",
        key="call",
        counts=_a_call,
        on_its_way=(*OPEN_CALL_STATUSES, "running"),
        on_its_way_reason=CALL_OPEN,
        quiet_after_sent=None,
        reaches=attrgetter("callable"),
        unreachable_reason=NO_PHONE,
        payload={"channel": "phone", "reason": "Reminder call about the coming visit"},
        due_now=True,
        max_attempts=DEFAULT_ATTEMPTS,
    ),
}


def board_key(way: Way, registration_id: int, appointment_ref: str, day: str) -> str:
    """The dedupe key of a reminder asked for from the board on ``day`` (the viewer's
    date): beside the cron sweep's ``reminder:<reg>:<appointment>:<offset>h`` keys; a
    call's starts with ``call:``."""
    return f"{_WAYS[way].key}:{registration_id}:{appointment_ref}:board:{day}"


def queue(
    session: Session,
    way: Way,
    *,
    registration_id: int,
    visits: Sequence[Visit],
    now: datetime,
    today: str,
    requested_by: str | None = None,
    launch_session_id: str | None = None,
) -> Outcome:
    """Add a reminder for each visit that should get one now, and say why for the rest:
    a ``message`` (a ``reminder`` task) or a ``call`` (a phone follow-up on the call
    list, due now, assigned to nobody so every scheduler sees it).

    ``today`` is the viewer's date (``YYYY-MM-DD``): one board request per visit and day.
    Flushes (the tasks have ids) but does not commit.
    """
    how = _WAYS[way]
    now = as_utc(now)
    outcome = Outcome()
    earlier = _tasks_by_appointment(session, registration_id, visits, how)
    for visit in _once_each(visits):
        key = board_key(way, registration_id, visit.appointment_ref, today)
        reason, blocking = _why_not(how, visit, earlier.get(visit.appointment_ref, ()), now, key)
        if reason is not None:
            outcome.skipped.append(Skipped(visit, reason, blocking))
            continue
        task = new_task(
            session,
            registration_id=registration_id,
            kind=how.kind,
            patient_ref=visit.patient_ref,
            payload={**how.payload, "appointment_ref": visit.appointment_ref, "requested": "board"},
            due_at=now if how.due_now else None,
            dedupe_key=key,
            launch_session_id=launch_session_id,
            created_by=requested_by,
            max_attempts=how.max_attempts,
        )
        outcome.add(visit, task)
    session.flush()
    return outcome


def _why_not(
    how: _Way, visit: Visit, earlier: Sequence[CareTask], now: datetime, key: str
) -> tuple[str | None, int | None]:
    """Why ``visit`` gets no reminder this way (a key of REASONS, and the earlier task
    that makes it unnecessary), or (None, None)."""
    if not visit.patient_ref:
        return NO_PATIENT, None
    if visit.status not in REMIND_STATUSES:
        return NOT_BOOKED, None
    if visit.start is None or as_utc(visit.start) <= now:
        return STARTED, None
    if visit.deceased:
        return DECEASED, None
    for task in earlier:
        if task.status in how.on_its_way:
            return how.on_its_way_reason, task.id
    if how.quiet_after_sent is not None:
        for task in earlier:
            if _sent_after(task, now - how.quiet_after_sent):
                return RECENTLY_SENT, task.id
    for task in earlier:
        if task.dedupe_key == key:
            return ASKED_TODAY, task.id
    if not how.reaches(visit):
        return how.unreachable_reason, None
    return None, None


def _sent_after(task: CareTask, since: datetime) -> bool:
    sent = (task.fhir_refs or {}).get("reminder_sent") is True
    return sent and task.finished_at is not None and as_utc(task.finished_at) > since


def _once_each(visits: Sequence[Visit]) -> Iterator[Visit]:
    """The visits, each appointment once (the same row may be selected twice)."""
    seen: set[str] = set()
    for visit in visits:
        if visit.appointment_ref not in seen:
            seen.add(visit.appointment_ref)
            yield visit


def _tasks_by_appointment(
    session: Session, registration_id: int, visits: Sequence[Visit], how: _Way
) -> dict[str, list[CareTask]]:
    """Every task of these visits' patients that ``how`` counts, by the appointment it
    is about (newest first): one query for the whole request."""
    patient_refs = sorted({v.patient_ref for v in visits if v.patient_ref})
    if not patient_refs:
        return {}
    found: dict[str, list[CareTask]] = {}
    rows = session.scalars(
        select(CareTask)
        .where(
            CareTask.registration_id == registration_id,
            CareTask.kind == how.kind,
            CareTask.patient_ref.in_(patient_refs),
        )
        .order_by(CareTask.id.desc())
    )
    for task in rows:
        ref = str((task.payload or {}).get("appointment_ref") or "")
        if ref and how.counts(task):
            found.setdefault(ref, []).append(task)
    return found
