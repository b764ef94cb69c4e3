"""Referral tasks: a FHIR ServiceRequest (and a Task where the EHR takes Task create),
written so that a retry never makes a duplicate, then followed until the patient has an
appointment with the target, or the referral is overdue."""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Any

from flask import Flask, current_app
from sqlalchemy import select

from helpdesk.db import get_store
from helpdesk.models import CareTask
from helpdesk.timeutil import utcnow
from jobs.context import JobContext
from jobs.errors import split_reference
from jobs.tasks import handler
from smart_launch.errors import FhirError

log = logging.getLogger("caredesk.jobs")

IDENTIFIER_SYSTEM = "https://caredesk.example/fhir/NamingSystem/care-task"
PRIORITIES = {"routine", "urgent", "asap", "stat"}
NO_WRITES_NOTE = (
    "This EHR does not take referrals over FHIR (read-only registration or no "
    "ServiceRequest create): the referral stays a CareDesk task; place it in the EHR by hand."
)


def identifier_value(task: CareTask, suffix: str = "") -> str:
    return f"task-{task.id}{suffix}"


def service_request(task: CareTask, now: datetime) -> dict[str, Any]:
    """The ServiceRequest for a referral task: pure, from the row."""
    p = task.payload
    target = p.get("target") or {}
    resource: dict[str, Any] = {
        "resourceType": "ServiceRequest",
        "identifier": [{"system": IDENTIFIER_SYSTEM, "value": identifier_value(task)}],
        "status": "active",
        "intent": "order",
        "category": [
            {
                "coding": [
                    {
                        "system": "http://snomed.info/sct",
                        "code": "3457005",
                        "display": "Patient referral",
                    }
                ]
            }
        ],
        "priority": p.get("urgency") if p.get("urgency") in PRIORITIES else "routine",
        "subject": {"reference": task.patient_ref},
        "authoredOn": now.isoformat(),
    }
    if target.get("specialty"):
        resource["code"] = {"text": f"Referral to {target['specialty']}"}
    performers = [
        {"reference": target[k]} for k in ("practitioner", "organization") if target.get(k)
    ]
    if performers:
        resource["performer"] = performers
    if p.get("reason"):
        resource["reasonCode"] = [{"text": str(p["reason"])}]
    if p.get("appointment_ref"):
        resource["supportingInfo"] = [{"reference": p["appointment_ref"]}]
    if task.created_by and task.created_by.startswith(("Practitioner/", "PractitionerRole/")):
        resource["requester"] = {"reference": task.created_by}
    return resource


def fhir_task(task: CareTask, service_request_ref: str, now: datetime) -> dict[str, Any]:
    target = task.payload.get("target") or {}
    resource: dict[str, Any] = {
        "resourceType": "Task",
        "identifier": [{"system": IDENTIFIER_SYSTEM, "value": identifier_value(task, "-task")}],
        "status": "requested",
        "intent": "order",
        "focus": {"reference": service_request_ref},
        "for": {"reference": task.patient_ref},
        "authoredOn": now.isoformat(),
        "description": str(task.payload.get("reason") or "Referral"),
    }
    owner = target.get("practitioner") or target.get("organization")
    if owner:
        resource["owner"] = {"reference": owner}
    return resource


def _find_or_create(ctx: JobContext, resource: dict[str, Any], conditional: bool) -> str:
    """Search by identifier first; create (with If-None-Exist where supported) if absent."""
    client = ctx.fhir()
    rtype = resource["resourceType"]
    ident = resource["identifier"][0]
    query = f"{ident['system']}|{ident['value']}"
    found = client.search(rtype, {"identifier": query})
    for entry in found.get("entry") or []:
        res = entry.get("resource") or {}
        if res.get("resourceType") == rtype and res.get("id"):
            return f"{rtype}/{res['id']}"
    _, created = client.create(
        resource, if_none_exist=f"identifier={query}" if conditional else None
    )
    if created.get("id"):
        return f"{rtype}/{created['id']}"
    location = str(created.get("location") or "")
    parts = location.split("/_history")[0].rstrip("/").split("/")
    if len(parts) >= 2 and parts[-2] == rtype:
        return f"{rtype}/{parts[-1]}"
    # Created but unnamed: searching again finds it (and proves it is there once).
    again = client.search(rtype, {"identifier": query})
    for entry in again.get("entry") or []:
        res = entry.get("resource") or {}
        if res.get("id"):
            return f"{rtype}/{res['id']}"
    raise FhirError(f"{rtype} was created but the EHR did not say where")


