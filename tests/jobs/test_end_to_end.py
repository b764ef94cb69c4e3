"""A follow-up, a referral and a reminder, each end to end: row -> RQ -> a real worker
process -> the sandbox EHR over HTTP -> the row and the outbox."""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

import requests
from sqlalchemy import select

from helpdesk.crypto import get_vault
from helpdesk.db import get_store
from helpdesk.models import CareTask, OutboundMessage, TaskAttempt
from jobs.referral import IDENTIFIER_SYSTEM
from jobs.reminders import sweep_registration
from tests.jobs.conftest import load_task, new_task, register_backend, run_burst, sandbox_token


def _messages(app, task_id):  # type: ignore[no-untyped-def]
    vault = get_vault(app)
    with get_store(app).session() as session:
        rows = session.scalars(select(OutboundMessage).where(OutboundMessage.task_id == task_id))
        return [
            (m.channel, m.language, vault.decrypt(m.to_enc), vault.decrypt(m.body_enc))
            for m in rows
        ]


def test_sms_follow_up_goes_on_the_work_list_and_texts_the_patient(job_app, sandbox) -> None:
    reg_id = register_backend(job_app, sandbox)
    task_id = new_task(
        job_app,
        registration_id=reg_id,
        kind="follow-up",
        patient_ref="Patient/pat-002",
        payload={"reason": "resultados de laboratorio", "channel": "sms"},
        assignee="Practitioner/prac-clinician-lee",
    )
    run_burst(job_app)
    task = load_task(job_app, task_id)
    assert task.status == "waiting", task.last_error
    assert task.attempts == 1
    assert "Practitioner/prac-clinician-lee" in (task.status_note or "")
    [(channel, language, to, body)] = _messages(job_app, task_id)
    # pat-002 prefers Spanish and has a mobile phone ranked first.
    assert channel == "sms" and language == "es"
    # E.164 (PHONE_REGION), whatever way the EHR wrote the number ("+1 312-555-0120").
    assert to == "+13125550120"
    assert "resultados de laboratorio" in body and body.startswith("Hola ")
    with get_store(job_app).session() as session:
        attempts = session.scalars(select(TaskAttempt).where(TaskAttempt.task_id == task_id)).all()
        assert [(a.attempt, a.outcome) for a in attempts] == [(1, "done")]


def test_referral_writes_one_service_request_found_by_identifier(job_app, sandbox) -> None:
    reg_id = register_backend(job_app, sandbox)
    task_id = new_task(
        job_app,
        registration_id=reg_id,
        kind="referral",
        patient_ref="Patient/pat-001",
        payload={
            "reason": "knee pain",
            "urgency": "urgent",
            "target": {
                "specialty": "Orthopedics",
                "practitioner": "Practitioner/prac-clinician-lee",
            },
        },
    )
    run_burst(job_app)
    task = load_task(job_app, task_id)
    assert task.status == "waiting", task.last_error
    sr_ref = task.fhir_refs["ServiceRequest"]
    found = requests.get(
        f"{sandbox.fhir_base}/ServiceRequest",
        params={"identifier": f"{IDENTIFIER_SYSTEM}|task-{task_id}"},
        headers={"Authorization": f"Bearer {sandbox_token(sandbox)}"},
        timeout=10,
    ).json()
    assert found["total"] == 1
    resource = found["entry"][0]["resource"]
    assert f"ServiceRequest/{resource['id']}" == sr_ref
    assert resource["subject"]["reference"] == "Patient/pat-001"
    assert resource["priority"] == "urgent"


def test_reminder_sweep_queues_and_sends_one_reminder_per_appointment(job_app, sandbox) -> None:
    reg_id = register_backend(job_app, sandbox)
    # Far ahead of the fixture population's own appointments.
    day = dt.date.today() + dt.timedelta(days=400)
    sandbox.generate_appointments(day.isoformat(), 3)
    # 06:00 at the clinic (Chicago), an hour before the first slot: the whole day
    # (07:00-19:15) is within 24 h, so each visit gets its 24 h reminder now.
    now = dt.datetime.combine(day, dt.time(6, 0), tzinfo=ZoneInfo("America/Chicago"))
    with job_app.app_context():
        first = sweep_registration(job_app, reg_id, now=now)
    assert first.queued == 3 and first.per_offset[24] == 3
    run_burst(job_app)
    with get_store(job_app).session() as session:
        tasks = session.scalars(select(CareTask).where(CareTask.kind == "reminder")).all()
        assert len(tasks) == 3
        assert {t.status for t in tasks} == {"done"}, [t.last_error for t in tasks]
        sent = [t for t in tasks if t.fhir_refs.get("reminder_sent")]
        not_sent = [t for t in tasks if not t.fhir_refs.get("reminder_sent")]
        assert all("Not sent" in (t.status_note or "") for t in not_sent)
        messages = session.scalars(select(OutboundMessage)).all()
        assert len(messages) == len(sent)
    with job_app.app_context():
        again = sweep_registration(job_app, reg_id, now=now)
    assert again.seen == 3 and again.queued == 0


