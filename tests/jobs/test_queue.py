"""Queue wiring: RQ on the real Redis with `caredesk worker`, and the embedded default."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from sqlalchemy import select

from helpdesk.db import get_store
from helpdesk.models import AuditEvent
from jobs.queue import get_queue, get_queue_state, start_embedded_worker

ROOT = Path(__file__).resolve().parents[2]


def test_worker_command_runs_jobs_inside_the_app_context(make_app, sqlite_url, redis_url) -> None:
    app = make_app()
    job = get_queue(app=app).enqueue("jobs.system.record_heartbeat", "worker-test")
    env = dict(
        os.environ,
        CAREDESK_ENV="test",
        CAREDESK_DATABASE_URL=sqlite_url,
        CAREDESK_REDIS_URL=redis_url,
    )
    proc = subprocess.run(
        [sys.executable, "-m", "plugin.cli", "worker", "--burst", "--no-scheduler"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    job.refresh()
    assert job.is_finished
    with get_store(app).session() as session:
        event = session.scalars(select(AuditEvent)).one()
        assert event.action == "heartbeat" and event.entity == "worker-test"
        assert event.request_id == f"job:{job.id}"


def test_worker_refuses_to_run_without_redis(sqlite_url) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CAREDESK_")}
    env.update(CAREDESK_ENV="test", CAREDESK_DATABASE_URL=sqlite_url)
    proc = subprocess.run(
        [sys.executable, "-m", "plugin.cli", "worker", "--burst"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode != 0
    assert "CAREDESK_REDIS_URL" in proc.stderr


def test_embedded_default_runs_jobs_in_process_without_redis(make_app) -> None:
    app = make_app(REDIS_URL=None)
    assert get_queue_state(app).embedded
    start_embedded_worker(app)
    job = get_queue(app=app).enqueue("jobs.system.record_heartbeat", "embedded")
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and not job.is_finished:
        time.sleep(0.05)
        job.refresh()
    assert job.is_finished
    with get_store(app).session() as session:
        assert session.scalars(select(AuditEvent.entity)).all() == ["embedded"]
    get_queue_state(app).stop_event.set()
