"""Referral tasks: a FHIR ServiceRequest (and a Task where the EHR takes Task create),
written so that a retry never makes a duplicate, then followed until an appointment
schedules it (``fhir_mappers.referral``: one booked from the ServiceRequest, or failing
that one booked after the referral with the referred practitioner or service), or the
referral is overdue. When it is scheduled, or closed by hand, the ServiceRequest and Task
in the EHR are set to their end status where the registration allows writes, and the row
says what was written."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from flask import Flask, current_app
from sqlalchemy import select

from fhir_mappers.appointment import patients_of
from fhir_mappers.referral import GOING_AHEAD, ReferralTarget, Scheduling, scheduling_of
from helpdesk.db import get_store
from helpdesk.models import CareTask
from helpdesk.timeutil import utcnow
from jobs.context import JobContext
from jobs.errors import TaskError, split_reference
from jobs.tasks import handler
from smart_launch.errors import FatalFhirError, FhirError

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
        raise TaskError("a referral needs a patient")
    reg = ctx.registration
    if not reg.allow_writes or ctx.capability("ServiceRequest create") is False:
        task.status = "waiting"
        task.status_note = NO_WRITES_NOTE
        task.fhir_refs = {**task.fhir_refs, "written": False}
        return
    conditional = _conditional_create(ctx)
    # A new dict on every change: the JSON column only sees an assignment of another
    # object, so mutating the one already assigned was silently never saved (the first
    # run lost the Task reference and the written flag although the Task existed).
    if "ServiceRequest" not in task.fhir_refs:
        if task.payload.get("appointment_ref"):
            _check_appointment(ctx, task, str(task.payload["appointment_ref"]))
        ref = _find_or_create(ctx, service_request(task, ctx.now), conditional)
        task.fhir_refs = {**task.fhir_refs, "ServiceRequest": ref}
        # Remember it at once: a Task create failing next must not lose the reference.
        ctx.session.commit()
    if ctx.capability("Task create") and "Task" not in task.fhir_refs:
        ref = _find_or_create(
            ctx, fhir_task(task, task.fhir_refs["ServiceRequest"], ctx.now), conditional
        )
        task.fhir_refs = {**task.fhir_refs, "Task": ref}
        ctx.session.commit()
    task.fhir_refs = {**task.fhir_refs, "written": True}
    task.status = "waiting"
    task.status_note = (
        f"Referral written to the EHR as {task.fhir_refs['ServiceRequest']}"
        + (f" and {task.fhir_refs['Task']}" if "Task" in task.fhir_refs else "")
        + "; waiting for an appointment."
    )


# The end status written to the EHR: (ServiceRequest.status, Task.status).
END_STATUS = {"completed": ("completed", "completed"), "cancelled": ("revoked", "cancelled")}


def update_in_ehr(ctx: JobContext, task: CareTask, outcome: str) -> str:
    """Set the referral's ServiceRequest and Task to their end status in the EHR where
    allowed; record on the row what was written (``fhir_refs["ehr_status"]``: reference ->
    status, or why not) and return it as a sentence for the status note.

    A refusal by the EHR (403, 405, 409, 412, 422...) is recorded, not raised: the referral
    in CareDesk is done either way. Temporary trouble (the EHR down) is raised so the
    caller tries again later.
    """
    refs = dict(task.fhir_refs)
    if not refs.get("written"):
        return "Nothing of it was written to the EHR, so nothing there to update."
    if not ctx.registration.allow_writes:
        return "The registration is read-only: the EHR's ServiceRequest and Task are unchanged."
    sr_status, task_status = END_STATUS[outcome]
    done: dict[str, str] = dict(refs.get("ehr_status") or {})
    said: list[str] = []
    for key, status in (("ServiceRequest", sr_status), ("Task", task_status)):
        ref = refs.get(key)
        if not isinstance(ref, str) or done.get(ref) == status:
            continue
        try:
            _set_status(ctx, ref, status)
        except FatalFhirError as exc:
            done[ref] = f"not updated (HTTP {exc.status})"
            said.append(f"{ref} not updated: {exc.message}")
            continue
        done[ref] = status
        said.append(f"{ref} set to {status}")
    task.fhir_refs = {**refs, "ehr_status": done}
    return ("In the EHR: " + "; ".join(said) + ".") if said else ""


def _set_status(ctx: JobContext, ref: str, status: str) -> None:
    """Read, then update with If-Match: a concurrent edit by the EHR's own users makes
    the update fail (412) rather than be overwritten."""
    rtype, rid = split_reference(ref)
    client = ctx.fhir()
    # Searched by _id, not read: referrals need search and update of what they wrote
    # (smart_launch.features: ServiceRequest.cus), not read.
    found = [
        entry.get("resource") or {}
        for entry in client.search(rtype, {"_id": rid}).get("entry") or []
        if (entry.get("resource") or {}).get("id") == rid
    ]
    if not found:
        raise FatalFhirError(f"{ref} is no longer in the EHR.", status=404)
    current = found[0]
    if current.get("status") == status:
        return
    body = {**current, "status": status}
    if rtype == "Task":
        body["lastModified"] = ctx.now.isoformat()
    version = (current.get("meta") or {}).get("versionId")
    headers = {"If-Match": f'W/"{version}"'} if version else None
    client.request("PUT", f"{rtype}/{rid}", json_body=body, headers=headers, what=f"update {ref}")


def _check_appointment(ctx: JobContext, task: CareTask, appointment_ref: str) -> None:
    """The referral's supporting appointment must be its patient's: a referral queued
    from A's chart never points the EHR at B's visit."""
    rtype, rid = split_reference(appointment_ref)
    if task.patient_ref not in patients_of(ctx.fhir().read(rtype, rid)):
        raise TaskError("the appointment is not this referral's patient's; nothing was written")


def check_referrals(app: Flask, *, now: datetime | None = None) -> dict[str, int]:
    """The periodic check: done when an appointment schedules the referral (and its
    ServiceRequest/Task are closed in the EHR); flagged overdue after
    ``REFERRAL_OVERDUE_DAYS``."""
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
                found = scheduling_appointment(ctx, task)
                written = update_in_ehr(ctx, task, "completed") if found is not None else ""
            except Exception as exc:  # noqa: BLE001 - one EHR's trouble must not stop the rest
                counts["errors"] += 1
                session.rollback()
                task = session.get(CareTask, task_id)
                assert task is not None
                task.last_error = f"referral check: {exc}"
                continue
            if found is not None:
                task.status = "done"
                task.finished_at = now
                task.last_error = None
                task.fhir_refs = {
                    **task.fhir_refs,
                    "Appointment": found.appointment,
                    "scheduled_by": found.how,
                }
                task.status_note = f"Scheduled: {found.describe()}. {written}".strip()
                counts["scheduled"] += 1
            elif now - task.created_at > overdue_after and not task.payload.get("overdue"):
                task.payload = {**task.payload, "overdue": True}
                task.status_note = (task.status_note or "") + " Overdue: no appointment yet."
                counts["overdue"] += 1
    if counts["errors"]:
        # Every referral was tried; the cron job still fails so RQ shows it.
        raise RuntimeError(f"referral check: {counts['errors']} of {counts['checked']} failed")
    return counts


def scheduling_appointment(ctx: JobContext, task: CareTask) -> Scheduling | None:
    """The appointment that schedules this referral, read from the EHR (one search of
    the patient's appointments from the referral's day on; the rule is
    ``fhir_mappers.referral.scheduling_of``)."""
    if not task.patient_ref:
        return None
    target = task.payload.get("target") or {}
    refs = task.fhir_refs
    wanted = ReferralTarget(
        patient=task.patient_ref,
        made_at=_aware(task.created_at),
        service_request=refs.get("ServiceRequest") if refs.get("written") else None,
        practitioner=target.get("practitioner"),
        organization=target.get("organization"),
        specialty=target.get("specialty"),
    )
    if not any(
        (wanted.service_request, wanted.practitioner, wanted.organization, wanted.specialty)
    ):
        return None
    _, patient_id = split_reference(task.patient_ref)
    tz = ZoneInfo(str(ctx.app.config["VIEWER_TIMEZONE"]))
    # An appointment that schedules a referral takes place after it was made; the date
    # only narrows the search, the booking time decides.
    params = [
        ("patient", patient_id),
        ("date", "ge" + _aware(task.created_at).astimezone(tz).date().isoformat()),
        ("status", ",".join(GOING_AHEAD)),
    ]
    appointments = ctx.fhir().search_all("Appointment", params, max_pages=5)
    return scheduling_of(appointments, wanted, default_tz=tz)


def _aware(moment: datetime) -> datetime:
    # SQLite hands back naive datetimes; the store writes UTC.
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def close_referral(app: Flask, task_id: int, *, outcome: str, note: str = "") -> CareTask:
    """Close a waiting referral by hand (``caredesk jobs close-referral``): ``completed``
    (dealt with) or ``cancelled`` (no longer wanted); the EHR's ServiceRequest and Task get
    the matching end status where allowed. Raises TaskError for a task that is not an
    open referral, and the EHR's temporary errors (nothing is closed then)."""
    if outcome not in END_STATUS:
        raise TaskError(f"outcome must be one of {', '.join(END_STATUS)}")
    with get_store(app).session() as session:
        task = session.get(CareTask, task_id)
        if task is None or task.kind != "referral" or task.status != "waiting":
            raise TaskError(f"task {task_id} is not an open referral")
        ctx = JobContext(app=app, session=session, task=task, now=utcnow())
        written = update_in_ehr(ctx, task, outcome)
        task.status = "done" if outcome == "completed" else "cancelled"
        task.finished_at = ctx.now
        said = "Closed" if outcome == "completed" else "Cancelled"
        task.status_note = " ".join(
            part for part in (f"{said} by hand{': ' + note if note else ''}.", written) if part
        )
        session.flush()
        session.expunge(task)
        return task


def check_referrals_job() -> dict[str, int]:
    return check_referrals(current_app._get_current_object())  # type: ignore[attr-defined]
