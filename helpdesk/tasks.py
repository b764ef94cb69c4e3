"""Task rows: the outbox of follow-ups, referrals, reminders and survey jobs.

A ``CareTask`` row is committed first; its RQ job is enqueued afterwards by
``jobs.outbox.dispatch`` (the web edge and the jobs call it after their commit), and a
sweeper enqueues rows whose job vanished. Everything about a task that a job needs is on
its row: jobs receive the row id only.

The rules on these rows that the sidebar, the call list and the API share live here:
which channels a patient can receive (``fhir_mappers.contact``'s reading, applied to a
task before it is stored), how a call's outcome ends or reschedules its follow-up, and
which failures a retry can cure.

What a launch may see of tasks and of the messages they sent follows ``helpdesk.access``
(its registration, and its patient when it has one): out-of-scope rows are not found.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, NotRequired, TypedDict, Unpack, cast
from zoneinfo import ZoneInfo

from flask import current_app, has_app_context
from marshmallow import ValidationError
from sqlalchemy import ColumnElement, String, Table, bindparam, insert, literal, select, update
from sqlalchemy.orm import Session

from fhir_mappers.contact import blocked, current_telecoms, is_deceased, may_survey, reachable
from fhir_mappers.fhirutil import get_str
from helpdesk import duephrase, messaging
from helpdesk.access import get_visible, patient_for, scope_of
from helpdesk.audit import audit_many, audit_row, audit_shown
from helpdesk.errors import AppError
from helpdesk.models import CallAttempt, CareTask, LaunchSession, OutboundMessage
from helpdesk.timeutil import as_utc, utcnow

# A follow-up is reached by phone (a person calls) or by a message the job sends.
FOLLOW_UP_CHANNELS = ("phone", "sms", "email")
CHANNEL_WORDS = {"phone": "Phone call", "sms": "Text message", "email": "Email"}
# How many unanswered calls end a follow-up, and the outcomes a caller logs.
CALL_ATTEMPTS = 3
CALL_OUTCOMES = {
    "reached": "Reached",
    "voicemail": "Left voicemail",
    "no-answer": "No answer",
    "wrong-number": "Wrong number",
}
OPEN_CALL_STATUSES = ("queued", "scheduled", "waiting")
# How often a task's job runs at the most, unless its maker says otherwise.
DEFAULT_ATTEMPTS = 5
# jobs.tasks writes this in front of the last error when it stops retrying a failure that
# was temporary (EHR busy, provider down): a retry may cure it. Any other failed task
# failed for a lasting reason (refused message, no reachable channel): retrying the same
# thing fails the same way.
GAVE_UP = "gave up after"


class ChannelRefused(AppError, status=422, code="channel_refused"):
    """The patient cannot receive this channel; ``field`` names the form field."""

    field = "channel"


class CallRefused(AppError, status=422, code="call_refused"):
    """A follow-up's call cannot be logged or ended that way; ``field`` names the form
    field at fault."""

    def __init__(self, message: str, *, field: str = "outcome") -> None:
        super().__init__(message)
        self.field = field


class TaskFields(TypedDict):
    """A task row as its maker describes it: ``new_task``'s keyword arguments. What is
    left out takes the default ``_task_values`` gives it."""

    registration_id: int
    kind: str
    patient_ref: str | None
    payload: Mapping[str, Any]
    due_at: NotRequired[datetime | None]  # None: due now; a later time: "scheduled"
    dedupe_key: NotRequired[str | None]
    launch_session_id: NotRequired[str | None]
    created_by: NotRequired[str | None]
    max_attempts: NotRequired[int]  # DEFAULT_ATTEMPTS
    assignee: NotRequired[str | None]
    queue: NotRequired[str | None]  # None: the configured TASK_QUEUE


def new_task(session: Session, **fields: Unpack[TaskFields]) -> CareTask | None:
    """Add a task row (the caller commits, then calls ``jobs.outbox.dispatch``).

    Returns None when ``dedupe_key`` exists already: a reminder or an invitation is never
    made twice. The unique index makes that true across processes too (the loser of a race
    gets IntegrityError at commit, which callers sweeping in bulk treat as "exists").
    """
    dedupe_key = fields.get("dedupe_key")
    if dedupe_key is not None:
        found = session.scalar(select(CareTask.id).where(CareTask.dedupe_key == dedupe_key))
        if found is not None:
            return None
    task = CareTask(**_task_values(fields))
    session.add(task)
    return task


# Built once: a statement object keeps its compiled form's cache key, so executing it
# again skips SQLAlchemy's statement construction (a survey answer's hot path).
_task = cast(Table, CareTask.__table__)
_INSERT_TASK = insert(_task).returning(_task.c.id)


_SET_JOB_ID = (
    update(_task)
    .where(_task.c.id == bindparam("task_id"))
    .values(job_id=bindparam("job_id"), updated_at=bindparam("now"))
)


def job_id_for(task_id: int, attempt: int) -> str:
    """The RQ job id of a task's attempt: unique per task and attempt, so a re-enqueue of
    one attempt never makes two jobs. ``job_id_sql`` writes the same in SQL."""
    return f"task-{task_id}-a{attempt}"


def job_id_sql(task_id: ColumnElement[int], attempt: int) -> ColumnElement[str]:
    """``job_id_for`` as SQL, for a row whose id the database picks in the same statement."""
    return literal("task-", String) + task_id.cast(String) + literal(f"-a{attempt}", String)


def queued_task_values(
    *, registration_id: int, kind: str, patient_ref: str | None
) -> dict[str, Any]:
    """Every column of a task row due now (as ``new_task`` makes it) but its id, payload,
    dedupe key and job id, for a statement that computes those in SQL
    (``helpdesk.surveys``). The model's defaults are spelled out: SQLAlchemy fills them in
    for a statement that is an INSERT, not for an INSERT inside a CTE."""
    values = _task_values(
        TaskFields(registration_id=registration_id, kind=kind, patient_ref=patient_ref, payload={})
    )
    for column in ("payload", "dedupe_key"):
        del values[column]
    now = utcnow()
    values.update(attempts=0, fhir_refs={}, created_at=now, updated_at=now)
    return values


def insert_task(session: Session, **fields: Unpack[TaskFields]) -> int:
    """``new_task`` for a row with a key that cannot exist yet (it names a row made in the
    same transaction), due now, without the ORM's unit of work: one INSERT, then the job id
    of its first attempt (``job_id_for``), in the caller's transaction; returns the row id.
    After the commit, ``jobs.outbox.enqueue_inserted`` enqueues that job. The unique index
    still guards the key."""
    values = _task_values(fields)
    conn = session.connection()
    task_id = int(conn.execute(_INSERT_TASK, values).scalar_one())
    conn.execute(
        _SET_JOB_ID, {"task_id": task_id, "job_id": job_id_for(task_id, 1), "now": utcnow()}
    )
    return task_id


def _task_values(fields: TaskFields) -> dict[str, Any]:
    due_at = fields.get("due_at")
    due = as_utc(due_at) if due_at is not None else None
    return {
        "registration_id": fields["registration_id"],
        "kind": fields["kind"],
        "patient_ref": fields["patient_ref"],
        "payload": dict(fields["payload"]),
        "due_at": due,
        "status": "scheduled" if due is not None and due > utcnow() else "queued",
        "dedupe_key": fields.get("dedupe_key"),
        "launch_session_id": fields.get("launch_session_id"),
        "created_by": fields.get("created_by"),
        "max_attempts": fields.get("max_attempts", DEFAULT_ATTEMPTS),
        "assignee": fields.get("assignee"),
        "queue": fields.get("queue") or _configured_queue(),
    }


def _configured_queue() -> str | None:
    if not has_app_context():
        return None  # dispatch puts it on the default queue
    return str(current_app.config.get("TASK_QUEUE") or "default")


def list_tasks(
    db: Session,
    launch: LaunchSession,
    *,
    kind: str | None = None,
    patient: str | None = None,
    limit: int = 50,
) -> Sequence[CareTask]:
    """The tasks the launch may see, newest first; ``patient`` narrows to one patient
    (403 when the launch may not see that patient)."""
    scope = scope_of(launch)
    where = scope.where(CareTask.registration_id, CareTask.patient_ref)
    if patient:
        scope.check(patient)
        where.append(CareTask.patient_ref == patient)
    if kind:
        where.append(CareTask.kind == kind)
    tasks = db.scalars(
        select(CareTask).where(*where).order_by(CareTask.id.desc()).limit(limit)
    ).all()
    audit_shown("task.list", launch=launch, entity="CareTask", rows=tasks)
    return tasks


def get_task(db: Session, launch: LaunchSession, task_id: int) -> CareTask:
    """One task the launch may see; 404 for a task that is absent or out of scope alike."""
    return get_visible(db, launch, CareTask, task_id, missing="No such task.")


def worklist(
    db: Session,
    launch: LaunchSession,
    *,
    assignee: str | None,
    group: str | None = None,
    limit: int = 500,
) -> Sequence[CareTask]:
    """Follow-ups waiting for a person (an assignee's, or a group's), soonest due first,
    within what the launch may see."""
    where = scope_of(launch).where(CareTask.registration_id, CareTask.patient_ref)
    where += [CareTask.kind == "follow-up", CareTask.status == "waiting"]
    if group:
        where.append(CareTask.payload["group"].as_string() == group)
    elif assignee:
        where.append(CareTask.assignee == assignee)
    tasks = db.scalars(
        select(CareTask).where(*where).order_by(CareTask.due_at, CareTask.id).limit(limit)
    ).all()
    audit_shown("task.list", launch=launch, entity="CareTask", rows=tasks)
    return tasks


def outbound_messages(
    db: Session, launch: LaunchSession, *, limit: int = 100
) -> Sequence[OutboundMessage]:
    """Messages sent to patients the launch may see, newest first."""
    where = scope_of(launch).where(OutboundMessage.registration_id, OutboundMessage.patient_ref)
    messages = db.scalars(
        select(OutboundMessage).where(*where).order_by(OutboundMessage.id.desc()).limit(limit)
    ).all()
    audit_many(
        "message.list",
        [
            {"launch": launch, "patient_ref": ref, "entity": "OutboundMessage"}
            for ref in sorted({m.patient_ref for m in messages if m.patient_ref})
        ],
    )
    return messages


def create_task(
    db: Session,
    launch: LaunchSession,
    *,
    kind: str,
    payload: Mapping[str, Any],
    due_at: datetime | None,
    assignee: str | None = None,
    patient: str | None = None,
    queue: str | None = None,
    patient_resource: Mapping[str, Any] | None = None,
) -> CareTask:
    """A follow-up or referral a person queued: the row is committed here; the caller
    dispatches its job (``jobs.outbox.dispatch``), which never raises for queue trouble
    (the sweeper enqueues the row later), so the caller never retries into a duplicate.

    A follow-up's channel must be one the patient can receive (``patient_resource``, the
    FHIR Patient as just read; None when it could not be read, which leaves only a call):
    ChannelRefused otherwise, and nothing is stored."""
    patient_ref = patient_for(launch, patient)
    if kind == "follow-up":
        channel = str(payload.get("channel") or "phone")
        stopped = messaging.stopped_channels(db, launch.registration_id, patient_ref)
        refuse_unreachable(patient_resource, channel, now=utcnow(), stopped=stopped)
    task = new_task(
        db,
        registration_id=launch.registration_id,
        kind=kind,
        patient_ref=patient_ref,
        payload=dict(payload),
        due_at=due_at,
        launch_session_id=launch.id,
        created_by=launch.fhir_user,
        assignee=assignee,
        queue=queue,
    )
    # None only for a duplicate dedupe_key, and a user's task has none.
    assert task is not None
    audit_row(db, "task.create", task, launch=launch)
    return task


def queue_task(
    db: Session,
    launch: LaunchSession,
    request: Mapping[str, Any],
    *,
    tz: ZoneInfo,
    now: datetime | None = None,
    patient_resource: Mapping[str, Any] | None = None,
) -> CareTask:
    """A follow-up or referral a person asked for, from the API or the sidebar's forms:
    ``request`` is the body as the web edge's schema loaded it (``kind`` picks the shape).

    The rules the schema cannot know are applied here: a follow-up's due time is in the
    future, or a phrase read in the viewer's zone ``tz`` (default: tomorrow morning); a
    referral's payload has the shape ``jobs.referral`` reads, and refers out of the
    appointment the EHR launched us from when none is named. A broken rule raises
    ``ValidationError`` naming the field (nothing is stored). The row is committed; the
    caller dispatches its job (``jobs.outbox.dispatch``).
    """
    data = dict(request)
    kind = str(data.pop("kind"))
    patient = data.pop("patient", None)
    assignee = data.get("assignee")
    due_at: datetime | None = None
    payload: dict[str, Any]
    if kind == "follow-up":
        now = now or utcnow()
        if "due_at" in data:
            due_at = data.pop("due_at")
            if due_at is not None and due_at <= now:
                raise ValidationError("This time is already past.", "due_at")
        else:
            phrase = data.pop("due", None) or "tomorrow morning"
            try:
                due_at = duephrase.parse_due(phrase, now=now, tz=tz)
            except duephrase.DuePhraseError as exc:
                raise ValidationError(str(exc), "due") from exc
            data["due_phrase"] = phrase
        payload = {k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in data.items()}
    else:
        payload = {
            "reason": data["reason"],
            "target": {k: data.get(k) for k in ("specialty", "organization", "practitioner")},
            "urgency": data.get("urgency", "routine"),
            "appointment_ref": data.get("appointment") or launched_from_appointment(launch),
        }
    try:
        return create_task(
            db,
            launch,
            kind=kind,
            payload=payload,
            due_at=due_at,
            assignee=assignee,
            patient=patient,
            patient_resource=patient_resource,
        )
    except ChannelRefused as exc:
        raise ValidationError(exc.message, exc.field) from exc


def launched_from_appointment(launch: LaunchSession) -> str | None:
    """The appointment in the launch's ``fhirContext``, when the EHR launched us from one."""
    for item in (launch.context or {}).get("fhir_context") or []:
        ref = item.get("reference") if isinstance(item, dict) else None
        if isinstance(ref, str) and ref.startswith("Appointment/"):
            return ref
    return None


