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

Scheduled work (retries, due follow-ups, delayed survey sends) moves onto the queues by
RQ's scheduler, which runs in one worker at a time: the one holding the scheduler lock.
RQ's own settings let a dead holder's lock live 61 s and let another worker look for it
only at its maintenance pass (every 10 minutes, and only between two 405-second waits
for a job), so after a ``kill -9`` scheduled work stalled for 10 minutes and more. Here
the lock lapses ``SCHEDULER_LOCK_SECONDS`` after its holder's last heartbeat, and every
worker looks for a free lock every ``HANDOVER_CHECK_SECONDS`` while idle and after each
job: a due job runs within about 25 s of the holder's death (README, Production).
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Any

from flask import Flask
from rq import SimpleWorker
from rq.defaults import DEFAULT_LOGGING_DATE_FORMAT, DEFAULT_LOGGING_FORMAT
from rq.scheduler import RQScheduler
from rq.scripts import acquire_or_refresh_lock
from rq.timeouts import TimerDeathPenalty

from helpdesk.logctx import request_id_var

log = logging.getLogger("caredesk.jobs")

# The scheduler renews its lock every second; a holder silent this long is taken for dead.
SCHEDULER_LOCK_SECONDS = 10
# How often an idle worker checks for a free scheduler lock (RQ's maintenance interval,
# which also runs RQ's registry clean-up) and wakes from waiting for a job to do so.
HANDOVER_CHECK_SECONDS = 10


class HandoverScheduler(RQScheduler):
    """RQ's scheduler, with a lock that outlives a dead holder by ``SCHEDULER_LOCK_SECONDS``
    instead of RQ's fixed 61 s, and that stops (releasing its lock) when the worker that
    started it is gone, so a SIGKILLed worker leaves no scheduler behind that nobody
    supervises and a restarted one could never take over from."""

    def __init__(self, *args: Any, lock_seconds: int = SCHEDULER_LOCK_SECONDS, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.lock_seconds = lock_seconds
        self.parent_pid = os.getpid()

    def acquire_locks(self, auto_start: bool = False) -> set[str]:
        got: set[str] = super().acquire_locks(auto_start=auto_start)  # type: ignore[no-untyped-call]
        self._shorten()
        return got

    def heartbeat(self) -> None:
        if os.getppid() != self.parent_pid:
            self.log.warning("Scheduler: its worker is gone; stopping and releasing the lock")
            self.request_stop()  # type: ignore[no-untyped-call]
        super().heartbeat()  # type: ignore[no-untyped-call]
        self._shorten()

    def _shorten(self) -> None:
        # RQ's own lock script, with our TTL: only a lock this scheduler holds is touched.
        for name in self.acquired_locks:
            acquire_or_refresh_lock(
                self.connection, self.get_locking_key(name), self.name, self.lock_seconds
            )


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
        kwargs.setdefault("maintenance_interval", HANDOVER_CHECK_SECONDS)
        # RQ waits for a job for worker_ttl - 15 s between maintenance passes.
        kwargs.setdefault("worker_ttl", HANDOVER_CHECK_SECONDS + 15)
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

    def run_maintenance_tasks(self) -> None:
        # RQ's registry clean-up calls the failure callbacks of abandoned jobs
        # (jobs.tasks.job_failed), which need the app.
        with self.app.app_context():
            super().run_maintenance_tasks()  # type: ignore[no-untyped-call]

    def _start_scheduler(
        self,
        burst: bool = False,
        logging_level: str | None = "INFO",
        date_format: str = DEFAULT_LOGGING_DATE_FORMAT,
        log_format: str = DEFAULT_LOGGING_FORMAT,
    ) -> None:
        # RQ's own, with HandoverScheduler in place of RQScheduler.
        self.scheduler = HandoverScheduler(
            self.queues,
            connection=self.connection,
            logging_level=logging_level if logging_level is not None else self.log.level,
            date_format=date_format,
            log_format=log_format,
            serializer=self.serializer,
        )
        self.scheduler.acquire_locks()
        if self.scheduler.acquired_locks:
            if burst:
                try:
                    self.scheduler.register_birth()
                    self.scheduler.enqueue_scheduled_jobs()  # type: ignore[no-untyped-call]
                finally:
                    self.scheduler.release_locks()  # type: ignore[no-untyped-call]
                    self.scheduler.register_death()
            else:
                self.scheduler.start()  # type: ignore[no-untyped-call]

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

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._in_hand = threading.Lock()
        self._stopping = False

    def _install_signal_handlers(self) -> None:
        # signal.signal() only works in the main thread; the demo stops the thread with
        # stop_after_current_job(), then by process exit (it is a daemon thread).
        return None

    def execute_job(self, job: Any, queue: Any) -> None:
        with self._in_hand:
            if self._stopping:
                # Dequeued as the demo stops: left to the outbox sweeper of the next start
                # (its CareTask row is still pending), not run against an EHR going away.
                return
            super().execute_job(job, queue)

    def stop_after_current_job(self, timeout: float) -> bool:
        """Take no further job; wait up to ``timeout`` s for the one in hand. False when it
        is still running."""
        self._stopping = True
        self._stop_requested = True  # RQ's own flag: the work loop ends at its next turn
        if not self._in_hand.acquire(timeout=timeout):
            return False
        self._in_hand.release()
        return True
