"""``run_task``: the only function RQ runs for CareTasks, and the handler registry.

    @handler("survey-writeback")
    def write_back(task: CareTask, ctx: JobContext) -> None: ...

A handler does one thing and writes the outcome on ``task``; it may set ``task.status``
(e.g. ``waiting``: on a work list, or tracking a referral) and ``task.status_note``;
otherwise the task is ``done`` when it returns. What it raises decides the rest:

- ``TemporaryFhirError``, ``TemporaryOutboundError``, ``TemporaryTaskError``, discovery
  or refresh trouble: the attempt is recorded and the next one scheduled (exponential
  backoff, never sooner than the server's Retry-After) by RQ's own ``Retry``: the job
  returns one, and RQ schedules the same job again;
- ``NeedsAuthorization``: the task waits, visibly, in ``needs-authorization``;
- ``FatalFhirError`` (the OperationOutcome text kept), ``OutboundError``, ``TaskError``:
  the task fails with the reason on the row; the exception goes on to RQ (failed registry);
- anything else: recorded and retried the same way while attempts remain (its traceback
  logged), then re-raised so RQ sees the failure.

The row, not RQ, counts attempts and decides when to give up: RQ's retry count restarts
with every job the sweeper enqueues anew (after a FLUSHALL or a dead worker).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar, cast

from flask import Flask, current_app, has_app_context
from rq import Retry, get_current_job
from rq.exceptions import AbandonedJobError
from rq.job import Job
from sqlalchemy import Table, Update, bindparam, insert, text, update
from sqlalchemy.orm import Session

from helpdesk.db import get_store
from helpdesk.models import CareTask, TaskAttempt
from helpdesk.tasks import GAVE_UP
from helpdesk.timeutil import utcnow
from jobs.context import JobContext
from jobs.errors import TaskError, TemporaryTaskError
from jobs.outbound import OutboundError, TemporaryOutboundError
from jobs.outbox import dispatch, finish_attempt
from smart_launch.errors import (
    DiscoveryError,
    FatalFhirError,
    NeedsAuthorization,
    RefreshBusy,
    TemporaryFhirError,
)

log = logging.getLogger("caredesk.jobs")

Handler = Callable[[CareTask, JobContext], None]
FailureHook = Callable[[Session, Flask, CareTask], None]
H = TypeVar("H", bound=Handler)


@dataclass(frozen=True)
class Registered:
    run: Handler
    on_final_failure: FailureHook | None


HANDLERS: dict[str, Registered] = {}
# The attempts table, for Core statements (run_task keeps no attempt objects).
_ATTEMPTS = cast(Table, TaskAttempt.__table__)


def _claim_statement(named_job: bool) -> Update:
    """``_claim``'s UPDATE, for a job that names itself (RQ's) or none (run in-process)."""
    # Parameter names unlike the columns': SQLAlchemy keeps those for the SET clause.
    now = bindparam("claim_now", type_=CareTask.__table__.c.started_at.type)
    return (
        update(CareTask)
        .where(
            CareTask.id == bindparam("claim_task"),
            CareTask.status.in_(("queued", "scheduled")),
            (CareTask.job_id == bindparam("claim_job")) if named_job else CareTask.job_id.is_(None),
        )
        .values(
            status="running",
            attempts=CareTask.attempts + 1,
            started_at=now,
            updated_at=now,
            last_error=None,
        )
        .returning(CareTask)
        .execution_options(synchronize_session=False)
    )


# Built once per process, not per job: building these statements (and their cache keys)
# cost a job more than running them (issue 16). Every job binds its own values.
_CLAIM = {named: _claim_statement(named) for named in (True, False)}
_NEW_ATTEMPT = insert(_ATTEMPTS)
_NO_WAL_WAIT = text("SET LOCAL synchronous_commit TO OFF")


def handler(kind: str, *, on_final_failure: FailureHook | None = None) -> Callable[[H], H]:
    """Register the function that runs tasks of ``kind``."""

    def register(func: H) -> H:
        HANDLERS[kind] = Registered(func, on_final_failure)
        return func

    return register


# Modules whose import registers handlers. Other parts (surveys) add theirs here or list
# them in the ``JOB_HANDLER_MODULES`` config value (comma-separated).
HANDLER_MODULES: list[str] = [
    "jobs.followup",
    "jobs.referral",
    "jobs.reminders",
    "jobs.survey",
    "jobs.inbound",
    "jobs.outreach",
    "jobs.replies",
]


def load_handlers() -> None:
    """Import every handler module (the worker does this once, before it forks jobs)."""
    _load_handlers()


def _load_handlers() -> None:
    import importlib

    extra = ""
    try:
        extra = str(current_app.config.get("JOB_HANDLER_MODULES") or "")
    except RuntimeError:
        pass  # no app context: the built-in kinds only
    for name in [*HANDLER_MODULES, *(m.strip() for m in extra.split(",") if m.strip())]:
        importlib.import_module(name)


def backoff(app: Flask, attempt: int, retry_after: float | None) -> float:
    base = float(app.config["RETRY_BASE_SECONDS"])
    cap = float(app.config["RETRY_MAX_SECONDS"])
    delay = min(cap, base * (2 ** max(0, attempt - 1)))
    # The server's Retry-After is a floor: retrying sooner only earns another 429.
    return float(max(delay, retry_after or 0.0))


def run_task(task_id: int) -> Retry | None:
    app: Flask = current_app._get_current_object()  # type: ignore[attr-defined]
    _load_handlers()
    job = get_current_job()
    job_id = job.id if job is not None else None
    store = get_store(app)
    # One connection for the whole job: the claim's transaction and the work's take turns
    # on it, instead of a pool checkout (and its liveness ping) for each.
    with store.engine.connect() as connection:
        session = store.sessions(bind=connection)
        try:
            task = _claim(session, task_id, job_id)
            if task is None:
                log.info("task %s: job %s skipped (task not waiting for this job)", task_id, job_id)
                return None
            return _run_claimed(app, session, task, job)
        finally:
            session.close()


def _claim(session: Session, task_id: int, job_id: str | None) -> CareTask | None:
    """Mark the task running for this job and record the attempt, committed before any
    work: a worker that dies from here on leaves a ``running`` row the sweeper recovers.

    One conditional UPDATE, so of two jobs for one task (a stale attempt, or one
    re-enqueued by the sweeper while the original was still about) only the job named on
    the row runs it. RQ cannot promise that: it knows jobs, not tasks.
    """
    now = utcnow()
    task: CareTask | None = session.scalars(
        _CLAIM[bool(job_id)], {"claim_task": task_id, "claim_job": job_id, "claim_now": now}
    ).one_or_none()
    if task is None:
        session.rollback()
        return None
    # A Core INSERT: nothing reads the attempt back as an object (the outcome is written
    # by task and attempt number), so the ORM's unit of work is not needed for it.
    session.execute(
        _NEW_ATTEMPT,
        {"task_id": task.id, "attempt": task.attempts, "job_id": job_id, "started_at": now},
    )
    # The session keeps its objects across the commit (expire_on_commit=False), so the
    # handler works on this same row without reading it again.
    session.commit()
    return task


def _run_claimed(app: Flask, session: Session, task: CareTask, job: Job | None) -> Retry | None:
    task_id = task.id
    registered = HANDLERS.get(task.kind)
    try:
        if registered is None:
            raise TaskError(f"no handler for tasks of kind {task.kind!r}")
        ctx = JobContext(app=app, session=session, task=task, now=utcnow())
        try:
            registered.run(task, ctx)
        finally:
            ctx.close()
    except Exception as exc:
        session.rollback()
        return _record_failure(app, task_id, exc, job)
    now = utcnow()
    if task.status == "running":
        task.status = "done"
    if task.status in ("done", "cancelled"):
        task.finished_at = now
    task.updated_at = now
    finish_attempt(session, task, "done", None, now)
    _commit_without_waiting_for_disk(session)
    return None


def _commit_without_waiting_for_disk(session: Session) -> None:
    """Commit the outcome of a run without waiting for PostgreSQL's WAL flush.

    The flush (an fsync) was the largest single wait of a write-back job (issue 16). What
    it guards against here is already guarded: if the database crashed before the flush,
    the run's outcome is lost and the row is as a worker that died just before this commit
    leaves it (``running``, its claim durable), which the sweeper recovers by running the
    task again. Every handler must be safe to run again after its effect for that worker
    death (the fault soak kills workers at random moments), so losing this commit adds no
    new way to do anything twice. The claim, which counts attempts and tells a first run
    from a repeat, is committed with the flush, as are commits inside handlers.
    """
    if session.get_bind().dialect.name == "postgresql":
        session.execute(_NO_WAL_WAIT)
    session.commit()


def _message(exc: BaseException) -> str:
    text = str(exc).strip()
    return text or type(exc).__name__


def _record_failure(app: Flask, task_id: int, exc: Exception, job: Job | None) -> Retry | None:
    """Write what happened on the row, then retry (the ``Retry`` RQ is to act on), wait or
    fail. Re-raises where RQ should see the failure."""
    now = utcnow()
    temporary = isinstance(
        exc,
        TemporaryFhirError
        | TemporaryOutboundError
        | TemporaryTaskError
        | DiscoveryError
        | RefreshBusy,
    )
    fatal = isinstance(exc, FatalFhirError | OutboundError | TaskError) and not temporary
    retry_after = getattr(exc, "retry_after", None)
    reraise = False
    wait = 0
    with get_store(app).session() as session:
        task = session.get(CareTask, task_id)
        assert task is not None
        task.last_error = _message(exc)
        task.updated_at = now
        if isinstance(exc, NeedsAuthorization):
            task.status = "needs-authorization"
            task.status_note = (
                "Waiting for authorization: no backend-services credentials and no usable "
                "refresh token. Launch CareDesk from the EHR, then retry."
            )
            finish_attempt(session, task, "needs-authorization", task.last_error, now)
            log.warning("task %s needs authorization", task_id)
            return None
        if not fatal and task.attempts < task.max_attempts:
            # RQ keeps its schedule in whole seconds (it truncates): a second more than
            # the delay rounded up, so a retry is never sooner than the Retry-After it
            # honours.
            wait = math.ceil(backoff(app, task.attempts, retry_after)) + 1
            task.status = "scheduled"
            task.due_at = now + timedelta(seconds=wait)
            finish_attempt(session, task, "retry", task.last_error, now)
            log.warning(
                "task %s attempt %d failed (%s); retry in %ds",
                task_id,
                task.attempts,
                type(exc).__name__,
                wait,
                exc_info=None if temporary else exc,
            )
        else:
            task.status = "failed"
            task.finished_at = now
            if not fatal:
                # GAVE_UP marks a failure a later retry may cure (the sidebar offers
                # Retry only for these; other failures get "change channel").
                task.last_error = f"{GAVE_UP} {task.attempts} attempts: {task.last_error}"
            finish_attempt(session, task, "failed", task.last_error, now)
            final_failure(session, app, task)
            log.warning("task %s failed: %s", task_id, type(exc).__name__)
            reraise = True
        retry_in = wait if task.status == "scheduled" else None
    if reraise:
        raise exc
    if retry_in is None:
        return None
    if job is None:
        # Not run by RQ: the next attempt gets a job of its own.
        dispatch([task_id], app=app)
        return None
    # The row is committed; RQ schedules this same job again (the row names it), in the
    # pipeline that ends this execution. Retry's max is RQ's count, which restarts with
    # every new job: the row's attempts decide, so RQ is always told one more is fine.
    return Retry(max=(job.number_of_retries or 0) + 1, interval=retry_in)


def job_failed(
    job: Job,
    connection: Any,
    exc_type: type[BaseException] | None,
    exc: BaseException | None,
    traceback: Any,
) -> None:
    """RQ's failure callback of every task job.

    Only an abandoned job concerns the row here: its worker died mid-job and RQ's clean-up
    of the started-job registry (run by every worker every few seconds, and by the
    sweeper) found its heartbeat lapsed. The attempt is recorded as abandoned and the task
    queued again at once (or failed with no attempts left), instead of waiting for the
    next sweep. A job that raised was recorded by ``run_task`` itself.
    """
    if not isinstance(exc, AbandonedJobError) or not job.args:
        return
    if not has_app_context():
        # A clean-up by a process without the app (`rq info`): the sweeper's row pass
        # recovers the task.
        log.info("job %s abandoned; the sweeper will recover its task", job.id)
        return
    from jobs.outbox import RECOVERED, abandon

    app: Flask = current_app._get_current_object()  # type: ignore[attr-defined]
    with get_store(app).session() as session:
        task = session.get(CareTask, int(job.args[0]))
        # Only the attempt of this job: the row may have moved on to another job (the
        # sweeper got there first), and abandon()'s compare-and-set leaves alone a row
        # that finished meanwhile.
        mine = task is not None and task.job_id == job.id
        outcome = abandon(session, app, task, utcnow()) if task is not None and mine else None
    if outcome is None:
        return
    log.warning("task %s: its worker died mid-job (job %s); %s", job.args[0], job.id, outcome)
    recovered = RECOVERED.get()
    if recovered is not None:
        recovered.append((int(job.args[0]), outcome))
    if outcome == "queued":
        dispatch([int(job.args[0])], app=app)


def final_failure(session: Session, app: Flask, task: CareTask) -> None:
    """Give the kind's hook (e.g. open a ticket) a chance; its own errors are logged."""
    _load_handlers()
    registered = HANDLERS.get(task.kind)
    if registered is None or registered.on_final_failure is None:
        return
    try:
        with session.begin_nested():
            registered.on_final_failure(session, app, task)
    except Exception:
        # The task is failed either way; a broken hook must not hide that.
        log.exception("final-failure hook for task %s raised", task.id)


__all__: list[Any] = ["handler", "run_task", "HANDLERS", "backoff", "final_failure"]