# --- channels follow the patient ----------------------------------------------------------


@dataclass(frozen=True)
class ChannelOption:
    channel: str  # phone | sms | email
    label: str
    allowed: bool
    reason: str | None  # why not, in words, when not allowed


def _callable_number(patient: Mapping[str, Any], now: datetime) -> bool:
    return any(get_str(p, "system") == "phone" for p in current_telecoms(patient, now))


def channel_options(
    patient: Mapping[str, Any] | None,
    *,
    now: datetime,
    stopped: Mapping[str, str] | None = None,
) -> tuple[ChannelOption, ...]:
    """Each follow-up channel, and why the patient cannot receive it when they cannot.

    ``patient`` None means the Patient could not be read (the EHR is down): nothing can
    be ruled out, so every channel stays open; the follow-up job reads the Patient again
    when it sends, and a channel that turns out impossible fails for a lasting reason
    there (the sidebar then offers another channel).

    ``stopped`` maps a channel the patient opted out of by replying STOP
    (``helpdesk.messaging.stopped_channels``) to the reason in words.
    """
    stopped = stopped or {}
    if patient is None:
        return tuple(ChannelOption(c, CHANNEL_WORDS[c], True, None) for c in FOLLOW_UP_CHANNELS)
    banned = blocked(patient)
    dead = is_deceased(patient)
    messaging = {r.channel for r in reachable(patient, now=now)}
    out: list[ChannelOption] = []
    for channel in FOLLOW_UP_CHANNELS:
        reason: str | None = None
        if dead:
            reason = "The patient is recorded as deceased."
        elif channel in banned:
            reason = {
                "phone": "The patient asked not to be called.",
                "sms": "The patient asked not to be texted.",
                "email": "The patient asked not to be emailed.",
            }[channel]
        elif channel in stopped:
            reason = stopped[channel]
        elif channel == "phone" and not _callable_number(patient, now):
            reason = "No phone number on file."
        elif channel == "sms" and channel not in messaging:
            reason = "No mobile number on file."
        elif channel == "email" and channel not in messaging:
            reason = "No email address on file."
        out.append(ChannelOption(channel, CHANNEL_WORDS[channel], reason is None, reason))
    return tuple(out)


