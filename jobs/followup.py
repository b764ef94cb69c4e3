"""Follow-up tasks: at the due time the call goes on the assignee's work list and, for SMS
or email follow-ups, the patient gets a message. A final failure opens a ticket."""

from __future__ import annotations

from flask import Flask
from sqlalchemy import select
from sqlalchemy.orm import Session

from helpdesk.models import CareTask, Ticket
from helpdesk.tickets import ACTIVE_STATUSES, open_ticket, sla_hours
from jobs.context import JobContext
from jobs.errors import TaskError, split_reference
from jobs.tasks import handler

CHANNELS = ("phone", "sms", "email")


def _subject(task: CareTask) -> str:
    return f"Follow-up could not be completed (task {task.id})"


def open_failure_ticket(session: Session, app: Flask, task: CareTask) -> None:
    """One ticket per failed follow-up: a retry or a change of channel that fails again
    adds nothing while the first ticket is still open (each retry used to open another
    identical high-priority ticket)."""
    already = session.scalar(
        select(Ticket.id).where(
            Ticket.registration_id == task.registration_id,
            Ticket.source == "job",
            Ticket.subject == _subject(task),
            Ticket.status.in_(ACTIVE_STATUSES),
        )
    )
    if already is not None:
        return
    open_ticket(
        session,
        registration_id=task.registration_id,
        patient_ref=task.patient_ref,
        subject=_subject(task),
        description=(
            f"Reason for the follow-up: {task.payload.get('reason', '')}\n"
            f"Last error: {task.last_error or 'unknown'}"
        ),
        category="scheduling",
        priority="high",
        assignee=task.assignee,
        source="job",
        sla=sla_hours(app.config),
    )


@handler("follow-up", on_final_failure=open_failure_ticket)
def follow_up(task: CareTask, ctx: JobContext) -> None:
    channel = str(task.payload.get("channel") or "phone")
    if channel not in CHANNELS:
        raise TaskError(f"unknown follow-up channel {channel!r}")
    who = task.assignee or task.payload.get("group") or "the team"
    if channel != "phone":
        if not task.patient_ref:
            raise TaskError("a follow-up message needs a patient")
        rtype, rid = split_reference(task.patient_ref)
        patient = ctx.fhir().read(rtype, rid)
        sent = ctx.send(
            patient=patient,
            channel=channel,
            template="follow-up",
            language=task.payload.get("language"),
            params={"reason": task.payload.get("reason") or ""},
        )
        task.fhir_refs = {**task.fhir_refs, "message": sent.message_id}
        task.status_note = f"{sent.channel} sent to {sent.to_masked}; on {who}'s work list."
    else:
        task.status_note = f"Call the patient: on {who}'s work list."
    # The job's part is done; the person on the work list finishes the task.
    task.status = "waiting"
