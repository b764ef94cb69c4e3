"""Queue wiring: RQ on Redis when ``CAREDESK_REDIS_URL`` is set, else the embedded default.

The embedded default is RQ over an in-process fakeredis with a worker thread, so the demo
runs with no Redis. It is a convenience, not a deployment: jobs die with the process.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from typing import Any

import redis
from flask import Flask, current_app
from rq import Queue

log = logging.getLogger("caredesk.jobs")

EXTENSION = "caredesk.queue"


@dataclass
class QueueState:
    connection: redis.Redis
    embedded: bool
    queue_names: tuple[str, ...]
    worker_thread: threading.Thread | None = None
    stop_event: threading.Event = field(default_factory=threading.Event)

    @property
    def backend(self) -> str:
        return "fakeredis (embedded, in-process)" if self.embedded else "redis"

    def queue(self, name: str = "default") -> Queue:
        return Queue(name, connection=self.connection)

    def ping(self) -> bool:
        return bool(self.connection.ping())


def init_app(app: Flask) -> None:
    names = tuple(n.strip() for n in str(app.config["QUEUES"]).split(",") if n.strip())
    url = app.config.get("REDIS_URL")
    if url:
        state = QueueState(redis.Redis.from_url(url), embedded=False, queue_names=names)
    else:
        import fakeredis  # the embedded default only; tests and production use real Redis

        state = QueueState(fakeredis.FakeRedis(server=fakeredis.FakeServer()), True, names)
    app.extensions[EXTENSION] = state
    if state.embedded and app.config.get("EMBEDDED_WORKER") and not app.config.get("TESTING"):
        start_embedded_worker(app)


def get_queue_state(app: Flask | None = None) -> QueueState:
    state: QueueState = (app or current_app).extensions[EXTENSION]
    return state


def get_queue(name: str = "default", app: Flask | None = None) -> Queue:
    return get_queue_state(app).queue(name)


def start_embedded_worker(app: Flask) -> threading.Thread:
    """Run an RQ worker in a daemon thread of this process (demo only)."""
    from jobs.worker import EmbeddedWorker

    state = get_queue_state(app)
    if state.worker_thread and state.worker_thread.is_alive():
        return state.worker_thread

    def run() -> None:
        worker = EmbeddedWorker(
            [state.queue(n) for n in state.queue_names], connection=state.connection, app=app
        )
        worker.work(with_scheduler=False, logging_level="WARNING")

    def schedule() -> None:
        # RQ's scheduler normally runs in a forked process, which cannot share an
        # in-process fakeredis; here it is a thread moving due jobs onto their queues.
        from rq.scheduler import RQScheduler

        scheduler = RQScheduler(
            [state.queue(n) for n in state.queue_names], connection=state.connection
        )
        scheduler.acquire_locks()
        # The demo's cron (reminder, survey, task and referral sweeps) runs here too;
        # in production `caredesk jobs cron` runs RQ's CronScheduler as its own process.
        with app.app_context():
            from jobs.schedule import build_cron

            cron = build_cron(app)
        while not state.stop_event.wait(1.0):
            scheduler.enqueue_scheduled_jobs()
            cron.enqueue_jobs()

    thread = threading.Thread(target=run, name="caredesk-embedded-worker", daemon=True)
    thread.start()
    threading.Thread(target=schedule, name="caredesk-embedded-scheduler", daemon=True).start()
    state.worker_thread = thread
    log.info("embedded worker started on queues %s", ",".join(state.queue_names))
    return thread


def enqueue(func: str, *args: Any, queue: str = "default", **kwargs: Any) -> Any:
    """Enqueue by dotted path. Arguments must be row ids: never PHI, never tokens."""
    return get_queue(queue).enqueue(func, *args, **kwargs)