def refuse_unreachable(
    patient: Mapping[str, Any] | None,
    channel: str,
    *,
    now: datetime,
    stopped: Mapping[str, str] | None = None,
) -> None:
    """Raise ChannelRefused when the patient cannot receive ``channel`` (the server's half
    of the disabled option: a form or API call that names it anyway is refused)."""
    for option in channel_options(patient, now=now, stopped=stopped):
        if option.channel == channel:
            if not option.allowed:
                raise ChannelRefused(f"{option.label} is not possible: {option.reason}")
            return
    raise ChannelRefused(f"Unknown channel {channel!r}: choose phone, sms or email.")


def masked_address(address: str) -> str:
    """Enough of an address for the person who just sent to it to recognise it:
    ``···0113`` for a number, ``m···@example.com`` for an email."""
    if "@" in address:
        user, _, domain = address.partition("@")
        return f"{user[:1]}···@{domain}"
    digits = re.sub(r"\D", "", address)
    return "···" + digits[-4:]


@dataclass(frozen=True)
class SurveyRoute:
    channel: str | None  # sms | email, or None when it cannot be sent
    to: str | None  # masked address
    refusal: str | None  # "Not sent: ..." when channel is None


def survey_route(patient: Mapping[str, Any] | None, *, now: datetime) -> SurveyRoute:
    """Where a survey invitation for this patient goes (the same reading the invitation
    job uses), or in words why it cannot go anywhere."""
    if patient is None:
        return SurveyRoute(None, None, "Not sent: contact details could not be read from the EHR.")
    if not may_survey(patient):
        return SurveyRoute(None, None, "Not sent: the patient asked not to get surveys.")
    found = reachable(patient, now=now)
    if not found:
        banned = blocked(patient)
        if {"sms", "email"} <= banned:
            why = "the patient asked not to be texted or emailed."
        else:
            why = "no mobile number or email on file."
        return SurveyRoute(None, None, f"Not sent: {why}")
    return SurveyRoute(found[0].channel, masked_address(found[0].address), None)


