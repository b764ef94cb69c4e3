"""Referrals against the sandbox: written once with the Task reference kept, scheduled only
by an appointment that really schedules them (booked from the ServiceRequest, or booked
after the referral with the referred target), closed in the EHR where allowed, flagged
overdue when nothing is booked in time."""

from __future__ import annotations

import datetime as dt
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import update

from helpdesk.db import get_store
from helpdesk.models import CareTask
from helpdesk.timeutil import utcnow
from jobs.errors import TaskError
from jobs.referral import check_referrals, close_referral
from tests.jobs.conftest import load_task, new_task, register_backend, run_burst

# What `caredesk ehr check` stores for an EHR that takes ServiceRequest and Task creates.
WRITES = {
    "lines": [
        {"name": "ServiceRequest create", "status": "supported"},
        {"name": "Task create", "status": "supported"},
    ]
}
OKAFOR = "Practitioner/prac-clinician-okafor"


def _referral(app, reg_id: int, practitioner: str = OKAFOR, **target: str) -> int:  # type: ignore[no-untyped-def]
    return new_task(
        app,
        registration_id=reg_id,
        kind="referral",
        patient_ref="Patient/pat-001",
        payload={
            "reason": "follow-up with specialist",
            "target": {"practitioner": practitioner, **target} if practitioner else target,
        },
    )


def _appointment(sb, *, created: dt.datetime | None, **extra: Any) -> str:  # type: ignore[no-untyped-def]
    """An appointment booked by the EHR's own staff, a week ahead."""
    start = utcnow() + timedelta(days=7)
    resource: dict[str, Any] = {
        "resourceType": "Appointment",
        "status": "booked",
        "start": start.isoformat(),
        "end": (start + timedelta(minutes=30)).isoformat(),
        "participant": [
            {"actor": {"reference": "Patient/pat-001"}, "status": "accepted"},
            {"actor": {"reference": OKAFOR}, "status": "accepted"},
        ],
        **extra,
    }
    if created is not None:
        resource["created"] = created.isoformat()
    return f"Appointment/{sb.put_resource(resource)['id']}"


def test_the_first_run_keeps_the_task_reference_and_the_written_flag(job_app, sandbox) -> None:
    reg_id = register_backend(job_app, sandbox, capabilities=WRITES)
    task_id = _referral(job_app, reg_id)
    run_burst(job_app)
    task = load_task(job_app, task_id)
    assert task.status == "waiting", task.last_error
    assert task.fhir_refs["written"] is True
    assert task.fhir_refs["ServiceRequest"].startswith("ServiceRequest/")
    assert task.fhir_refs["Task"].startswith("Task/")
    stored = sandbox.resource("Task", task.fhir_refs["Task"].split("/")[1])
    assert stored["focus"]["reference"] == task.fhir_refs["ServiceRequest"]
    assert task.fhir_refs["Task"] in (task.status_note or "")


def test_an_appointment_booked_before_the_referral_does_not_schedule_it(job_app, sandbox) -> None:
    reg_id = register_backend(job_app, sandbox, capabilities=WRITES)
    # The fixtures already book pat-001 with Dr. Okafor next month, made weeks ago; and
    # here is one more, made yesterday, for a date after the referral.
    _appointment(sandbox, created=utcnow() - timedelta(days=1))
    task_id = _referral(job_app, reg_id)
    run_burst(job_app)
    counts = check_referrals(job_app)
    assert counts == {"checked": 1, "scheduled": 0, "overdue": 0, "errors": 0}
    task = load_task(job_app, task_id)
    assert task.status == "waiting" and "Appointment" not in task.fhir_refs
    sr_id = task.fhir_refs["ServiceRequest"].split("/")[1]
    assert sandbox.resource("ServiceRequest", sr_id)["status"] == "active"


def test_an_appointment_based_on_the_service_request_schedules_it_and_closes_it_in_the_ehr(
    job_app, sandbox
) -> None:
    reg_id = register_backend(job_app, sandbox, capabilities=WRITES)
    # Referred to a practitioner; the EHR's scheduler books someone else from the order,
    # and records no booking time at all: basedOn is enough.
    task_id = _referral(job_app, reg_id, practitioner="Practitioner/prac-scheduler-ortiz")
    run_burst(job_app)
    task = load_task(job_app, task_id)
    sr_ref, fhir_task = task.fhir_refs["ServiceRequest"], task.fhir_refs["Task"]
    appointment = _appointment(sandbox, created=None, basedOn=[{"reference": sr_ref}])
    counts = check_referrals(job_app)
    assert counts["scheduled"] == 1 and counts["errors"] == 0
    task = load_task(job_app, task_id)
    assert task.status == "done"
    assert task.fhir_refs["Appointment"] == appointment
    assert task.fhir_refs["scheduled_by"] == "based-on"
    # What the EHR holds now, and the row says so.
    assert sandbox.resource("ServiceRequest", sr_ref.split("/")[1])["status"] == "completed"
    assert sandbox.resource("Task", fhir_task.split("/")[1])["status"] == "completed"
    assert task.fhir_refs["ehr_status"] == {sr_ref: "completed", fhir_task: "completed"}
    assert f"{sr_ref} set to completed" in (task.status_note or "")
    assert f"{fhir_task} set to completed" in (task.status_note or "")
    # Done once: the next check has nothing to look at.
    assert check_referrals(job_app)["checked"] == 0


