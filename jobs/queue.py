"""RQ queues on the process's Redis connection (``helpdesk.kv``).

``create_app`` never starts a worker: ``caredesk worker`` runs them in production, and
only ``caredesk demo`` starts the embedded worker thread (over the in-process fakeredis),
so a one-shot command such as ``caredesk ehr check --json`` prints its output and nothing
else, and never fires a sweep at an EHR.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from typing import Any

import redis
from flask import Flask, current_app
from rq import Queue

from helpdesk.kv import get_kv

log = logging.getLogger("caredesk.jobs")

EXTENSION = "caredesk.queue"


@dataclass
class QueueState:
    connection: redis.Redis
    embedded: bool
    queue_names: tuple[str, ...]
    worker_thread: threading.Thread | None = None
    worker: Any = None  # the EmbeddedWorker of the demo, once started
    stop_event: threading.Event = field(default_factory=threading.Event)

    @property
    def backend(self) -> str:
        return "fakeredis (embedded, in-process)" if self.embedded else "redis"

    def queue(self, name: str = "default") -> Queue:
        return Queue(name, connection=self.connection)

    def ping(self) -> bool:
        return bool(self.connection.ping())


def get_queue_state(app: Flask | None = None) -> QueueState:
    """The queues on this app's Redis, made on first use (a command that never queues a
    job never needs Redis)."""
    app = app or current_app._get_current_object()  # type: ignore[attr-defined]
    state: QueueState | None = app.extensions.get(EXTENSION)
    if state is None:
        kv = get_kv(app)
        names = tuple(n.strip() for n in str(app.config["QUEUES"]).split(",") if n.strip())
        state = app.extensions.setdefault(EXTENSION, QueueState(kv.connection, kv.embedded, names))
    return state


def get_queue(name: str = "default", app: Flask | None = None) -> Queue:
    return get_queue_state(app).queue(name)


def start_embedded_worker(app: Flask) -> threading.Thread:
    """Run an RQ worker, RQ's scheduler and the cron in daemon threads of this process
    (``caredesk demo`` only: they live on the in-process fakeredis)."""
    from jobs.worker import EmbeddedWorker

    state = get_queue_state(app)
    if not state.embedded:
        raise RuntimeError("the embedded worker runs on the in-process queue only")
    if state.worker_thread and state.worker_thread.is_alive():
        return state.worker_thread
    # RQ's own lines (worker, scheduler lock, cron registrations and enqueues) only at
    # WARNING, unless CareDesk itself logs at DEBUG: the demo's console stays readable.
    rq_level = "DEBUG" if str(app.config.get("LOG_LEVEL", "")).upper() == "DEBUG" else "WARNING"

    def run() -> None:
        worker = EmbeddedWorker(
            [state.queue(n) for n in state.queue_names], connection=state.connection, app=app
        )
        state.worker = worker
        worker.work(with_scheduler=False, logging_level=rq_level)

    def schedule() -> None:
        # RQ's scheduler normally runs in a forked process, which cannot share an
        # in-process fakeredis; here it is a thread moving due jobs onto their queues.
        from rq.scheduler import RQScheduler

        scheduler = RQScheduler(
            [state.queue(n) for n in state.queue_names],
            connection=state.connection,
            logging_level=rq_level,
        )
        scheduler.acquire_locks()  # type: ignore[no-untyped-call]
        # The demo's cron (reminder, survey, task and referral sweeps) runs here too;
        # in production `caredesk jobs cron` runs RQ's CronScheduler as its own process.
        with app.app_context():
            from jobs.schedule import build_cron

            cron = build_cron(app, logging_level=rq_level)
        while not state.stop_event.wait(1.0):
            scheduler.enqueue_scheduled_jobs()  # type: ignore[no-untyped-call]
            cron.enqueue_jobs()

    thread = threading.Thread(target=run, name="caredesk-embedded-worker", daemon=True)
    thread.start()
    threading.Thread(target=schedule, name="caredesk-embedded-scheduler", daemon=True).start()
    state.worker_thread = thread
    log.info("embedded worker started on queues %s", ",".join(state.queue_names))
    return thread


def stop_embedded_worker(app: Flask, *, timeout: float = 10.0) -> None:
    """The demo stopping: the cron and RQ's scheduler enqueue nothing more, the worker
    finishes the job in hand (up to ``timeout`` s) and takes no other. Called before the
    sandbox is stopped, so no job meets an EHR that is going away."""
    state = get_queue_state(app)
    state.stop_event.set()
    if state.worker is not None and not state.worker.stop_after_current_job(timeout):
        log.warning("a job was still running after %.0f s; stopping anyway", timeout)


def enqueue(func: str, *args: Any, queue: str = "default", **kwargs: Any) -> Any:
    """Enqueue by dotted path. Arguments must be row ids: never PHI, never tokens."""
    return get_queue(queue).enqueue(func, *args, **kwargs)