def _conditional_create(ctx: JobContext) -> bool:
    # `caredesk ehr check` reports conditional create for QuestionnaireResponse; EHRs set
    # it server-wide in practice (Epic: nowhere). Unknown: send it, servers that do not
    # support it ignore the header, and the identifier search already guards.
    for name in ("ServiceRequest conditional create", "QuestionnaireResponse conditional create"):
        known = ctx.capability(name)
        if known is not None:
            return known
    return True


@handler("referral")
def referral(task: CareTask, ctx: JobContext) -> None:
    if not task.patient_ref:
        from jobs.errors import TaskError

        raise TaskError("a referral needs a patient")
    reg = ctx.registration
    if not reg.allow_writes or ctx.capability("ServiceRequest create") is False:
        task.status = "waiting"
        task.status_note = NO_WRITES_NOTE
        task.fhir_refs = {**task.fhir_refs, "written": False}
        return
    conditional = _conditional_create(ctx)
    refs = dict(task.fhir_refs)
    if "ServiceRequest" not in refs:
        refs["ServiceRequest"] = _find_or_create(ctx, service_request(task, ctx.now), conditional)
        task.fhir_refs = refs
        # Remember it at once: a Task create failing next must not lose the reference.
        ctx.session.commit()
    if ctx.capability("Task create") and "Task" not in refs:
        refs["Task"] = _find_or_create(
            ctx, fhir_task(task, refs["ServiceRequest"], ctx.now), conditional
        )
    refs["written"] = True
    task.fhir_refs = refs
    task.status = "waiting"
    task.status_note = (
        f"Referral written to the EHR as {refs['ServiceRequest']}; waiting for an appointment."
    )


def check_referrals(app: Flask, *, now: datetime | None = None) -> dict[str, int]:
    """The periodic check: done when the patient has a booked appointment with the target
    since the referral; flagged overdue after ``REFERRAL_OVERDUE_DAYS``."""
    from jobs.tasks import _load_handlers

    _load_handlers()
    now = now or utcnow()
    overdue_after = timedelta(days=int(app.config["REFERRAL_OVERDUE_DAYS"]))
    counts = {"checked": 0, "scheduled": 0, "overdue": 0, "errors": 0}
    with get_store(app).session() as session:
        ids = list(
            session.scalars(
                select(CareTask.id).where(CareTask.kind == "referral", CareTask.status == "waiting")
            )
        )
    for task_id in ids:
        with get_store(app).session() as session:
            task = session.get(CareTask, task_id)
            if task is None or task.status != "waiting":
                continue
            counts["checked"] += 1
            ctx = JobContext(app=app, session=session, task=task, now=now)
            try:
                found = _appointment_with_target(ctx, task)
            except Exception as exc:  # noqa: BLE001 - one EHR's trouble must not stop the rest
                counts["errors"] += 1
                task.last_error = f"referral check: {exc}"
                continue
            if found is not None:
                task.status = "done"
                task.finished_at = now
                task.fhir_refs = {**task.fhir_refs, "Appointment": found}
                task.status_note = f"Scheduled: {found}."
                counts["scheduled"] += 1
            elif now - task.created_at > overdue_after and not task.payload.get("overdue"):
                task.payload = {**task.payload, "overdue": True}
                task.status_note = (task.status_note or "") + " Overdue: no appointment yet."
                counts["overdue"] += 1
    if counts["errors"]:
        # Every referral was tried; the cron job still fails so RQ shows it.
        raise RuntimeError(f"referral check: {counts['errors']} of {counts['checked']} failed")
    return counts


def _appointment_with_target(ctx: JobContext, task: CareTask) -> str | None:
    target = task.payload.get("target") or {}
    actor = target.get("practitioner") or target.get("organization")
    if not actor or not task.patient_ref:
        return None
    _, patient_id = split_reference(task.patient_ref)
    params = [
        ("patient", patient_id),
        ("actor", actor),
        ("date", "ge" + task.created_at.date().isoformat()),
        ("status", "booked,arrived,fulfilled,checked-in"),
    ]
    for appt in ctx.fhir().search_all("Appointment", params, max_pages=5):
        if appt.get("resourceType") == "Appointment" and appt.get("id"):
            return f"Appointment/{appt['id']}"
    return None


def check_referrals_job() -> dict[str, int]:
    return check_referrals(current_app._get_current_object())  # type: ignore[attr-defined]
