"""The reminder sweep at clinic-day scale, and what lands in Redis."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
from zoneinfo import ZoneInfo

import redis
from sqlalchemy import func, select

from helpdesk.db import get_store
from helpdesk.models import CareTask
from jobs.reminders import sweep_registration
from tests.jobs.conftest import ROOT, register_backend, run_burst, worker_env

CHICAGO = ZoneInfo("America/Chicago")


def _sweep_in_fresh_process(app, reg_id: int, at: dt.datetime) -> dict:  # type: ignore[no-untyped-def,type-arg]
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "tests.jobs.sweep_probe",
            "--registration",
            str(reg_id),
            "--at",
            at.isoformat(),
        ],
        cwd=ROOT,
        env=worker_env(app),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _count(app) -> int:  # type: ignore[no-untyped-def]
    with get_store(app).session() as session:
        return int(session.scalar(select(func.count()).select_from(CareTask)) or 0)


def test_sweep_of_5000_appointments_has_flat_memory_and_never_duplicates(job_app, sandbox) -> None:
    reg_id = register_backend(job_app, sandbox)
    small_day = dt.date.today() + dt.timedelta(days=400)
    big_day = small_day + dt.timedelta(days=7)
    sandbox.generate_appointments(small_day.isoformat(), 1000)
    sandbox.generate_appointments(big_day.isoformat(), 5000)
    small = _sweep_in_fresh_process(
        job_app, reg_id, dt.datetime.combine(small_day, dt.time(6, 0), tzinfo=CHICAGO)
    )
    at_big = dt.datetime.combine(big_day, dt.time(6, 0), tzinfo=CHICAGO)
    big = _sweep_in_fresh_process(job_app, reg_id, at_big)
    with job_app.app_context():
        again = sweep_registration(job_app, reg_id, now=at_big)
    print(
        f"peak RSS of a sweep: 1,000 appointments {small['peak_mb']:.1f} MB; "
        f"5,000 appointments {big['peak_mb']:.1f} MB"
    )
    assert small["created"] == 1000 and big["created"] == 5000
    assert again.seen == 5000 and again.queued == 0
    assert _count(job_app) == 6000
    # Pages, not lists: five times the appointments may not cost materially more memory
    # (each figure is the high-water mark of a process that ran only that sweep).
    assert big["peak_mb"] - small["peak_mb"] < 8


def test_no_job_payload_in_redis_names_a_patient_or_a_token(job_app, sandbox) -> None:
    from tests.jobs.conftest import new_task

    reg_id = register_backend(job_app, sandbox)
    day = dt.date.today() + dt.timedelta(days=400)
    sandbox.generate_appointments(day.isoformat(), 20)
    with job_app.app_context():
        sweep_registration(
            job_app, reg_id, now=dt.datetime.combine(day, dt.time(6), tzinfo=CHICAGO)
        )
    for patient, channel in (("Patient/pat-001", "email"), ("Patient/pat-002", "sms")):
        new_task(
            job_app,
            registration_id=reg_id,
            kind="follow-up",
            patient_ref=patient,
            payload={"reason": "check-in", "channel": channel},
            assignee="Practitioner/prac-clinician-lee",
        )
    conn = redis.Redis.from_url(job_app.config["REDIS_URL"])
    try:
        before_run = _dump(conn)
        run_burst(job_app)
        after_run = _dump(conn)
    finally:
        conn.close()
    from fixtures.population import build_population

    patients = build_population(dt.date.today())["Patient"]
    forbidden = set()
    for p in patients:
        for name in p.get("name") or []:
            forbidden.update(name.get("given") or [])
            if name.get("family"):
                forbidden.add(name["family"])
        forbidden.update(t["value"] for t in p.get("telecom") or [])
    forbidden = {f for f in forbidden if len(f) >= 4}
    with get_store(job_app).session() as session:
        from helpdesk.models import LaunchSession

        assert session.scalar(select(func.count()).select_from(LaunchSession)) == 0
    for blob in (before_run, after_run):
        assert "run_task" in blob  # the scan does see the jobs
        leaked = sorted(f for f in forbidden if f in blob)
        assert leaked == []
        for marker in ("Bearer", "access_token", "refresh_token", "eyJ"):
            assert marker not in blob


def _dump(conn: redis.Redis) -> str:
    """Every key and value in the test database as text (job hashes are zlib'd pickles)."""
    import zlib

    parts = []
    for key in conn.scan_iter("*"):
        parts.append(key.decode("utf-8", "replace"))
        kind = conn.type(key).decode()
        values: list[bytes] = []
        if kind == "string":
            values = [conn.get(key) or b""]
        elif kind == "hash":
            values = [v for pair in conn.hgetall(key).items() for v in pair]
        elif kind == "list":
            values = conn.lrange(key, 0, -1)
        elif kind in ("set",):
            values = list(conn.smembers(key))
        elif kind == "zset":
            values = [m for m, _ in conn.zrange(key, 0, -1, withscores=True)]
        for value in values:
            try:
                value = zlib.decompress(value)
            except zlib.error:
                pass
            parts.append(value.decode("utf-8", "replace"))
    return json.dumps(parts, ensure_ascii=False)
