"""The cron sweep that notices fulfilled visits and queues their survey invitations.

Per registration: one paged search for appointments fulfilled in the look-back window,
then ``helpdesk.surveys.request_survey`` for each; its dedupe key makes a second sweep (or a
staff member's "send survey" click) a no-op, so overlapping windows are harmless.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from flask import Flask, current_app

from helpdesk.db import get_store
from helpdesk.surveys import request_survey
from jobs.context import appointments_of_patients
from jobs.outbox import dispatch
from jobs.sweeps import SweepRun, Swept, each_registration, per_registration

log = logging.getLogger("caredesk.jobs.survey_sweep")

LOOK_BACK = timedelta(days=2)
PAGE_SIZE = 100


@per_registration
def sweep_registration(run: SweepRun) -> Swept:
    app, registration_id, now = run.app, run.registration_id, run.now
    result = Swept(registration_id)
    params = [
        ("status", "fulfilled"),
        ("date", "ge" + (now - LOOK_BACK).isoformat()),
        ("date", "le" + now.isoformat()),
        ("_count", str(PAGE_SIZE)),
    ]
    queued: list[int] = []
    for appt, patient in appointments_of_patients(run.client, params, max_pages=1_000):
        result.seen += 1
        with get_store(app).session() as session:
            task = request_survey(
                session,
                app,
                registration_id=registration_id,
                appointment_ref=f"Appointment/{appt['id']}",
                patient_ref=patient,
                now=now,
                fulfilled_at=_end_of(appt),
            )
            if task is not None:
                session.flush()
                queued.append(task.id)
        if len(queued) >= PAGE_SIZE:
            dispatch(queued, app=app)
            result.queued += len(queued)
            queued = []
    if queued:
        dispatch(queued, app=app)
        result.queued += len(queued)
    log.info(
        "survey sweep of registration %s: %d fulfilled visits, %d invitations queued",
        registration_id,
        result.seen,
        result.queued,
    )
    return result


def _end_of(appt: dict) -> datetime | None:  # type: ignore[type-arg]
    value = appt.get("end") or appt.get("start")
    try:
        parsed = datetime.fromisoformat(str(value)) if value else None
    except ValueError:
        return None
    return parsed if parsed and parsed.tzinfo else None


def sweep_all(app: Flask, *, now: datetime | None = None) -> list[Swept]:
    return each_registration(app, sweep_registration, what="survey sweep", now=now)


def sweep_surveys_job() -> int:
    """The cron entry point."""
    app: Flask = current_app._get_current_object()  # type: ignore[attr-defined]
    return sum(s.queued for s in sweep_all(app))