# --- retry: the one rule the sidebar, the jobs page and the retry endpoint share ----------

# What to do when retrying a failed task would fail the same way (refused message, no
# reachable channel, the EHR's 4xx): the sidebar offers "change channel" for a follow-up,
# the other kinds are fixed elsewhere and queued again from where they were made.
INSTEAD_OF_RETRY = {
    "follow-up": "Change the channel on the patient's page (or call the patient).",
    "reminder": (
        "Call the patient instead, or correct the phone or email in the EHR and queue a "
        "new reminder from the board."
    ),
    "referral": (
        "Correct what the EHR refused (the reason above), then queue a new referral from "
        "the patient's page."
    ),
    "survey-invite": (
        "Correct the patient's phone or email in the EHR if they are wrong; an invitation "
        "that cannot reach the patient is not sent again."
    ),
    "survey-writeback": (
        "The EHR refused the answer (the reason above); it stays in CareDesk's report. "
        "Ask the EHR's administrator whether CareDesk may write QuestionnaireResponses."
    ),
}


def can_retry(status: str | None, last_error: str | None) -> bool:
    """A retry can succeed: the task failed for a temporary reason (the EHR or the message
    service kept failing: jobs.tasks marks those with GAVE_UP), or it waits for the EHR's
    permission (reopening CareDesk from the EHR renews it). Read from a row or from its
    dict (the sidebar's task rows)."""
    if status == "needs-authorization":
        return True
    return status == "failed" and (last_error or "").startswith(GAVE_UP)


