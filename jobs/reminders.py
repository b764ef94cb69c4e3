"""Appointment reminders: a cron sweep per registration queues one reminder task per
appointment and offset (72 h and 24 h before by default); the task's job sends it.

The sweep pages through the EHR's Appointment search (one page in memory), creates rows
with a dedupe key (``reminder:<registration>:<appointment>:<offset>h``), commits and
dispatches per page, and clears the session: memory does not grow with the number of
appointments, and a second sweep over the same day adds nothing.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from flask import Flask, current_app
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from fhir_mappers.contact import pick_language
from fhir_mappers.fhirutil import parse_datetime
from helpdesk import i18n
from helpdesk.db import get_store
from helpdesk.models import CareTask
from helpdesk.reminders import REMIND_STATUSES as remind_statuses
from helpdesk.tasks import new_task
from jobs.context import JobContext, appointments_of_patients
from jobs.errors import split_reference
from jobs.outbound import NoReachableChannel
from jobs.outbox import dispatch
from jobs.sweeps import SweepRun, Swept, each_registration, per_registration
from jobs.tasks import handler

log = logging.getLogger("caredesk.jobs")

PAGE_SIZE = 200
# The statuses a reminder is for: one rule, shared with reminders asked for from the board.
REMIND_STATUSES = ",".join(remind_statuses)


def offsets(app: Flask) -> list[int]:
    raw = str(app.config.get("REMINDER_OFFSETS_HOURS") or "72,24")
    return sorted({int(x) for x in raw.split(",") if x.strip()}, reverse=True)


def windows(hours: list[int], now: datetime) -> list[tuple[int, datetime, datetime]]:
    """(offset, after, up_to): an appointment starting in (after, up_to] gets that offset's
    reminder now. Each offset covers the time down to the next smaller offset, so a visit
    booked 30 h ahead gets its 72 h reminder at once and its 24 h one later."""
    ordered = sorted(hours)
    out = []
    for i, hours_before in enumerate(ordered):
        lower = ordered[i - 1] if i else 0
        out.append(
            (hours_before, now + timedelta(hours=lower), now + timedelta(hours=hours_before))
        )
    return out


@dataclass
class ReminderSweep(Swept):
    pages: int = 0
    per_offset: dict[int, int] = field(default_factory=dict)


@per_registration
def sweep_registration(run: SweepRun) -> ReminderSweep:
    app, registration_id = run.app, run.registration_id
    result = ReminderSweep(registration_id)
    for hours_before, after, up_to in windows(offsets(app), run.now):
        params = [
            ("date", "gt" + after.isoformat()),
            ("date", "le" + up_to.isoformat()),
            ("status", REMIND_STATUSES),
            ("_count", str(PAGE_SIZE)),
            ("_elements", "id,status,start,participant"),
        ]
        batch: list[tuple[str, str]] = []
        for appt, patient in appointments_of_patients(run.client, params, max_pages=10_000):
            result.seen += 1
            batch.append((f"Appointment/{appt['id']}", patient))
            if len(batch) >= PAGE_SIZE:
                result.queued += _queue(app, registration_id, hours_before, batch)
                result.pages += 1
                batch = []
        if batch:
            result.queued += _queue(app, registration_id, hours_before, batch)
            result.pages += 1
        result.per_offset[hours_before] = result.queued - sum(result.per_offset.values())
    log.info(
        "reminder sweep of registration %s: %d appointments, %d reminders queued",
        registration_id,
        result.seen,
        result.queued,
    )
    return result


def _new_reminder(
    session: Session,
    registration_id: int,
    hours_before: int,
    key: str,
    appointment_ref: str,
    patient_ref: str,
) -> CareTask | None:
    return new_task(
        session,
        registration_id=registration_id,
        kind="reminder",
        patient_ref=patient_ref,
        payload={"appointment_ref": appointment_ref, "offset_hours": hours_before},
        dedupe_key=key,
        max_attempts=3,
    )


def _queue(
    app: Flask, registration_id: int, hours_before: int, batch: list[tuple[str, str]]
) -> int:
    keys = {
        f"reminder:{registration_id}:{appt}:{hours_before}h": (appt, patient)
        for appt, patient in batch
    }
    store = get_store(app)
    with store.session() as session:
        existing = set(
            session.scalars(select(CareTask.dedupe_key).where(CareTask.dedupe_key.in_(keys)))
        )
    fresh = {k: v for k, v in keys.items() if k not in existing}
    if not fresh:
        return 0
    try:
        with store.session() as session:
            tasks = [
                _new_reminder(session, registration_id, hours_before, key, appt, patient)
                for key, (appt, patient) in fresh.items()
            ]
            session.flush()
            ids = [t.id for t in tasks if t is not None]
    except IntegrityError:
        # Another sweep inserted some of these between our check and our insert: go row
        # by row (rare; only under concurrent sweeps).
        ids = []
        for key, (appt, patient) in fresh.items():
            try:
                with store.session() as session:
                    task = _new_reminder(session, registration_id, hours_before, key, appt, patient)
                    session.flush()
                    if task is not None:
                        ids.append(task.id)
            except IntegrityError:
                continue
    dispatch(ids, app=app)
    return len(ids)


def sweep_all(app: Flask, *, now: datetime | None = None) -> list[ReminderSweep]:
    return each_registration(app, sweep_registration, what="reminder sweep", now=now)


def sweep_reminders_job() -> int:
    """The cron entry point."""
    app: Flask = current_app._get_current_object()  # type: ignore[attr-defined]
    return sum(s.queued for s in sweep_all(app))


def when_text(at: datetime, language: str) -> tuple[str, str]:
    """(date, time) in the appointment's own offset, in the language's own words (Babel)."""
    return i18n.weekday_date(at.date(), language), i18n.clock(at, language)


@handler("reminder")
def reminder(task: CareTask, ctx: JobContext) -> None:
    appt_ref = str(task.payload.get("appointment_ref") or "")
    rtype, rid = split_reference(appt_ref)
    client = ctx.fhir()
    appt = client.read(rtype, rid)
    start = appt.get("start")
    if appt.get("status") not in REMIND_STATUSES.split(",") or not isinstance(start, str):
        task.status_note = f"Not sent: the appointment is {appt.get('status')}."
        return
    # Real EHRs send local times without an offset: read them in the clinic's zone
    # rather than crash comparing naive with aware (fhir_mappers owns that reading).
    starts_at = parse_datetime(start, str(ctx.app.config["VIEWER_TIMEZONE"]))
    if starts_at is None:
        task.status_note = "Not sent: the appointment's start time cannot be read."
        return
    if starts_at <= ctx.now:
        task.status_note = "Not sent: the appointment has started."
        return
    ptype, pid = split_reference(task.patient_ref or "")
    patient = client.read(ptype, pid)
    from jobs.outbound import languages_of

    lang = pick_language(patient, languages_of("appointment-reminder"))
    date, time = when_text(starts_at, lang)
    try:
        sent = ctx.send(
            patient=patient,
            channel=None,
            template="appointment-reminder",
            language=lang,
            params={"date": date, "time": time, "where": ""},
        )
    except NoReachableChannel as exc:
        # Not a failure of the job: the board shows "reminder not sent" with the reason.
        task.status_note = f"Not sent: {exc}"
        task.fhir_refs = {**task.fhir_refs, "reminder_sent": False}
        return
    task.fhir_refs = {**task.fhir_refs, "reminder_sent": True, "message": sent.message_id}
    task.status_note = f"Reminder sent by {sent.channel} to {sent.to_masked}."