def test_an_appointment_booked_after_the_referral_with_the_target_schedules_it(
    job_app, sandbox
) -> None:
    reg_id = register_backend(job_app, sandbox, capabilities=WRITES)
    task_id = _referral(job_app, reg_id)
    run_burst(job_app)
    booked = _appointment(sandbox, created=utcnow() + timedelta(minutes=1))
    assert check_referrals(job_app)["scheduled"] == 1
    task = load_task(job_app, task_id)
    assert task.status == "done" and task.fhir_refs["Appointment"] == booked
    assert task.fhir_refs["scheduled_by"] == "booked-after"
    assert "Scheduled: " + booked in (task.status_note or "")


def test_a_read_only_registration_is_scheduled_without_writing_to_the_ehr(job_app, sandbox) -> None:
    reg_id = register_backend(job_app, sandbox, allow_writes=False)
    task_id = _referral(job_app, reg_id)
    run_burst(job_app)
    assert load_task(job_app, task_id).fhir_refs == {"written": False}
    _appointment(sandbox, created=utcnow() + timedelta(minutes=1))
    assert check_referrals(job_app)["scheduled"] == 1
    task = load_task(job_app, task_id)
    assert task.status == "done" and "ehr_status" not in task.fhir_refs
    assert "nothing there to update" in (task.status_note or "")


def test_an_ehr_that_refuses_the_update_leaves_the_referral_done_and_says_so(
    job_app, sandbox
) -> None:
    reg_id = register_backend(job_app, sandbox, capabilities=WRITES)
    task_id = _referral(job_app, reg_id)
    run_burst(job_app)
    sr_ref = load_task(job_app, task_id).fhir_refs["ServiceRequest"]
    # The EHR stops taking ServiceRequest writes (its updates go with its creates).
    sandbox.set_knobs(disabled=["service-request-create"])
    _appointment(sandbox, created=utcnow() + timedelta(minutes=1))
    assert check_referrals(job_app)["scheduled"] == 1
    task = load_task(job_app, task_id)
    assert task.status == "done"
    assert task.fhir_refs["ehr_status"][sr_ref] == "not updated (HTTP 405)"
    assert f"{sr_ref} not updated" in (task.status_note or "")
    assert sandbox.resource("ServiceRequest", sr_ref.split("/")[1])["status"] == "active"


def test_closing_a_referral_by_hand_revokes_it_in_the_ehr(job_app, sandbox) -> None:
    reg_id = register_backend(job_app, sandbox, capabilities=WRITES)
    task_id = _referral(job_app, reg_id)
    run_burst(job_app)
    refs = load_task(job_app, task_id).fhir_refs
    closed = close_referral(job_app, task_id, outcome="cancelled", note="patient declined")
    assert closed.status == "cancelled"
    assert sandbox.resource("ServiceRequest", refs["ServiceRequest"].split("/")[1])["status"] == (
        "revoked"
    )
    assert sandbox.resource("Task", refs["Task"].split("/")[1])["status"] == "cancelled"
    assert (closed.status_note or "").startswith("Cancelled by hand: patient declined.")
    with pytest.raises(TaskError, match="not an open referral"):
        close_referral(job_app, task_id, outcome="completed")


def test_referral_without_an_appointment_in_time_is_flagged_overdue_once(job_app, sandbox) -> None:
    reg_id = register_backend(job_app, sandbox)
    task_id = _referral(job_app, reg_id, "Practitioner/prac-scheduler-ortiz")
    run_burst(job_app)
    with get_store(job_app).session() as session:
        session.execute(
            update(CareTask)
            .where(CareTask.id == task_id)
            .values(created_at=utcnow() - timedelta(days=30))
        )
    first = check_referrals(job_app)
    second = check_referrals(job_app)
    assert (first["overdue"], second["overdue"]) == (1, 0)
    task = load_task(job_app, task_id)
    assert task.status == "waiting" and task.payload["overdue"] is True
    assert "Overdue" in (task.status_note or "")


def test_close_referral_command_closes_it_in_the_ehr(job_app, sandbox, runner_env) -> None:
    reg_id = register_backend(job_app, sandbox, capabilities=WRITES)
    task_id = _referral(job_app, reg_id)
    run_burst(job_app)
    sr_ref = load_task(job_app, task_id).fhir_refs["ServiceRequest"]
    out = runner_env(["jobs", "close-referral", str(task_id), "--note", "seen elsewhere"])
    assert f"referral {task_id}: done. Closed by hand: seen elsewhere." in out.stdout
    assert sandbox.resource("ServiceRequest", sr_ref.split("/")[1])["status"] == "completed"
    assert load_task(job_app, task_id).fhir_refs["ehr_status"][sr_ref] == "completed"