def lasting_failure(task: CareTask) -> bool:
    """A failed task whose reason will not go away by retrying (see GAVE_UP)."""
    return task.status == "failed" and not can_retry(task.status, task.last_error)


def retry_refusal(task: CareTask) -> str | None:
    """None when a retry of ``task`` can succeed; else why not, and what to do instead,
    in a sentence the person who asked reads."""
    if can_retry(task.status, task.last_error):
        return None
    if task.status == "failed":
        instead = INSTEAD_OF_RETRY.get(task.kind, "Queue the work again once its cause is fixed.")
        return f"A retry would fail the same way. {instead}"
    return (
        "Only a failed task, or one waiting for the EHR's permission, can be retried; "
        f"this one is {task.status}."
    )


# --- calls --------------------------------------------------------------------------------


def _scoped_task(db: Session, launch: LaunchSession, task_id: int) -> CareTask:
    """The task if this launch may see it (``get_task``: helpdesk.access's rule)."""
    return get_task(db, launch, task_id)


def calls_of(db: Session, task_ids: Sequence[int]) -> dict[int, list[CallAttempt]]:
    """The calls logged for each task, oldest first."""
    out: dict[int, list[CallAttempt]] = {i: [] for i in task_ids}
    if not task_ids:
        return out
    rows = db.scalars(
        select(CallAttempt)
        .where(CallAttempt.task_id.in_(list(task_ids)))
        .order_by(CallAttempt.task_id, CallAttempt.attempt)
    )
    for row in rows:
        out[row.task_id].append(row)
    return out


def open_calls(
    db: Session, launch: LaunchSession, *, mine: bool = True, limit: int = 200
) -> list[CareTask]:
    """Follow-ups waiting for a person to call, soonest due first. A launch with a
    patient sees that patient's only; ``mine`` keeps those assigned to the launch's user
    (or to nobody)."""
    where = scope_of(launch).where(CareTask.registration_id, CareTask.patient_ref)
    where += [CareTask.kind == "follow-up", CareTask.status.in_(OPEN_CALL_STATUSES)]
    if mine and launch.fhir_user:
        where.append(
            (CareTask.assignee == launch.fhir_user)
            | CareTask.assignee.is_(None)
            | (CareTask.assignee == "")
        )
    tasks = list(db.scalars(select(CareTask).where(*where).order_by(CareTask.id).limit(limit)))
    far = datetime.max.replace(tzinfo=utcnow().tzinfo)
    tasks.sort(key=lambda t: (t.due_at or far, t.id))
    return tasks


