"""Fault tests: killed workers, a flushed Redis, 503/429/400 from the EHR, double runs."""

from __future__ import annotations

import os
import signal

import pytest
import redis
from sqlalchemy import select

from helpdesk.db import get_store
from helpdesk.models import TaskAttempt
from jobs.outbox import sweep
from tests.jobs.conftest import (
    load_task,
    new_task,
    register_backend,
    run_burst,
    service_requests,
    wait_for,
    worker,
)


@pytest.fixture
def job_app(job_app_each_store):  # type: ignore[no-untyped-def]
    """Every fault here on SQLite and on PostgreSQL."""
    return job_app_each_store


REFERRAL = {
    "reason": "knee pain",
    "urgency": "routine",
    "target": {"specialty": "Orthopedics", "practitioner": "Practitioner/prac-clinician-lee"},
}


def _referral(app, reg_id: int) -> int:  # type: ignore[no-untyped-def]
    return new_task(
        app,
        registration_id=reg_id,
        kind="referral",
        patient_ref="Patient/pat-001",
        payload=dict(REFERRAL),
    )


def _children(pid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(entry))
    return out


def _attempts(app, task_id: int) -> list[TaskAttempt]:  # type: ignore[no-untyped-def]
    with get_store(app).session() as session:
        rows = session.scalars(
            select(TaskAttempt).where(TaskAttempt.task_id == task_id).order_by(TaskAttempt.id)
        ).all()
        for row in rows:
            session.expunge(row)
        return list(rows)


def test_503_then_200_retries_and_succeeds(job_app, sandbox, tmp_path) -> None:
    reg_id = register_backend(job_app, sandbox)
    sandbox.set_knobs(fail_next=[{"status": 503, "path_contains": "ServiceRequest"}])
    task_id = _referral(job_app, reg_id)
    with worker(job_app, tmp_path / "worker.log"):
        wait_for(lambda: load_task(job_app, task_id).status == "waiting", what="retry success")
    task = load_task(job_app, task_id)
    assert task.attempts == 2
    assert [a.outcome for a in _attempts(job_app, task_id)] == ["retry", "done"]
    assert service_requests(sandbox, task_id)["total"] == 1


def test_429_with_retry_after_is_not_retried_before_it(job_app, sandbox, tmp_path) -> None:
    reg_id = register_backend(job_app, sandbox)
    sandbox.set_knobs(
        fail_next=[{"status": 429, "retry_after": 2, "path_contains": "ServiceRequest"}]
    )
    task_id = _referral(job_app, reg_id)
    with worker(job_app, tmp_path / "worker.log"):
        wait_for(lambda: load_task(job_app, task_id).status == "waiting", what="retry success")
    first, second = _attempts(job_app, task_id)
    # The EHR's words are kept, quoted and attributed to it (smart_launch.errors).
    assert first.outcome == "retry" and first.error == (
        'search ServiceRequest failed with HTTP 429. The EHR said: "scripted failure '
        '(sandbox fail_next)"'
    )
    assert first.finished_at is not None
    # RETRY_BASE_SECONDS is 1 in these tests: the 2 s come from Retry-After.
    assert (second.started_at - first.finished_at).total_seconds() >= 2.0


def test_400_fails_the_task_with_the_operation_outcome_text(job_app, sandbox) -> None:
    reg_id = register_backend(job_app, sandbox)
    sandbox.set_knobs(
        fail_next=[
            {
                "status": 400,
                "diagnostics": "ServiceRequest.performer: unknown practitioner",
                "path_contains": "ServiceRequest",
            }
        ]
    )
    task_id = _referral(job_app, reg_id)
    run_burst(job_app)
    task = load_task(job_app, task_id)
    assert task.status == "failed"
    assert task.attempts == 1
    assert task.last_error == (
        'search ServiceRequest failed with HTTP 400. The EHR said: "ServiceRequest.performer: '
        'unknown practitioner"'
    )
    assert [a.outcome for a in _attempts(job_app, task_id)] == ["failed"]


def test_referral_job_run_twice_makes_exactly_one_service_request(job_app, sandbox) -> None:
    from helpdesk.models import CareTask
    from jobs.outbox import dispatch

    reg_id = register_backend(job_app, sandbox)
    task_id = _referral(job_app, reg_id)
    run_burst(job_app)
    assert load_task(job_app, task_id).status == "waiting"
    # Run it again as a retry would: the row back to queued, its stored refs forgotten,
    # so the job must find the ServiceRequest by identifier instead of creating one.
    with get_store(job_app).session() as session:
        task = session.get(CareTask, task_id)
        task.status = "queued"
        task.fhir_refs = {}
    dispatch([task_id], app=job_app)
    run_burst(job_app)
    task = load_task(job_app, task_id)
    assert task.status == "waiting" and task.attempts == 2
    found = service_requests(sandbox, task_id)
    assert found["total"] == 1
    assert (
        task.fhir_refs["ServiceRequest"] == f"ServiceRequest/{found['entry'][0]['resource']['id']}"
    )


def test_flushall_between_enqueue_and_run_is_repaired_by_the_sweeper(job_app, sandbox) -> None:
    reg_id = register_backend(job_app, sandbox)
    task_id = _referral(job_app, reg_id)
    conn = redis.Redis.from_url(job_app.config["REDIS_URL"])
    conn.flushdb()  # the test's database only (FLUSHALL would hit other engineers' dbs)
    conn.close()
    run_burst(job_app)
    assert load_task(job_app, task_id).status == "queued"  # nothing ran: the job is gone
    result = sweep(job_app)
    assert result.requeued == [task_id]
    run_burst(job_app)
    task = load_task(job_app, task_id)
    assert task.status == "waiting" and task.attempts == 1
    assert service_requests(sandbox, task_id)["total"] == 1


def test_sigkilled_worker_mid_job_completes_once_after_restart(job_app, sandbox, tmp_path) -> None:
    reg_id = register_backend(job_app, sandbox)
    # Every FHIR request takes 1.5 s, so the worker is surely mid-job when it is killed.
    sandbox.set_knobs(latency_ms=1500)
    before = sandbox.stats()["fhir_requests"]
    task_id = _referral(job_app, reg_id)
    with worker(job_app, tmp_path / "worker1.log") as proc:
        wait_for(lambda: load_task(job_app, task_id).status == "running", what="job start")
        # The job's first request has reached the EHR (counted on arrival, before the
        # 1.5 s latency): the worker is mid-request.
        wait_for(lambda: sandbox.stats()["fhir_requests"] > before, what="a request in flight")
        # RQ's work horse runs in a session of its own: kill it and the worker together,
        # as a lost machine or the OOM killer would.
        for pid in [*_children(proc.pid), proc.pid]:
            os.kill(pid, signal.SIGKILL)
        proc.wait()
    assert load_task(job_app, task_id).status == "running"
    sandbox.set_knobs(latency_ms=0)
    # The job's heartbeat (TASK_LEASE_SECONDS, 2 s in tests) lapses with nobody to renew
    # it; until then the sweeper leaves the running task alone.
    result = wait_for(
        lambda: (found := sweep(job_app)).dead and found, what="the sweeper to see the dead worker"
    )
    assert result.dead == [task_id] and result.requeued == [task_id]
    with worker(job_app, tmp_path / "worker2.log"):
        wait_for(lambda: load_task(job_app, task_id).status == "waiting", what="completion")
    task = load_task(job_app, task_id)
    assert task.attempts == 2
    assert [a.outcome for a in _attempts(job_app, task_id)] == ["abandoned", "done"]
    assert service_requests(sandbox, task_id)["total"] == 1
