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
from datetime import datetime, timedelta
from typing import Any, TypeVar, cast

from flask import Flask, current_app, has_app_context
from rq import Retry, get_current_job
from rq.exceptions import AbandonedJobError
from rq.job import Job
from sqlalchemy import (
    Select,
    Table,
    Update,
    bindparam,
    func,
    insert,
    inspect,
    literal,
    literal_column,
    select,
    text,
    true,
    update,
)
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session, aliased

from helpdesk import stamps
from helpdesk.db import get_store
from helpdesk.models import CareTask, TaskAttempt
from helpdesk.tasks import GAVE_UP
from helpdesk.timeutil import utcnow
from jobs.context import JobContext, Written
from jobs.errors import TaskError, TemporaryTaskError
from jobs.outbound import OutboundError, TemporaryOutboundError
from jobs.outbox import FINISH_ATTEMPT, dispatch, finish_attempt
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
# The tables, for Core statements (run_task keeps no attempt objects).
_ATTEMPTS = cast(Table, TaskAttempt.__table__)
_TASKS = cast(Table, CareTask.__table__)


def _claimed(statement: Update, named_job: bool) -> Update:
    """The claim's WHERE and SET on ``statement`` (an UPDATE of the task table), for a job
    that names itself (RQ's) or none (run in-process)."""
    # Parameter names unlike the columns': SQLAlchemy keeps those for the SET clause.
    now = bindparam("claim_now", type_=_TASKS.c.started_at.type)
    job = _TASKS.c.job_id
    return statement.where(
        _TASKS.c.id == bindparam("claim_task"),
        _TASKS.c.status.in_(("queued", "scheduled")),
        (job == bindparam("claim_job")) if named_job else job.is_(None),
    ).values(
        status="running",
        attempts=_TASKS.c.attempts + 1,
        started_at=now,
        updated_at=now,
        last_error=None,
    )


def _claim_statement(named_job: bool) -> Update:
    """``_claim``'s UPDATE .. RETURNING the task (then the attempt's INSERT)."""
    return (
        _claimed(update(CareTask), named_job)
        .returning(CareTask)
        .execution_options(synchronize_session=False)
    )


def _claim_with_attempt(named_job: bool) -> Select[CareTask]:
    """PostgreSQL: the claim and its attempt row as one statement (data-modifying CTEs),
    the claimed row loaded as the task. Run outside a transaction it commits by itself:
    one round trip to the store instead of BEGIN, UPDATE, INSERT and COMMIT."""
    claimed = _claimed(update(_TASKS), named_job).returning(*_TASKS.c).cte("claimed")
    attempt = (
        insert(_ATTEMPTS)
        .from_select(
            ["task_id", "attempt", "job_id", "started_at", "outcome"],
            select(
                claimed.c.id,
                claimed.c.attempts,
                claimed.c.job_id,
                claimed.c.started_at,
                literal("running", _ATTEMPTS.c.outcome.type),
            ),
            include_defaults=False,
        )
        .cte("attempt")
    )
    return select(aliased(CareTask, claimed)).add_cte(attempt)


# Built once per process, not per job: building these statements (and their cache keys)
# cost a job more than running them (issue 16). Every job binds its own values.
_CLAIM = {named: _claim_statement(named) for named in (True, False)}
_CLAIM_WITH_ATTEMPT = {named: _claim_with_attempt(named) for named in (True, False)}
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
        one_statement = connection.dialect.name == "postgresql"
        if one_statement:
            # The claim is one statement that commits by itself: no BEGIN, no COMMIT.
            connection.execution_options(isolation_level="AUTOCOMMIT")
        session = store.sessions(bind=connection)
        try:
            task = _claim(session, task_id, job_id, one_statement=one_statement)
            if task is None:
                log.info("task %s: job %s skipped (task not waiting for this job)", task_id, job_id)
                return None
            if one_statement:
                # The handler's work is transactional again, as everywhere else.
                connection.execution_options(isolation_level=connection.default_isolation_level)
            return _run_claimed(app, session, task, job)
        finally:
            session.close()


