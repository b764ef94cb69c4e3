"""Task states the sidebar shows: needs-authorization, failed with a ticket, retried from
the CLI; an email follow-up through a real SMTP server; the status command."""

from __future__ import annotations

import json

from aiosmtpd.controller import Controller
from sqlalchemy import select

from helpdesk.db import get_store
from helpdesk.models import Ticket
from helpdesk.tickets import sla_due, sla_hours
from tests.jobs.conftest import load_task, new_task, register_backend, run_burst
from tests.jobs.test_outbound import _free_port, _Sink


def test_task_without_credentials_waits_visibly_for_authorization(job_app, sandbox) -> None:
    from helpdesk import registry
    from helpdesk.crypto import get_vault

    with job_app.app_context(), get_store(job_app).session() as session:
        reg = registry.upsert(
            session,
            get_vault(job_app),
            slug="nobackend",
            iss=sandbox.fhir_base,
            client_id="caredesk",
        )
        reg_id = reg.id
    task_id = new_task(
        job_app,
        registration_id=reg_id,
        kind="referral",
        patient_ref="Patient/pat-001",
        payload={"reason": "x", "target": {"specialty": "Cardiology"}},
    )
    run_burst(job_app)
    task = load_task(job_app, task_id)
    assert task.status == "needs-authorization"
    assert "backend-services" in (task.last_error or "")


def test_final_failure_of_a_follow_up_opens_a_ticket_and_cli_retry_requeues(
    job_app, sandbox, runner_env
) -> None:
    reg_id = register_backend(job_app, sandbox)
    # pat-005 has only a home phone: an SMS follow-up cannot be sent, a final failure.
    task_id = new_task(
        job_app,
        registration_id=reg_id,
        kind="follow-up",
        patient_ref="Patient/pat-005",
        payload={"reason": "billing question", "channel": "sms"},
        assignee="Practitioner/prac-scheduler-ortiz",
    )
    run_burst(job_app)
    task = load_task(job_app, task_id)
    assert task.status == "failed"
    assert "cannot be reached by sms" in (task.last_error or "")
    with get_store(job_app).session() as session:
        [ticket] = session.scalars(select(Ticket)).all()
        assert ticket.patient_ref == "Patient/pat-005" and "billing question" in ticket.description
        assert ticket.assignee == "Practitioner/prac-scheduler-ortiz"
        # A job-made ticket goes through the ticket service: it has its SLA due time,
        # so it sorts with the dated tickets and can become overdue (issue 11).
        assert ticket.priority == "high" and ticket.created_at is not None
        assert ticket.due_at == sla_due("scheduling", ticket.created_at, sla_hours(job_app.config))
    status = runner_env(["jobs", "status", "--json"])
    snap = json.loads(status.stdout)
    assert snap["by_state"] == {"failed": 1}
    assert snap["failures"][0]["task_id"] == task_id
    retried = runner_env(["jobs", "retry", "--failed"])
    assert f"re-queued 1 task(s): {task_id}" in retried.stdout
    assert load_task(job_app, task_id).status == "queued"


def test_email_follow_up_is_delivered_over_smtp(job_app, sandbox) -> None:
    sink = _Sink()
    port = _free_port()
    controller = Controller(sink, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        job_app.config.update(
            OUTBOUND_EMAIL="smtp",
            SMTP_HOST="127.0.0.1",
            SMTP_PORT=port,
            SMTP_FROM="desk@clinic.example",
        )
        reg_id = register_backend(job_app, sandbox)
        task_id = new_task(
            job_app,
            registration_id=reg_id,
            kind="follow-up",
            patient_ref="Patient/pat-004",
            payload={"reason": "your new prescription", "channel": "email"},
            assignee="Practitioner/prac-clinician-lee",
        )
        run_burst(job_app)
    finally:
        controller.stop()
    task = load_task(job_app, task_id)
    assert task.status == "waiting", task.last_error
    [raw] = sink.messages
    assert b"your new prescription" in raw and b"From: desk@clinic.example" in raw
