"""Retries are RQ's own: a job that hit a temporary EHR error returns an RQ ``Retry`` and
RQ schedules the same job again; the task row still counts the attempts."""

from __future__ import annotations

import redis
from rq.job import Job
from rq.results import Result

from tests.jobs.conftest import load_task, register_backend, wait_for, worker
from tests.jobs.test_faults import _attempts, _referral


def test_a_503_is_retried_by_rq_as_the_same_job(job_app, sandbox, tmp_path) -> None:
    reg_id = register_backend(job_app, sandbox)
    sandbox.set_knobs(fail_next=[{"status": 503, "path_contains": "ServiceRequest"}])
    task_id = _referral(job_app, reg_id)
    with worker(job_app, tmp_path / "worker.log"):
        wait_for(lambda: load_task(job_app, task_id).status == "waiting", what="retry success")
    first, second = _attempts(job_app, task_id)
    assert (first.outcome, second.outcome) == ("retry", "done")
    # One RQ job ran both attempts: RQ recorded a retried execution, then the success.
    assert first.job_id == second.job_id == load_task(job_app, task_id).job_id
    conn = redis.Redis.from_url(job_app.config["REDIS_URL"])
    try:
        job = Job.fetch(first.job_id, connection=conn)
        assert [r.type for r in job.results()] == [Result.Type.SUCCESSFUL, Result.Type.RETRIED]
        assert job.number_of_retries == 1
    finally:
        conn.close()
