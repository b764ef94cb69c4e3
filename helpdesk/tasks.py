"""Task rows: the outbox of follow-ups, referrals, reminders and survey jobs.

A ``CareTask`` row is committed first; its RQ job is enqueued afterwards by
``jobs.outbox.dispatch`` (the web edge and the jobs call it after their commit), and a
sweeper enqueues rows whose job vanished. Everything about a task that a job needs is on
its row: jobs receive the row id only.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from flask import current_app, has_app_context
from marshmallow import ValidationError
from sqlalchemy import select
from sqlalchemy.orm import Session

from helpdesk import duephrase
from helpdesk.access import patient_for
from helpdesk.audit import audit
from helpdesk.models import CareTask, LaunchSession
from helpdesk.timeutil import as_utc, utcnow


def new_task(
    session: Session,
    *,
    registration_id: int,
    kind: str,
    patient_ref: str | None,
    payload: Mapping[str, Any],
    due_at: datetime | None = None,
    dedupe_key: str | None = None,
    launch_session_id: str | None = None,
    created_by: str | None = None,
    max_attempts: int = 5,
    assignee: str | None = None,
    queue: str | None = None,
) -> CareTask | None:
    """Add a task row (the caller commits, then calls ``jobs.outbox.dispatch``).

    Returns None when ``dedupe_key`` exists already: a reminder or an invitation is never
    made twice. The unique index makes that true across processes too (the loser of a race
    gets IntegrityError at commit, which callers sweeping in bulk treat as "exists").
    """
    if dedupe_key is not None:
        found = session.scalar(select(CareTask.id).where(CareTask.dedupe_key == dedupe_key))
        if found is not None:
            return None
    now = utcnow()
    due = as_utc(due_at) if due_at is not None else None
    task = CareTask(
        registration_id=registration_id,
        kind=kind,
        patient_ref=patient_ref,
        payload=dict(payload),
        due_at=due,
        status="scheduled" if due is not None and due > now else "queued",
        dedupe_key=dedupe_key,
        launch_session_id=launch_session_id,
        created_by=created_by,
        max_attempts=max_attempts,
        assignee=assignee,
        queue=queue or _configured_queue(),
    )
    session.add(task)
    return task


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
    queue: str | None = None,
) -> CareTask:
    """A follow-up or referral a person queued: the row is committed here; the caller
    dispatches its job (``jobs.outbox.dispatch``), which never raises for queue trouble
    (the sweeper enqueues the row later), so the caller never retries into a duplicate."""
    patient_ref = patient_for(launch, patient)
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
    db.commit()
    audit("task.create", launch=launch, patient_ref=patient_ref, entity=f"CareTask/{task.id}")
    return task


def queue_task(
    db: Session,
    launch: LaunchSession,
    request: Mapping[str, Any],
    *,
    tz: ZoneInfo,
    now: datetime | None = None,
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
    return create_task(
        db,
        launch,
        kind=kind,
        payload=payload,
        due_at=due_at,
        assignee=assignee,
        patient=patient,
    )


def launched_from_appointment(launch: LaunchSession) -> str | None:
    """The appointment in the launch's ``fhirContext``, when the EHR launched us from one."""
    for item in (launch.context or {}).get("fhir_context") or []:
        ref = item.get("reference") if isinstance(item, dict) else None
        if isinstance(ref, str) and ref.startswith("Appointment/"):
            return ref
    return None
