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
