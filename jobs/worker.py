"""Worker entry points. Jobs run inside ``app.app_context()`` made here, never at import."""

from __future__ import annotations

import logging
from typing import Any

from flask import Flask
from rq import SimpleWorker, Worker
from rq.timeouts import TimerDeathPenalty

from helpdesk.logctx import request_id_var

log = logging.getLogger("caredesk.jobs")


class _AppContextMixin:
    app: Flask

    def perform_job(self, job: Any, queue: Any, execution: Any) -> bool:
        token = request_id_var.set(f"job:{job.id}")
        try:
            with self.app.app_context():
                return bool(super().perform_job(job, queue, execution))  # type: ignore[misc]
        finally:
            request_id_var.reset(token)


class AppWorker(_AppContextMixin, Worker):
    """The production worker: forks a work horse per job, so a crash kills one job only.

    What every job needs is prepared here, in the parent, so each fork inherits it instead
    of paying for it again: the handler modules are imported once, and before each task
    job the EHR's discovery document and backend token are cached (see ``jobs.context.warm``).
    """

    def __init__(self, *args: Any, app: Flask, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.app = app
        from jobs.tasks import load_handlers

        with app.app_context():
            load_handlers()

    def main_work_horse(self, job: Any, queue: Any) -> Any:
        # In the forked horse: never reuse the parent's database connections or HTTP
        # sockets (both ends would talk on one socket: "prepared statement already
        # exists" on PostgreSQL). Caches (discovery, tokens) are plain memory and stay.
        from helpdesk.db import get_store
        from helpdesk.ehr import clients

        get_store(self.app).engine.dispose(close=False)
        clients(self.app).after_fork()
        return super().main_work_horse(job, queue)

    def execute_job(self, job: Any, queue: Any) -> Any:
        if job.func_name == "jobs.tasks.run_task" and job.args:
            from jobs.context import warm

            with self.app.app_context():
                warm(self.app, int(job.args[0]))
        return super().execute_job(job, queue)


class EmbeddedWorker(_AppContextMixin, SimpleWorker):
    """The demo's in-process worker thread: no fork, no signals (not the main thread)."""

    death_penalty_class = TimerDeathPenalty

    def __init__(self, *args: Any, app: Flask, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.app = app

    def _install_signal_handlers(self) -> None:
        # signal.signal() only works in the main thread; the demo stops the thread by
        # process exit (it is a daemon thread).
        return None
