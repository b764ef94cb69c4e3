"""The periodic referral check: done once the patient is booked with the target, flagged
overdue when nothing is booked in time."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import update

from helpdesk.db import get_store
from helpdesk.models import CareTask
from helpdesk.timeutil import utcnow
from jobs.referral import check_referrals
from tests.jobs.conftest import load_task, new_task, register_backend, run_burst


def _referral(app, reg_id: int, practitioner: str) -> int:  # type: ignore[no-untyped-def]
    return new_task(
        app,
        registration_id=reg_id,
        kind="referral",
        patient_ref="Patient/pat-001",
        payload={"reason": "follow-up with specialist", "target": {"practitioner": practitioner}},
    )


def test_referral_is_done_when_an_appointment_with_the_target_is_booked(job_app, sandbox) -> None:
    reg_id = register_backend(job_app, sandbox)
    # The fixtures book pat-001 with Dr. Okafor today and next month.
    task_id = _referral(job_app, reg_id, "Practitioner/prac-clinician-okafor")
    run_burst(job_app)
    assert load_task(job_app, task_id).status == "waiting"
    counts = check_referrals(job_app)
    assert counts["scheduled"] == 1 and counts["errors"] == 0
    task = load_task(job_app, task_id)
    assert task.status == "done"
    assert task.fhir_refs["Appointment"].startswith("Appointment/")


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