def _claim(
    session: Session, task_id: int, job_id: str | None, *, one_statement: bool
) -> CareTask | None:
    """Mark the task running for this job and record the attempt, committed before any
    work: a worker that dies from here on leaves a ``running`` row the sweeper recovers.

    One conditional UPDATE, so of two jobs for one task (a stale attempt, or one
    re-enqueued by the sweeper while the original was still about) only the job named on
    the row runs it. RQ cannot promise that: it knows jobs, not tasks.

    ``one_statement`` (PostgreSQL, the session's connection in autocommit): the UPDATE and
    the attempt's INSERT as one statement, which commits (waiting for the WAL flush, as
    every claim does) when it ends.
    """
    now = utcnow()
    params = {"claim_task": task_id, "claim_job": job_id, "claim_now": now}
    task: CareTask | None
    if one_statement:
        task = session.scalars(_CLAIM_WITH_ATTEMPT[bool(job_id)], params).one_or_none()
        if task is not None:
            # The claim changed this patient's task: their change stamp moves.
            stamps.note(session, task)
        session.commit()
        return task
    claim = session.scalars(
        _CLAIM[bool(job_id)], params, execution_options={stamps.NOTED: True}
    ).one_or_none()
    task = cast(CareTask | None, claim)
    if task is None:
        session.rollback()
        return None
    stamps.note(session, task)  # this patient's task changed, not everyone's
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
    if not _write_outcome_in_one_statement(session, task, ctx.with_outcome, now):
        for written in ctx.with_outcome:
            # On the connection, as in the one statement: the stamps are noted for it.
            session.connection().execute(written.statement, written.params)
        _note_written(session, ctx.with_outcome)
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


# The task's attributes, and those that are its table's columns (by attribute name): a
# handler (or run_task) may have changed any of them on the row it was given.
_TASK_ATTRIBUTES = frozenset(inspect(CareTask).attrs.keys())
_TASK_COLUMNS = {attr.key: attr.columns[0].key for attr in inspect(CareTask).column_attrs}
# What a run that ended well writes, by (the task's changed columns, the handler's own
# statements): built once per process per combination, like every statement of a job.
_OUTCOMES: dict[tuple[tuple[str, ...], tuple[Update, ...]], Update] = {}
# In the outcome statement's RETURNING: this transaction commits without waiting for the
# WAL flush (``_commit_without_waiting_for_disk`` says why that is safe), as SET LOCAL.
_NO_WAL_WAIT_FOR_THIS = func.set_config(
    literal_column("'synchronous_commit'"), literal_column("'off'"), true()
)


def _outcome_statement(changed: tuple[str, ...], extra: tuple[Update, ...]) -> Update:
    """The task's changed columns, its attempt closed, and the handler's own statements,
    as one PostgreSQL statement (data-modifying CTEs) that also turns off the wait for the
    WAL flush of the commit that follows."""
    return (
        update(_TASKS)
        .where(_TASKS.c.id == bindparam("done_task"))
        .values({name: bindparam(f"done_{name}", type_=_TASKS.c[name].type) for name in changed})
        .add_cte(
            FINISH_ATTEMPT.cte("attempt"),
            *(s.cte(f"handler_{i}") for i, s in enumerate(extra)),
        )
        .returning(_NO_WAL_WAIT_FOR_THIS)
    )


def _write_outcome_in_one_statement(
    session: Session,
    task: CareTask,
    extra: list[Written],
    now: datetime,
) -> bool:
    """On PostgreSQL, when the handler changed no row of the session but the task (its
    own rows it writes with ``ctx.write_with_outcome``): the outcome as one statement
    and the commit, two round trips instead of one per row, the attempt's UPDATE, a SET
    and the commit. False (nothing done) otherwise: the caller flushes as usual."""
    connection: Connection = session.connection()
    if connection.dialect.name != "postgresql" or session.new or session.deleted:
        return False
    if any(obj is not task for obj in session.dirty):
        return False
    modified = _TASK_ATTRIBUTES.difference(inspect(task).unmodified)
    if not modified.issubset(_TASK_COLUMNS):
        return False  # not a plain column (none is today): the flush knows how to write it
    changed = tuple(sorted(_TASK_COLUMNS[key] for key in modified))
    statements = tuple(written.statement for written in extra)
    outcome = _OUTCOMES.get((changed, statements))
    if outcome is None:
        outcome = _OUTCOMES.setdefault(
            (changed, statements), _outcome_statement(changed, statements)
        )
    params: dict[str, Any] = {
        "done_task": task.id,
        "of_task": task.id,
        "of_attempt": task.attempts,
        "new_outcome": "done",
        "new_error": None,
        "new_finished_at": now,
    }
    for key in modified:
        params[f"done_{_TASK_COLUMNS[key]}"] = getattr(task, key)
    for written in extra:
        params.update(written.params)
    connection.execute(outcome, params)
    # What a flush of these rows would have noted for the change stamps.
    stamps.note(session, task)
    _note_written(session, extra)
    # Written above: the commit must not flush the task's changes a second time.
    session.expunge(task)
    session.commit()
    return True


def _note_written(session: Session, extra: list[Written]) -> None:
    """The change stamps of the handler's own UPDATEs: as a flush of the rows they name
    would move them (``rows``), everyone's for a table whose rows name no patient when
    the handler named none."""
    stamps.note(
        session,
        *(row for w in extra for row in w.rows),
        tables=[cast(Table, w.statement.table) for w in extra if not w.rows],
    )


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
