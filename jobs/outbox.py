"""The outbox: a CareTask row is committed first (``helpdesk.tasks.new_task``), its RQ job
enqueued second (``dispatch``).

If the enqueue never happens (Redis down, the process died between the two) or the job
vanishes later (FLUSHALL, a SIGKILLed worker), ``sweep`` finds the row and enqueues it
again. Jobs carry the row id only; ``jobs.tasks.run_task`` refuses to run a row twice.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from contextvars import ContextVar
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from typing import Any, cast

import redis
from flask import Flask, current_app
from rq.callbacks import Callback
from rq.job import Job, JobStatus
from rq.rate_limit import RateLimit
from rq.registry import StartedJobRegistry
from sqlalchemy import Table, bindparam, select, update
from sqlalchemy.orm import Session

from helpdesk import stamps
from helpdesk.db import get_store
from helpdesk.models import CareTask, TaskAttempt
from helpdesk.tasks import job_id_for
from helpdesk.timeutil import utcnow
from jobs.queue import get_queue_state

log = logging.getLogger("caredesk.jobs")

OPEN_STATUSES = ("queued", "scheduled", "running")
# Job states in which RQ will still run the job (or is running it).
LIVE_JOB_STATES = {
    JobStatus.QUEUED,
    JobStatus.SCHEDULED,
    JobStatus.DEFERRED,
    JobStatus.STARTED,
    JobStatus.RATE_LIMITED,
}
RUN_TASK = "jobs.tasks.run_task"
JOB_FAILED = "jobs.tasks.job_failed"
JOB_TIMEOUT = 600


@dataclass(frozen=True)
class _Pending:
    task_id: int
    job_id: str
    queue: str
    registration_id: int
    due_at: datetime | None
    kind: str


def _enqueue(app: Flask, item: _Pending, now: datetime) -> None:
    state = get_queue_state(app)
    queue = state.queue(item.queue)
    options: dict[str, Any] = {
        "job_id": item.job_id,
        "job_timeout": JOB_TIMEOUT,
        "result_ttl": 3600,
        "failure_ttl": 7 * 86400,
        "description": f"{item.kind} task {item.task_id}",
        # RQ calls it when the job fails, and when its worker died (RQ's started-job
        # registry found the heartbeat lapsed: AbandonedJobError).
        "on_failure": Callback(JOB_FAILED),
    }
    if not state.embedded:
        # Per-EHR concurrency: at most N jobs of one registration queued or running;
        # the rest wait in RQ's rate-limit set, so other EHRs' jobs are not stuck
        # behind a slow one. (Not on the demo's fakeredis.)
        options["rate_limit"] = RateLimit(
            f"caredesk-ehr-{item.registration_id}", int(app.config["EHR_CONCURRENCY"])
        )
    if item.due_at is not None and item.due_at > now:
        # RQ's schedule keeps whole seconds (it truncates): round up, so a retry is never
        # sooner than the Retry-After it honours.
        due = item.due_at
        if due.microsecond:
            due = due.replace(microsecond=0) + timedelta(seconds=1)
        queue.enqueue_at(due, RUN_TASK, item.task_id, **options)
    else:
        queue.enqueue(RUN_TASK, item.task_id, **options)


def finish_attempt(
    session: Session, task: CareTask, outcome: str, error: str | None, now: datetime
) -> None:
    """Close the task's running attempt row with ``outcome`` (done, retry, failed,
    abandoned, ...). Core, not ORM-enabled: no attempt object is in the session to keep in
    step."""
    session.execute(
        FINISH_ATTEMPT,
        {
            "of_task": task.id,
            "of_attempt": task.attempts,
            "new_outcome": outcome,
            "new_error": error,
            "new_finished_at": now,
        },
    )


def dispatch(task_ids: Iterable[int], *, app: Flask | None = None) -> None:
    """Enqueue the tasks' jobs. Call only after the rows are committed.

    The job id is written on the row before the enqueue, so a worker that picks the job
    up at once finds it. Never raises for Redis trouble: the rows are safe in the store
    and the sweeper will enqueue them; a warning says so.
    """
    app = app or current_app._get_current_object()  # type: ignore[attr-defined]
    ids = list(task_ids)
    if not ids:
        return
    with get_store(app).session() as session:
        pending = prepare(session.scalars(select(CareTask).where(CareTask.id.in_(ids))), app=app)
    enqueue(pending, app=app)


def prepare(tasks: Iterable[CareTask], *, app: Flask) -> list[_Pending]:
    """Write each task's job id (and queue) on its row, in the caller's transaction;
    after the commit, ``enqueue`` the result. The same guarantees as ``dispatch``, one
    transaction fewer for a caller that has just made the rows (a survey answer)."""
    pending: list[_Pending] = []
    default_queue = str(app.config.get("TASK_QUEUE") or "default")
    for task in tasks:
        if task.status not in ("queued", "scheduled"):
            continue
        task.job_id = job_id_for(task.id, task.attempts + 1)
        task.queue = task.queue or default_queue
        pending.append(
            _Pending(task.id, task.job_id, task.queue, task.registration_id, task.due_at, task.kind)
        )
    return pending


_ATTEMPTS = cast(Table, TaskAttempt.__table__)
# Built once per process, not per job: building a statement (and its cache key) cost a
# job more than running it (issue 16). Every job binds its own values, under names unlike
# the columns' (SQLAlchemy keeps those for the SET clause).
FINISH_ATTEMPT = (
    update(_ATTEMPTS)
    .where(
        _ATTEMPTS.c.task_id == bindparam("of_task"),
        _ATTEMPTS.c.attempt == bindparam("of_attempt"),
        _ATTEMPTS.c.outcome == "running",
    )
    .values(
        outcome=bindparam("new_outcome"),
        error=bindparam("new_error"),
        finished_at=bindparam("new_finished_at", type_=_ATTEMPTS.c.finished_at.type),
    )
)


def pending_inserted(task_id: int, *, registration_id: int, kind: str, app: Flask) -> _Pending:
    """The job of a row the caller has just inserted with its job id
    (``helpdesk.tasks.insert_task``, ``helpdesk.surveys.record_answer``: queued, due now,
    first attempt, on the configured queue), to ``enqueue`` after the commit, without
    reading or writing the row again."""
    queue = str(app.config.get("TASK_QUEUE") or "default")
    return _Pending(task_id, job_id_for(task_id, 1), queue, registration_id, None, kind)


def enqueue(pending: Iterable[_Pending], *, app: Flask) -> None:
    """Enqueue prepared jobs (after the rows and their job ids are committed)."""
    now = utcnow()
    for item in pending:
        try:
            _enqueue(app, item, now)
        except redis.exceptions.RedisError as exc:
            log.warning(
                "task %s not enqueued (%s); the sweeper will enqueue it",
                item.task_id,
                type(exc).__name__,
            )


@dataclass
class SweepResult:
    checked: int = 0
    requeued: list[int] = field(default_factory=list)
    dead: list[int] = field(default_factory=list)
    failed: list[int] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _job_state(conn: redis.Redis, job_id: str | None) -> JobStatus | None:
    if not job_id:
        return None
    try:
        job = Job.fetch(job_id, connection=conn)
    except Exception:  # noqa: BLE001 - NoSuchJobError or an unreadable job: both mean gone
        return None
    return job.get_status(refresh=False)


def sweep(
    app: Flask, *, grace: timedelta | None = None, now: datetime | None = None, batch: int = 500
) -> SweepResult:
    """Re-enqueue open rows whose job is gone; recover running rows whose worker died.

    Whether a running job's worker is alive is RQ's to say: the worker renews the job's
    heartbeat in RQ's started-job registry while it runs (``jobs.worker``), and
    ``StartedJobRegistry.cleanup`` moves a job whose heartbeat lapsed (SIGKILL, OOM, a lost
    machine) to the failed registry as abandoned, calling the job's failure callback
    (``jobs.tasks.job_failed``), which records the abandoned attempt and queues the task
    again. RQ's workers do that clean-up too, every few seconds (``jobs.worker``); here it
    runs first, and what its callbacks recovered is counted in the result. Then, as a net
    for a callback that could not run (a clean-up by a process without the app, such as
    ``rq info``), a running row whose job is no longer started is taken for dead the same
    way: the attempt is marked ``abandoned`` and the task runs again, or fails when it has
    no attempts left.
    What RQ cannot do is kept here: it knows nothing of the row, its attempts, or a task
    whose job vanished altogether (FLUSHALL, an enqueue that never happened).
    """
    now = now or utcnow()
    if grace is None:
        grace = timedelta(seconds=int(app.config["TASK_SWEEP_GRACE_SECONDS"]))
    conn = get_queue_state(app).connection
    result = SweepResult()
    recovered: list[tuple[int, str]] = []
    token = RECOVERED.set(recovered)
    try:
        _cleanup_started(app)
    finally:
        RECOVERED.reset(token)
    for task_id, what in recovered:
        result.dead.append(task_id)
        (result.failed if what == "failed" else result.requeued).append(task_id)
    last_id = 0
    to_dispatch: list[int] = []
    store = get_store(app)
    while True:
        with store.session() as session:
            rows = list(
                session.scalars(
                    select(CareTask)
                    .where(
                        CareTask.status.in_(OPEN_STATUSES),
                        CareTask.id > last_id,
                        CareTask.updated_at <= now - grace,
                    )
                    .order_by(CareTask.id)
                    .limit(batch)
                )
            )
            if not rows:
                break
            last_id = rows[-1].id
            for task in rows:
                result.checked += 1
                state = _job_state(conn, task.job_id)
                if task.status == "running":
                    if state == JobStatus.STARTED:
                        continue
                    outcome = abandon(session, app, task, now)
                    if outcome is None:
                        continue  # it finished (or moved on) since we read it
                    result.dead.append(task.id)
                    if outcome == "failed":
                        result.failed.append(task.id)
                        continue
                elif state in LIVE_JOB_STATES:
                    continue
                to_dispatch.append(task.id)
                result.requeued.append(task.id)
    # Dispatch after the commit above, like every other enqueue.
    for start in range(0, len(to_dispatch), batch):
        dispatch(to_dispatch[start : start + batch], app=app)
    if result.requeued or result.dead:
        log.warning(
            "sweeper: %d re-enqueued, %d from dead workers", len(result.requeued), len(result.dead)
        )
    return result


ABANDONED = "the worker running this task stopped (killed or lost) before it finished"
# Set by the sweeper while RQ's clean-up runs the failure callbacks, so it can count what
# they recovered.
RECOVERED: ContextVar[list[tuple[int, str]] | None] = ContextVar("recovered", default=None)


def abandon(session: Session, app: Flask, task: CareTask, now: datetime) -> str | None:
    """The attempt in hand died with its worker: record it, and queue the task again (or
    fail it when no attempts are left). Returns the new status, or None when the row was
    no longer running that attempt (it finished meanwhile): a compare-and-set, so a task
    that just completed is never run again."""
    status = "failed" if task.attempts >= task.max_attempts else "queued"
    values: dict[str, Any] = {"status": status, "last_error": ABANDONED, "updated_at": now}
    if status == "failed":
        values["finished_at"] = now
    else:
        values["due_at"] = None
    changed = session.execute(
        update(CareTask)
        .where(
            CareTask.id == task.id,
            CareTask.status == "running",
            CareTask.attempts == task.attempts,
            CareTask.job_id == task.job_id if task.job_id else CareTask.job_id.is_(None),
        )
        .values(**values)
        # This task's patient's change stamp moves (noted below), not everyone's.
        .execution_options(synchronize_session=False, **{stamps.NOTED: True})
    ).rowcount  # type: ignore[attr-defined]
    if not changed:
        return None
    stamps.note(session, task)
    finish_attempt(session, task, "abandoned", ABANDONED, now)
    session.refresh(task)
    if status == "failed":
        from jobs.tasks import final_failure

        final_failure(session, app, task)
    return status


def _cleanup_started(app: Flask) -> None:
    """RQ's abandoned-job handling: jobs whose heartbeat lapsed leave the started registry
    for the failed one (their rate-limit slot is freed too)."""
    state = get_queue_state(app)
    for name in state.queue_names:
        try:
            StartedJobRegistry(name, connection=state.connection).cleanup()
        except redis.exceptions.RedisError as exc:
            log.warning("started-registry cleanup of %s failed: %s", name, type(exc).__name__)


def sweep_job() -> dict[str, Any]:
    """The cron entry point (runs inside the worker's app context)."""
    return sweep(current_app._get_current_object()).to_json()  # type: ignore[attr-defined]
