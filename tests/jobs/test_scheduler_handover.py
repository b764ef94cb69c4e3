"""Scheduled work after the worker holding RQ's scheduler lock dies (issue 12 §9)."""

from __future__ import annotations

import datetime as dt
import os
import signal
import time

import redis
from rq import Worker
from rq.scheduler import RQScheduler

from tests.jobs.conftest import load_task, new_task, register_backend, wait_for, worker
from tests.jobs.test_faults import _children

LOCK = RQScheduler.get_locking_key("default")


def _holder_pid(conn: redis.Redis) -> int | None:
    """The pid of the scheduler process holding the lock of the default queue."""
    name = conn.get(LOCK)
    if name is None:
        return None
    try:
        return RQScheduler.fetch(name.decode(), conn).pid
    except Exception:  # noqa: BLE001 - registering its birth a moment after taking the lock
        return None


def test_a_due_follow_up_runs_within_60_s_after_the_scheduler_holder_is_sigkilled(
    job_app, sandbox, tmp_path
) -> None:
    reg_id = register_backend(job_app, sandbox)
    conn = redis.Redis.from_url(job_app.config["REDIS_URL"])
    with worker(job_app, tmp_path / "first.log") as first:
        holder = wait_for(lambda: _holder_pid(conn), what="the first worker's scheduler")
        assert holder in _children(first.pid)
        with worker(job_app, tmp_path / "second.log") as second:
            wait_for(lambda: Worker.count(connection=conn) == 2, what="the second worker")
            task_id = new_task(
                job_app,
                registration_id=reg_id,
                kind="follow-up",
                patient_ref="Patient/pat-001",
                payload={"reason": "call back", "channel": "phone"},
                due_at=dt.datetime.now(dt.UTC) + dt.timedelta(seconds=3),
            )
            assert load_task(job_app, task_id).status == "scheduled"
            # As a lost machine or the OOM killer would: the worker and its scheduler.
            for pid in [*_children(first.pid), first.pid]:
                os.kill(pid, signal.SIGKILL)
            first.wait()
            killed = time.monotonic()
            wait_for(
                lambda: load_task(job_app, task_id).status == "waiting",
                timeout=60,
                what="the due follow-up on the second worker",
            )
            took = time.monotonic() - killed
            # The second worker's scheduler has the lock now.
            assert _holder_pid(conn) in _children(second.pid)
    conn.close()
    assert took < 60, took
