"""Worker entry points. Jobs run inside ``app.app_context()`` made here, never at import.

``AppWorker`` runs each job in its own process, one after another, without a fork per
job (RQ's ``SimpleWorker``). A profile of the forking worker (issue 16) found that most
of a survey write-back job's time was the fork throwing away what the previous job had
built: a new PostgreSQL connection and its prepared statements, SQLAlchemy's compiled
statement cache, fhir.resources' model classes (built lazily on first validation), HTTP
keep-alive sockets to the EHR and the Redis connection. Kept in one process they are
built once per worker.

What the fork gave, and how it is kept: *a crash kills one job only*: a crash now takes
the worker down with its one job; the task's lease lapses and the sweeper
(``jobs.outbox.sweep``) runs the task again. Run workers under a supervisor that restarts
them (systemd ``Restart=always``, Kubernetes), as for any long-running process. *Job
timeouts*: RQ's SIGALRM death penalty works the same in the worker's main thread.
"""

from __future__ import annotations

import logging
from typing import Any

from flask import Flask
from rq import SimpleWorker
from rq.timeouts import TimerDeathPenalty

from helpdesk.logctx import request_id_var

log = logging.getLogger("caredesk.jobs")


class AppWorker(SimpleWorker):
    """The production worker (see the module docstring)."""

    def __init__(self, *args: Any, app: Flask, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.app = app
        from jobs.tasks import load_handlers

        with app.app_context():
            load_handlers()

    def perform_job(self, job: Any, queue: Any, execution: Any) -> bool:
        token = request_id_var.set(f"job:{job.id}")
        try:
            with self.app.app_context():
                return bool(super().perform_job(job, queue, execution))
        finally:
            request_id_var.reset(token)


class EmbeddedWorker(AppWorker):
    """The demo's in-process worker thread: no signals (not the main thread), so job
    timeouts use a timer thread instead of SIGALRM."""

    death_penalty_class = TimerDeathPenalty

    def _install_signal_handlers(self) -> None:
        # signal.signal() only works in the main thread; the demo stops the thread by
        # process exit (it is a daemon thread).
        return None