def log_call(
    db: Session,
    launch: LaunchSession,
    task_id: int,
    *,
    outcome: str,
    next_due: datetime | None = None,
    note: str | None = None,
    now: datetime | None = None,
) -> CallAttempt:
    """Record one call for a follow-up and move the task on (the caller commits nothing:
    this commits). Reached or wrong number ends it; voicemail or no answer sets the next
    attempt (``next_due``, required then) until the CALL_ATTEMPTS-th, which ends it."""
    now = now or utcnow()
    task = _scoped_task(db, launch, task_id)
    if task.kind != "follow-up":
        raise CallRefused("Only follow-up calls take a call outcome.")
    if task.status not in OPEN_CALL_STATUSES:
        raise CallRefused("This call is finished already; nothing was logged.")
    if outcome not in CALL_OUTCOMES:
        raise CallRefused("Choose how the call went.")
    attempt = len(calls_of(db, [task.id])[task.id]) + 1
    ends = outcome in ("reached", "wrong-number") or attempt >= CALL_ATTEMPTS
    if not ends:
        if next_due is None:
            raise CallRefused("Say when to call again.", field="next_due")
        if as_utc(next_due) <= now:
            raise CallRefused("The next attempt must be in the future.", field="next_due")
    row = CallAttempt(
        task_id=task.id,
        attempt=attempt,
        outcome=outcome,
        note=(note or "").strip() or None,
        by=launch.fhir_user,
        at=now,
        next_due_at=None if ends else as_utc(next_due),  # type: ignore[arg-type]
    )
    db.add(row)
    # The job's part (putting the call on the list) is over whatever it was doing; a
    # pending job for this row finds it no longer queued/scheduled and skips it.
    if ends:
        task.status = "done"
        task.finished_at = now
        task.status_note = {
            "reached": "Reached the patient.",
            "wrong-number": "Wrong number: correct the patient's phone in the EHR.",
        }.get(outcome, f"Not reached after {attempt} calls.")
    else:
        task.status = "waiting"
        task.due_at = as_utc(next_due)  # type: ignore[arg-type]
        task.status_note = f"{CALL_OUTCOMES[outcome]} on call {attempt} of {CALL_ATTEMPTS}."
    task.updated_at = now
    audit_row(db, "call.log", task, launch=launch, outcome=outcome, attempt=attempt)
    return row


def finish_call(
    db: Session, launch: LaunchSession, task_id: int, *, now: datetime | None = None
) -> CareTask:
    """ "Done": no more calls for this follow-up, whatever the attempts so far."""
    now = now or utcnow()
    task = _scoped_task(db, launch, task_id)
    if task.kind != "follow-up" or task.status not in OPEN_CALL_STATUSES:
        raise CallRefused("This call is finished already.")
    task.status = "done"
    task.finished_at = now
    task.updated_at = now
    task.status_note = "Marked done on the call list."
    audit_row(db, "call.done", task, launch=launch)
    return task


def change_channel(
    db: Session,
    launch: LaunchSession,
    task_id: int,
    *,
    channel: str,
    patient: Mapping[str, Any] | None,
    now: datetime | None = None,
) -> CareTask:
    """A follow-up that failed for a lasting reason, sent again on another channel the
    patient can receive. The same task (and so the same failure ticket) carries on; the
    caller dispatches its job after this commits."""
    now = now or utcnow()
    task = _scoped_task(db, launch, task_id)
    if task.kind != "follow-up" or not lasting_failure(task):
        raise ChannelRefused("Only a follow-up that could not be sent can change channel.")
    if channel == task.payload.get("channel"):
        raise ChannelRefused("Choose another channel: this one failed already.")
    stopped = messaging.stopped_channels(db, launch.registration_id, str(task.patient_ref))
    refuse_unreachable(patient, channel, now=now, stopped=stopped)
    task.payload = {**task.payload, "channel": channel}
    task.status = "queued"
    task.due_at = now
    task.attempts = 0
    task.last_error = None
    task.finished_at = None
    task.status_note = f"Channel changed to {CHANNEL_WORDS[channel].lower()}."
    task.updated_at = now
    audit_row(db, "task.channel", task, launch=launch, channel=channel)
    return task
