"""Job tests: a per-test app on SQLite + the real Redis, the sandbox EHR over HTTP, a
backend-services registration, and real worker processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from helpdesk.db import get_store
from helpdesk.models import CareTask
from sandbox.testing import SandboxHandle, running_sandbox
from tests.ehr import connect_backend, sandbox_token  # noqa: F401 - used by tests

ROOT = Path(__file__).resolve().parents[2]
SECRET = "jobs-test-secret-key-0123456789abcdef"
# What follow-ups and referrals need (smart_launch.features): referrals update the
# ServiceRequest and Task they wrote once the referral is scheduled.
BACKEND_SCOPES = "system/Patient.rs system/Appointment.rs system/ServiceRequest.cus system/Task.cus"
# Short leases and retries so fault tests take seconds, not minutes.
JOB_CONFIG = {
    "TASK_LEASE_SECONDS": 2,
    "RETRY_BASE_SECONDS": 1,
    "TASK_SWEEP_GRACE_SECONDS": 0,
    "CLINIC_NAME": "Test Clinic",
}


@pytest.fixture
def sandbox() -> Iterator[SandboxHandle]:
    with running_sandbox() as sb:
        yield sb


@pytest.fixture
def job_app(make_app):  # type: ignore[no-untyped-def]
    return make_app(SECRET_KEY=SECRET, **JOB_CONFIG)


@pytest.fixture
def job_app_each_store(make_app, store_url: str):  # type: ignore[no-untyped-def]
    """``job_app`` on SQLite and on PostgreSQL, for the fault tests: a job's claim and
    outcome are one statement each on PostgreSQL, several on SQLite (``jobs.tasks``)."""
    return make_app(SECRET_KEY=SECRET, DATABASE_URL=store_url, **JOB_CONFIG)


def register_backend(
    app, sb: SandboxHandle, *, allow_writes: bool = True, capabilities=None
) -> int:  # type: ignore[no-untyped-def]
    """A registration whose jobs authenticate with SMART Backend Services."""
    return connect_backend(
        app,
        sb,
        client_id="caredesk-jobs",
        scopes=BACKEND_SCOPES,
        allow_writes=allow_writes,
        capabilities=capabilities,
    )


def new_task(app, **kwargs: Any) -> int:  # type: ignore[no-untyped-def]
    from helpdesk.tasks import new_task as create_task
    from jobs.outbox import dispatch

    with app.app_context():
        with get_store(app).session() as session:
            task = create_task(session, **kwargs)
            assert task is not None
            session.flush()
            task_id = task.id
        dispatch([task_id], app=app)
    return task_id


def load_task(app, task_id: int) -> CareTask:  # type: ignore[no-untyped-def]
    with get_store(app).session() as session:
        task = session.get(CareTask, task_id)
        assert task is not None
        session.expunge(task)
        return task


def worker_env(app) -> dict[str, str]:  # type: ignore[no-untyped-def]
    env = {k: v for k, v in os.environ.items() if not k.startswith("CAREDESK_")}
    env.update(
        CAREDESK_ENV="test",
        CAREDESK_SECRET_KEY=SECRET,
        CAREDESK_DATABASE_URL=app.config["DATABASE_URL"],
        CAREDESK_REDIS_URL=app.config["REDIS_URL"],
        PYTHONUNBUFFERED="1",
    )
    for key, value in JOB_CONFIG.items():
        env[f"CAREDESK_{key}"] = str(value)
    for key in ("OUTBOUND_EMAIL", "OUTBOUND_SMS", "SMTP_HOST", "SMTP_PORT", "SMTP_FROM"):
        if app.config.get(key) is not None:
            env[f"CAREDESK_{key}"] = str(app.config[key])
    return env


def run_burst(app, timeout: float = 90) -> subprocess.CompletedProcess[str]:  # type: ignore[no-untyped-def]
    proc = subprocess.run(
        [sys.executable, "-m", "plugin.cli", "worker", "--burst", "--no-scheduler"],
        cwd=ROOT,
        env=worker_env(app),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@contextmanager
def worker(app, log_path: Path, name: str | None = None) -> Iterator[subprocess.Popen[bytes]]:  # type: ignore[no-untyped-def]
    """A long-running worker (with RQ's scheduler) in its own process group."""
    with log_path.open("ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "plugin.cli", "worker", *(["--name", name] if name else [])],
            cwd=ROOT,
            env=worker_env(app),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            yield proc
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()


def wait_for(predicate: Callable[[], Any], timeout: float = 30, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def service_requests(sb: SandboxHandle, task_id: int) -> dict[str, Any]:
    import requests

    from jobs.referral import IDENTIFIER_SYSTEM

    resp = requests.get(
        f"{sb.fhir_base}/ServiceRequest",
        params={"identifier": f"{IDENTIFIER_SYSTEM}|task-{task_id}"},
        headers={"Authorization": f"Bearer {sandbox_token(sb)}"},
        timeout=10,
    )
    assert resp.status_code == 200, resp.text
    result: dict[str, Any] = resp.json()
    return result


# `caredesk jobs` (its commands are plugin.jobs_cli's, imported when the group runs).
CLI = "from plugin.cli import main; main()"


@pytest.fixture
def runner_env(job_app):  # type: ignore[no-untyped-def]
    """Run `caredesk ...` against the test app's store and Redis."""

    def run(args: list[str]) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [sys.executable, "-c", CLI, *args],
            cwd=ROOT,
            env=worker_env(job_app),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert proc.returncode == 0, proc.stderr[-2000:]
        return proc

    return run
