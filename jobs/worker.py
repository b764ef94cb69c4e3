"""Worker entry points. Jobs run inside ``app.app_context()`` made here, never at import.

``AppWorker`` runs each job in its own process, one after another, without a fork per
job (RQ's ``SimpleWorker``). A profile of the forking worker (issue 16) found that most
of a survey write-back job's time was the fork throwing away what the previous job had
built: a new PostgreSQL connection and its prepared statements, SQLAlchemy's compiled
statement cache, fhir.resources' model classes (built lazily on first validation), HTTP
keep-alive sockets to the EHR and the Redis connection. Kept in one process they are
built once per worker.

What the fork gave, and how each is kept:

- *a crash kills one job only*: a crash now takes the worker down with its one job; the
  job's heartbeat stops, RQ's started-job registry shows it abandoned, and the sweeper
  (``jobs.outbox.sweep``) runs the task again. Run workers under a supervisor that
  restarts them (systemd ``Restart=always``, Kubernetes), as for any long-running process.
- *heartbeats while the job runs*: the forking worker's parent renewed RQ's heartbeat
  (worker key, execution, started-job registry) while waiting for the horse; here a
  thread does the same, through RQ's own ``maintain_heartbeats``. A job whose worker died
  is seen as abandoned ``TASK_LEASE_SECONDS`` after its last heartbeat.
- *job timeouts*: RQ's SIGALRM death penalty works the same in the worker's main thread.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from flask import Flask
from rq import SimpleWorker
from rq.timeouts import TimerDeathPenalty

from helpdesk.logctx import request_id_var

log = logging.getLogger("caredesk.jobs")


class _Heartbeat:
    """Renews RQ's heartbeat of the job in hand from a thread, three times per TTL."""

    def __init__(self, worker: AppWorker, job: Any, execution: Any) -> None:
        self.worker = worker
        self.job = job
        self.execution = execution
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=self._run, name=f"heartbeat-{job.id}", daemon=True)

    def __enter__(self) -> _Heartbeat:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_event.set()
        self.thread.join(timeout=5)

    def _run(self) -> None:
        while not self.stop_event.wait(self.worker.heartbeat_seconds / 3):
            try:
                self.worker.maintain_heartbeats(self.job, self.execution)
            except Exception:  # noqa: BLE001 - a missed beat is retried; the sweeper copes with a lapse
                log.warning("could not renew the heartbeat of job %s", self.job.id)


class AppWorker(SimpleWorker):
    """The production worker (see the module docstring). ``heartbeat_seconds``: how long
    after the last heartbeat a running job counts as abandoned (``TASK_LEASE_SECONDS``)."""

    def __init__(self, *args: Any, app: Flask, **kwargs: Any) -> None:
        heartbeat = max(2, int(app.config["TASK_LEASE_SECONDS"]))
        super().__init__(*args, **kwargs)
        self.app = app
        self.heartbeat_seconds = heartbeat
        from jobs.tasks import load_handlers

        with app.app_context():
            load_handlers()

    def get_heartbeat_ttl(self, job: Any, working_time: float = 0.0) -> int:
        # RQ's own default adds 60 s to the monitoring interval (and SimpleWorker waits the
        # whole job timeout): a dead worker's task would wait that long to run again.
        return self.heartbeat_seconds

    def perform_job(self, job: Any, queue: Any, execution: Any) -> bool:
        token = request_id_var.set(f"job:{job.id}")
        try:
            with self.app.app_context(), _Heartbeat(self, job, execution):
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
