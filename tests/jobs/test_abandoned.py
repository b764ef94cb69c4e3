"""A dead worker's task is recovered by RQ's own abandoned-job handling: another worker's
registry clean-up finds the job's heartbeat lapsed and calls its failure callback, which
records the abandoned attempt and queues the task again, with no sweep in between."""

from __future__ import annotations

import os
import signal

import pytest
import redis
from rq import Worker
from rq.job import Job

from helpdesk.db import get_store
from tests.jobs.conftest import load_task, register_backend, service_requests, wait_for, worker
from tests.jobs.test_faults import _attempts, _children, _referral


@pytest.fixture
def job_app(job_app_each_store):  # type: ignore[no-untyped-def]
    """On SQLite and on PostgreSQL."""
    return job_app_each_store


def test_a_sigkilled_workers_task_runs_again_on_another_worker_without_a_sweep(
    job_app, sandbox, tmp_path
) -> None:
    reg_id = register_backend(job_app, sandbox)
    conn = redis.Redis.from_url(job_app.config["REDIS_URL"])
    with (
        worker(job_app, tmp_path / "w1.log", name="w1") as w1,
        worker(job_app, tmp_path / "w2.log", name="w2") as w2,
    ):
        wait_for(lambda: Worker.count(connection=conn) == 2, what="both workers")
        sandbox.set_knobs(latency_ms=1500)
        before = sandbox.stats()["fhir_requests"]
        task_id = _referral(job_app, reg_id)
        wait_for(lambda: load_task(job_app, task_id).status == "running", what="job start")
        wait_for(lambda: sandbox.stats()["fhir_requests"] > before, what="a request in flight")
        running_on = Job.fetch(load_task(job_app, task_id).job_id, connection=conn).worker_name
        doomed, survivor = (w1, w2) if running_on == "w1" else (w2, w1)
        for pid in [*_children(doomed.pid), doomed.pid]:
            os.kill(pid, signal.SIGKILL)
        doomed.wait()
        sandbox.set_knobs(latency_ms=0)
        wait_for(
            lambda: load_task(job_app, task_id).status == "waiting",
            timeout=45,
            what="the task on the surviving worker",
        )
        assert survivor.poll() is None
    conn.close()
    task = load_task(job_app, task_id)
    assert task.attempts == 2
    assert [a.outcome for a in _attempts(job_app, task_id)] == ["abandoned", "done"]
    assert service_requests(sandbox, task_id)["total"] == 1


def test_an_abandoned_task_moves_its_patients_change_stamp_not_everyones(  # type: ignore[no-untyped-def]
    make_app, store_url: str, monkeypatch
) -> None:
    """abandon() is a compare-and-set UPDATE of one task: its commit moves that task's
    patient's stamp only (it moved the stamp of everyone, so every cached sidebar of every
    patient was rebuilt after a worker died)."""
    from helpdesk import stamps
    from helpdesk.models import CareTask, TaskAttempt
    from helpdesk.timeutil import utcnow
    from jobs.outbox import abandon
    from tests.survey.conftest import add_registration

    app = make_app(DATABASE_URL=store_url)
    reg_id = add_registration(app, "https://ehr.example/fhir/")
    with get_store(app).session() as session:
        task = CareTask(
            registration_id=reg_id,
            patient_ref="Patient/p1",
            kind="referral",
            status="running",
            attempts=1,
            job_id="task-1-a1",
        )
        session.add(task)
        session.flush()
        session.add(TaskAttempt(task_id=task.id, attempt=1, job_id="task-1-a1"))
        task_id = task.id
    renewed: list[set[str]] = []
    monkeypatch.setattr(stamps, "renew", lambda _conn, keys: renewed.append(set(keys)))
    with app.app_context(), get_store(app).session() as session:
        task = session.get(CareTask, task_id)
        assert task is not None
        assert abandon(session, app, task, utcnow()) == "queued"
    assert renewed == [{stamps.key(reg_id, "Patient/p1")}]