def test_reminder_for_a_start_time_without_timezone_is_read_in_the_clinic_zone(
    job_app, sandbox
) -> None:
    # Real EHRs send `2026-11-27T14:00:00` with no offset; the job must not crash on it.
    # The fixture's naive appointment is today at 14:00 (clinic time): at 06:00 it is
    # still ahead, so the reminder goes out.
    reg_id = register_backend(job_app, sandbox)
    task_id = new_task(
        job_app,
        registration_id=reg_id,
        kind="reminder",
        patient_ref="Patient/pat-025",
        payload={"appointment_ref": "Appointment/appt-messy-notz", "hours_before": 24},
    )
    chicago = ZoneInfo("America/Chicago")
    # The sandbox's "today" is the clinic's (Chicago) date, not the machine's UTC date.
    today = dt.datetime.now(chicago).date()
    early = dt.datetime.combine(today, dt.time(6, 0), chicago)
    job_app.config["VIEWER_TIMEZONE"] = "America/Chicago"
    from jobs.context import JobContext
    from jobs.reminders import reminder

    with job_app.app_context(), get_store(job_app).session() as session:
        task = session.get(CareTask, task_id)
        reminder(task, JobContext(app=job_app, session=session, task=task, now=early))
        assert task.fhir_refs.get("reminder_sent") is True, task.status_note
    late = early.replace(hour=15)
    with job_app.app_context(), get_store(job_app).session() as session:
        task = session.get(CareTask, task_id)
        reminder(task, JobContext(app=job_app, session=session, task=task, now=late))
        assert task.status_note == "Not sent: the appointment has started."


def test_a_worker_fetches_discovery_and_a_backend_token_once_for_many_jobs(
    job_app, sandbox
) -> None:
    reg_id = register_backend(job_app, sandbox)
    ids = [
        new_task(
            job_app,
            registration_id=reg_id,
            kind="referral",
            patient_ref=f"Patient/pat-00{n}",
            payload={"reason": "knee pain", "target": {"specialty": "Orthopedics"}},
        )
        for n in (1, 2, 3)
    ]
    sandbox.clear_requests()
    before = sandbox.stats()["token_requests"]["client_credentials"]
    run_burst(job_app)
    assert {load_task(job_app, i).status for i in ids} == {"waiting"}
    # The worker runs its jobs in one process: its discovery and backend-token caches
    # serve every job, so three jobs cost one token and one discovery.
    assert sandbox.stats()["token_requests"]["client_credentials"] - before == 1
    discovery = [r for r in sandbox.requests() if r["path"].endswith("smart-configuration")]
    assert len(discovery) == 1


def test_jobs_on_postgresql_share_the_workers_pooled_connection_cleanly(
    make_app, pg_url, sandbox
) -> None:
    """Six jobs one after another on the worker's pooled PostgreSQL connection: each
    session ends cleanly, so no job trips over the last one's prepared statements."""
    from tests.jobs.conftest import JOB_CONFIG, SECRET

    app = make_app(DATABASE_URL=pg_url, SECRET_KEY=SECRET, **JOB_CONFIG)
    reg_id = register_backend(app, sandbox)
    ids = [
        new_task(
            app,
            registration_id=reg_id,
            kind="referral",
            patient_ref=f"Patient/pat-00{n}",
            payload={"reason": "knee pain", "target": {"specialty": "Orthopedics"}},
        )
        for n in range(1, 7)
    ]
    result = run_burst(app)
    assert "already exists" not in result.stdout + result.stderr
    assert {load_task(app, i).status for i in ids} == {"waiting"}
