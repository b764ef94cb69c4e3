"""Proactive insurance outreach: a cron sweep per EHR messages each patient whose
coverage ends within ``OUTREACH_COVERAGE_DAYS`` (once per coverage period), asking them
to bring or send their new insurance. A reply lands on a ticket: ``jobs.inbound`` opens
an insurance ticket for a reply to this message, with the message in its thread.

Once per period is a database guarantee: the task's dedupe key names the coverage and
its period's end, so a renewed coverage (a new end) is a new period and a new message.
"""

from __future__ import annotations

import datetime as dt
import logging
from zoneinfo import ZoneInfo

from flask import Flask, current_app

from fhir_mappers.coverage import beneficiary_of, to_policy
from helpdesk.db import get_store
from helpdesk.models import CareTask
from helpdesk.tasks import new_task
from jobs.context import JobContext
from jobs.errors import split_reference
from jobs.outbound import NoReachableChannel
from jobs.outbox import dispatch
from jobs.sweeps import SweepRun, Swept, each_registration, per_registration
from jobs.tasks import handler

log = logging.getLogger("caredesk.jobs.outreach")

KIND = "insurance-outreach"
TEMPLATE = "insurance-outreach"


@per_registration
def sweep_registration(run: SweepRun) -> Swept:
    app, registration_id = run.app, run.registration_id
    days = int(app.config["OUTREACH_COVERAGE_DAYS"])
    today = run.now.astimezone(ZoneInfo(str(app.config["VIEWER_TIMEZONE"]))).date()
    result = Swept(registration_id)
    ids: list[int] = []
    # Coverage has no standard search by period end: page through the active ones and
    # read each period with fhir_mappers' one reading of a policy.
    for coverage in run.client.search_all(
        "Coverage", [("status", "active"), ("_count", "200")], max_pages=1000
    ):
        if coverage.get("resourceType") != "Coverage" or not coverage.get("id"):
            continue
        result.seen += 1
        policy = to_policy(coverage, today=today, expiring_days=days)
        patient = beneficiary_of(coverage)
        if policy.period_end is None or patient is None or not patient.startswith("Patient/"):
            continue
        if not today <= policy.period_end <= today + dt.timedelta(days=days):
            continue
        key = f"outreach:{registration_id}:Coverage/{coverage['id']}:{policy.period_end}"
        with get_store(app).session() as session:
            task = new_task(
                session,
                registration_id=registration_id,
                kind=KIND,
                patient_ref=patient,
                payload={
                    "coverage_ref": f"Coverage/{coverage['id']}",
                    "period_end": policy.period_end.isoformat(),
                },
                dedupe_key=key,
                max_attempts=3,
            )
            session.flush()
            if task is not None:
                ids.append(task.id)
    dispatch(ids, app=app)
    result.queued = len(ids)
    log.info(
        "insurance outreach of registration %s: %d coverages, %d messages queued",
        registration_id,
        result.seen,
        result.queued,
    )
    return result


def sweep_all(app: Flask, *, now: dt.datetime | None = None) -> list[Swept]:
    return each_registration(app, sweep_registration, what="insurance outreach", now=now)


def sweep_outreach_job() -> int:
    """The cron entry point."""
    app: Flask = current_app._get_current_object()  # type: ignore[attr-defined]
    return sum(s.queued for s in sweep_all(app))


@handler(KIND)
def send_outreach(task: CareTask, ctx: JobContext) -> None:
    ptype, pid = split_reference(task.patient_ref or "")
    patient = ctx.fhir().read(ptype, pid)
    ends = dt.date.fromisoformat(str(task.payload["period_end"]))
    try:
        sent = ctx.send(
            patient=patient,
            channel=None,
            template=TEMPLATE,
            language=None,
            params={"ends": f"{ends:%B %-d, %Y}"},
        )
    except NoReachableChannel as exc:
        # Not a failure of the job: the reason stays on the row for staff to read.
        task.status_note = f"Not sent: {exc}"
        return
    task.fhir_refs = {**task.fhir_refs, "message": sent.message_id}
    task.status_note = f"Insurance reminder sent by {sent.channel} to {sent.to_masked}."
