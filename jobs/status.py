"""What `caredesk jobs status` and the admin page show: counts, oldest waiting, failures.

The command line sees the whole installation. The admin page passes its launch's
``PatientScope`` (``helpdesk.access``): counts, the oldest waiting task and the failures
are then of that EHR registration (and of the launch's patient, when it has one) only,
and the raw RQ figures, which cannot be split by EHR, are left out.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import redis
from flask import Flask
from rq.registry import FailedJobRegistry, ScheduledJobRegistry, StartedJobRegistry
from sqlalchemy import func, select

from helpdesk.access import PatientScope
from helpdesk.db import get_store
from helpdesk.errors import ConfigError
from helpdesk.models import CareTask
from jobs.queue import get_queue_state


@dataclass(frozen=True)
class Failure:
    task_id: int
    kind: str
    attempts: int
    error: str | None
    finished_at: datetime | None


def snapshot(
    app: Flask, *, failures: int = 20, scope: PatientScope | None = None
) -> dict[str, Any]:
    where = [] if scope is None else scope.where(CareTask.registration_id, CareTask.patient_ref)
    with get_store(app).session() as session:
        rows = session.execute(
            select(CareTask.status, CareTask.queue, CareTask.kind, func.count())
            .where(*where)
            .group_by(CareTask.status, CareTask.queue, CareTask.kind)
        ).all()
        oldest = session.execute(
            select(CareTask.id, CareTask.kind, CareTask.created_at)
            .where(*where, CareTask.status.in_(("queued", "scheduled", "needs-authorization")))
            .order_by(CareTask.created_at)
            .limit(1)
        ).first()
        failed = session.scalars(
            select(CareTask)
            .where(*where, CareTask.status == "failed")
            .order_by(CareTask.updated_at.desc())
            .limit(failures)
        ).all()
        failure_rows = [
            Failure(t.id, t.kind, t.attempts, t.last_error, t.finished_at) for t in failed
        ]
    by_state: dict[str, int] = {}
    by_queue: dict[str, dict[str, int]] = {}
    by_kind: dict[str, dict[str, int]] = {}
    for status, queue, kind, count in rows:
        by_state[status] = by_state.get(status, 0) + count
        q = by_queue.setdefault(queue or "default", {})
        q[status] = q.get(status, 0) + count
        k = by_kind.setdefault(kind, {})
        k[status] = k.get(status, 0) + count
    # RQ's queues are shared by every EHR: a scoped snapshot has no RQ figures.
    rq_info = _rq_figures(app) if scope is None else {}
    return {
        "by_state": by_state,
        "by_queue": by_queue,
        "by_kind": by_kind,
        "oldest_waiting": (
            {"task_id": oldest[0], "kind": oldest[1], "since": oldest[2].isoformat()}
            if oldest
            else None
        ),
        "failures": [
            {
                "task_id": f.task_id,
                "kind": f.kind,
                "attempts": f.attempts,
                "error": f.error,
                "finished_at": f.finished_at.isoformat() if f.finished_at else None,
            }
            for f in failure_rows
        ],
        "rq": rq_info,
    }


def _rq_figures(app: Flask) -> dict[str, Any]:
    rq_info: dict[str, Any] = {}
    try:
        state = get_queue_state(app)
        for name in state.queue_names:
            rq_info[name] = {
                "queued": len(state.queue(name)),
                # Without RQ's clean-up: it runs abandoned jobs' failure callbacks, which
                # are the workers' and the sweeper's business, not a status page's.
                "started": StartedJobRegistry(name, connection=state.connection).get_job_count(
                    cleanup=False
                ),
                "scheduled": ScheduledJobRegistry(  # type: ignore[no-untyped-call]
                    name, connection=state.connection
                ).count,
                "failed": FailedJobRegistry(name, connection=state.connection).count,
            }
    except redis.exceptions.RedisError as exc:
        rq_info = {"error": f"Redis unavailable: {type(exc).__name__}"}
    except ConfigError as exc:
        rq_info = {"error": str(exc)}
    return rq_info


@dataclass(frozen=True)
class QueueHealth:
    """Whether jobs can run at all, without figures of other EHRs (the admin page counts
    its own EHR's tasks from the store; RQ's queues are shared by every EHR)."""

    error: str | None  # why Redis cannot be read (down, not configured)
    workers: int  # RQ workers registered on this Redis


def queue_health(app: Flask) -> QueueHealth:
    from rq import Worker

    try:
        return QueueHealth(None, Worker.count(connection=get_queue_state(app).connection))
    except redis.exceptions.RedisError as exc:
        return QueueHealth(f"Redis unavailable: {type(exc).__name__}", 0)
    except ConfigError as exc:
        return QueueHealth(str(exc), 0)


def retry(app: Flask, task_ids: list[int]) -> list[int]:
    """Put failed / needs-authorization tasks back in the queue with fresh attempts."""
    from jobs.outbox import dispatch

    retried: list[int] = []
    with get_store(app).session() as session:
        for task in session.scalars(select(CareTask).where(CareTask.id.in_(task_ids))):
            if task.status not in ("failed", "needs-authorization", "cancelled"):
                continue
            task.status = "queued"
            task.due_at = None
            task.finished_at = None
            # A manual retry earns a full set of attempts on top of those spent.
            task.max_attempts = task.attempts + max(1, task.max_attempts - task.attempts, 3)
            task.status_note = None
            retried.append(task.id)
    dispatch(retried, app=app)
    return retried


def failed_ids(app: Flask) -> list[int]:
    with get_store(app).session() as session:
        return list(session.scalars(select(CareTask.id).where(CareTask.status == "failed")))
