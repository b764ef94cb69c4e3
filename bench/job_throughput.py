"""3. Job throughput: survey write-back jobs through a real Redis and real worker processes.

N answered surveys are made in the store (PostgreSQL, a schema of our own) and their
write-back tasks queued through the outbox, then W ``caredesk worker --burst`` processes
(RQ's forking worker, as in production) drain the queue against the sandbox at L = 0 and
L = 20 ms. Each job searches the EHR for the answer's identifier and creates the
QuestionnaireResponse, so it costs at least two EHR round trips.

Floor: N no-op RQ jobs (``jobs.system.noop``) through the same workers in the same run.
Throughput is N over the span from the first job's start to the last job's end, read from
RQ's own job records, so worker start-up is not counted for either.
"""

from __future__ import annotations

import datetime as dt
import os
import resource
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import redis

from bench.common import (
    REDIS_URL,
    ROOT,
    SECRET,
    Figure,
    Outcome,
    Row,
    close_app,
    flush_bench_redis,
    new_app,
    postgres_store,
)
from helpdesk.tasks import new_task

SURVEY_SCOPES = (
    "system/Patient.rs system/Appointment.rs system/Location.rs system/Encounter.rs "
    "system/Questionnaire.crs system/QuestionnaireResponse.crs"
)
BACKEND_CLIENT = "caredesk-bench-jobs"
ANSWERS = {"csat": "4", "nps": 9, "comment": "Quick check-in", "contact-ok": False}


def _register_backend(app: Any, sb: Any) -> int:
    from helpdesk import registry
    from helpdesk.crypto import get_vault
    from helpdesk.db import get_store
    from helpdesk.models import SigningKey
    from smart_launch.keys import generate_signing_key

    key = generate_signing_key("RS384")
    sb.register_client(
        {
            "client_id": BACKEND_CLIENT,
            "type": "confidential-asymmetric",
            "jwks": {"keys": [key.public_jwk()]},
            "backend": True,
        }
    )
    with app.app_context(), get_store(app).session() as session:
        reg = registry.upsert(
            session,
            get_vault(app),
            slug="bench-sb",
            iss=sb.fhir_base,
            client_id=BACKEND_CLIENT,
            client_type="confidential-asymmetric",
            backend_client_id=BACKEND_CLIENT,
            backend_scopes=SURVEY_SCOPES,
            allow_writes=True,
        )
        reg.signing_keys.append(
            SigningKey(
                kid=key.kid,
                alg=key.alg,
                private_key_enc=get_vault(app).encrypt(key.private_pem),
                public_jwk=key.public_jwk(),
            )
        )
        session.flush()
        return int(reg.id)


def _queue_writebacks(app: Any, reg_id: int, count: int) -> list[int]:
    """`count` answered invitations, each with a write-back task, queued via the outbox."""
    from helpdesk import surveys as domain
    from helpdesk.db import get_store
    from helpdesk.models import SurveyInvite, SurveyResponse
    from jobs import outbox

    now = dt.datetime.now(dt.UTC)
    with app.app_context():
        store = get_store(app)
        with store.session() as session:
            invites = []
            for _ in range(count):
                _, digest = domain.new_link_token()
                invites.append(
                    SurveyInvite(
                        id=uuid.uuid4().hex,
                        registration_id=reg_id,
                        patient_ref="Patient/pat-001",
                        appointment_ref="Appointment/appt-pat-001-past",
                        encounter_ref="Encounter/enc-pat-001-past",
                        location_ref="Location/loc-chicago-main",
                        practitioner_ref="Practitioner/prac-clinician-lee",
                        clinic_name="Bench Clinic",
                        practitioner_name="Dr. Ana Lee",
                        language="en",
                        timezone="America/Chicago",
                        token_hash=digest,
                        status="answered",
                        sent_at=now - dt.timedelta(hours=2),
                        expires_at=now + dt.timedelta(days=7),
                        answered_at=now,
                        visit_at=now - dt.timedelta(hours=5),
                        channel="sms",
                    )
                )
            session.add_all(invites)
            session.flush()
            responses = [
                SurveyResponse(
                    invite_id=inv.id,
                    answers=ANSWERS,
                    csat=4,
                    nps=9,
                    comment=ANSWERS["comment"],
                    contact_ok=False,
                )
                for inv in invites
            ]
            session.add_all(responses)
            session.flush()
            tasks = [
                new_task(
                    session,
                    registration_id=reg_id,
                    kind=domain.WRITEBACK_KIND,
                    patient_ref="Patient/pat-001",
                    payload={"response_id": r.id},
                    # As helpdesk.surveys.record_answer queues it: one task per answer.
                    dedupe_key=domain.writeback_key(r.id),
                )
                for r in responses
            ]
            session.flush()
            ids = [t.id for t in tasks if t is not None]
        outbox.dispatch(ids, app=app)
    return ids


def _queue_noops(count: int) -> None:
    from rq import Queue

    conn = redis.Redis.from_url(REDIS_URL)
    try:
        queue = Queue("default", connection=conn)
        batch = 500
        for start in range(0, count, batch):
            n = min(batch, count - start)
            queue.enqueue_many([Queue.prepare_data("jobs.system.noop") for _ in range(n)])
    finally:
        conn.close()


def _worker_env(database_url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CAREDESK_")}
    env.update(
        CAREDESK_ENV="test",
        CAREDESK_SECRET_KEY=SECRET,
        CAREDESK_DATABASE_URL=database_url,
        CAREDESK_REDIS_URL=REDIS_URL,
        CAREDESK_JOB_HANDLER_MODULES="jobs.survey",
        CAREDESK_LOG_LEVEL="WARNING",
        PYTHONUNBUFFERED="1",
    )
    return env


def _drain(
    database_url: str, workers: int, log_dir: Path, *, window: float | None, timeout: float
) -> bool:
    """Run `workers` burst workers until the queue is empty, or for `window` seconds
    after which they are asked to stop (SIGTERM: RQ's warm shutdown lets the job in hand
    finish). Returns whether the queue was drained. Output goes to files in `log_dir`."""
    procs = []
    logs = []
    for i in range(workers):
        log = (log_dir / f"worker-{time.monotonic_ns()}-{i}.log").open("wb")
        logs.append(log)
        procs.append(
            subprocess.Popen(  # noqa: S603 - our own CLI, fixed arguments
                [sys.executable, "-m", "plugin.cli", "worker", "--burst", "--no-scheduler"],
                cwd=ROOT,
                env=_worker_env(database_url),
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        )
    try:
        deadline = time.monotonic() + (window if window is not None else timeout)
        while time.monotonic() < deadline and any(p.poll() is None for p in procs):
            time.sleep(0.1)
        drained = all(p.poll() is not None for p in procs)
        for proc in procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in procs:
            proc.wait(timeout=60)
            if drained and proc.returncode != 0:
                raise RuntimeError(f"a worker exited with {proc.returncode} (see {log_dir})")
        return drained
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        for log in logs:
            log.close()


def _ehr_handling_ms(requests_seen: list[dict[str, Any]], latency_ms: int) -> float:
    """How long the EHR itself took over the FHIR requests it logged (the sandbox's app,
    from its before- to its after-request hook, less the latency it was told to add), in
    ms. At L = 0 a write-back's wall time includes this, and a no-op job's does not: it is
    the EHR's work, not CareDesk's, though the workers wait for it. A lower bound (the
    sandbox's HTTP parsing and writing are outside the hooks)."""
    spans: list[float] = [
        (float(r["end"]) - float(r["start"])) * 1000 - latency_ms
        for r in requests_seen
        if r.get("path", "").startswith("/fhir/") and "end" in r
    ]
    return sum(max(0.0, span) for span in spans)


def _children_cpu_s() -> float:
    """CPU seconds of this process's finished children (the drained workers): on a busy
    machine, where wall time stretches with the load, what a job costs shows here."""
    used = resource.getrusage(resource.RUSAGE_CHILDREN)
    return used.ru_utime + used.ru_stime


def _job_span(log_dir: Path) -> tuple[int, float, int]:
    """(jobs that ran, seconds from the first start to the last end, failed jobs)."""
    conn = redis.Redis.from_url(REDIS_URL)
    try:
        keys = [k for k in conn.scan_iter("rq:job:*", count=1000) if k.count(b":") == 2]
        pipe = conn.pipeline()
        for key in keys:
            pipe.hmget(key, "started_at", "ended_at", "status")
        rows = pipe.execute()
    finally:
        conn.close()

    def when(raw: bytes) -> float:
        return dt.datetime.fromisoformat(raw.decode().replace("Z", "+00:00")).timestamp()

    starts, ends, failed = [], [], 0
    for started, ended, status in rows:
        if not started or not ended or status not in (b"finished", b"failed"):
            continue
        starts.append(when(started))
        ends.append(when(ended))
        if status == b"failed":
            failed += 1
    if not starts or failed:
        logs = sorted(log_dir.glob("worker-*.log"), key=lambda p: p.stat().st_mtime)
        tail = logs[-1].read_text(encoding="utf-8", errors="replace")[-3000:] if logs else ""
        what = "no job ran" if not starts else f"{failed} job(s) failed"
        sys.stderr.write(f"[bench] {what}; last worker log:\n{tail}\n")
    if not starts:
        raise RuntimeError(f"no job ran ({len(rows)} job records in Redis)")
    return len(starts), max(ends) - min(starts), failed


def _task_outcomes(app: Any, ids: list[int]) -> dict[str, int]:
    from sqlalchemy import func, select

    from helpdesk.db import get_store
    from helpdesk.models import CareTask

    with get_store(app).session() as session:
        rows = session.execute(
            select(CareTask.status, func.count())
            .where(CareTask.id.in_(ids))
            .group_by(CareTask.status)
        ).all()
    return {str(status): int(n) for status, n in rows}


def run(*, quick: bool) -> Outcome:
    from helpdesk import migrate
    from sandbox.testing import running_sandbox

    count = 100 if quick else 2_000
    # At the measured cost of a write-back job, 2,000 of them through one worker take
    # minutes each: four such drains do not fit in the run's 10 minutes. So the queue
    # holds all `count` jobs and the workers run for this window; throughput is what
    # finished in it (the span of the jobs that ran, from RQ's records).
    # A quick run measures the one-worker rounds the targets table reads, with a window
    # long enough for a worker to start (imports, discovery) on a busy machine: with 6 s
    # and two worker counts, nothing ran in the window there ("not measured").
    window = 10.0 if quick else 45.0
    worker_counts = (1,) if quick else (1, 2)
    latencies = (0, 20)
    timeout = 600.0
    out = Outcome()
    data: dict[str, Any] = {
        "queued_per_round": count,
        "writeback_window_s": window,
        "noop": {},
        "writeback": {},
    }
    out.data = data
    with postgres_store() as db_url, tempfile.TemporaryDirectory(prefix="bench-jobs-") as tmp:
        migrate.upgrade(db_url)
        log_dir = Path(tmp)
        for workers in worker_counts:
            flush_bench_redis()
            _queue_noops(count)
            cpu0 = _children_cpu_s()
            drained = _drain(db_url, workers, log_dir, window=None, timeout=timeout)
            cpu = _children_cpu_s() - cpu0
            try:
                ran, span, failed = _job_span(log_dir)
            except RuntimeError as exc:
                data["noop"][str(workers)] = {"error": str(exc), "drained": drained}
                continue
            data["noop"][str(workers)] = {
                "queued": count,
                "ran": ran,
                "failed": failed,
                "drained": drained,
                "span_s": span,
                "jobs_per_s": ran / span,
                "worker_cpu_ms_per_job": cpu / ran * 1000,
            }
        app = new_app(db_url)
        try:
            for latency in latencies:
                with running_sandbox(in_process=False, latency_ms=latency) as sb:
                    reg_id = _register_backend(app, sb)
                    for workers in worker_counts:
                        flush_bench_redis()
                        sb.reset()  # the previous round's QuestionnaireResponses go
                        queued_at = time.perf_counter()
                        ids = _queue_writebacks(app, reg_id, count)
                        enqueue_s = time.perf_counter() - queued_at
                        before = sb.stats()
                        sb.clear_requests()
                        cpu0 = _children_cpu_s()
                        drained = _drain(db_url, workers, log_dir, window=window, timeout=timeout)
                        cpu = _children_cpu_s() - cpu0
                        after = sb.stats()
                        ehr_ms = _ehr_handling_ms(sb.requests(), latency)
                        key = f"L{latency}_W{workers}"
                        try:
                            ran, span, failed = _job_span(log_dir)
                        except RuntimeError as exc:
                            # One round that ran nothing must not hide the other rounds.
                            data["writeback"][key] = {"error": str(exc), "drained": drained}
                            continue
                        fhir = after["fhir_requests"] - before["fhir_requests"]
                        tokens = sum(after["token_requests"].values()) - sum(
                            before["token_requests"].values()
                        )
                        data["writeback"][key] = {
                            "latency_ms": latency,
                            "workers": workers,
                            "queued": count,
                            "ran": ran,
                            "failed": failed,
                            "drained": drained,
                            "span_s": span,
                            "jobs_per_s": ran / span,
                            "enqueue_s": enqueue_s,
                            "ehr_fhir_requests_per_job": fhir / ran,
                            "ehr_token_requests_per_job": tokens / ran,
                            "task_outcomes": _task_outcomes(app, ids),
                            "worker_cpu_ms_per_job": cpu / ran * 1000,
                            "ehr_handling_ms_per_job": ehr_ms / ran,
                        }
        finally:
            close_app(app)
    _rows(out, worker_counts, latencies)
    return out


def _rows(out: Outcome, worker_counts: tuple[int, ...], latencies: tuple[int, ...]) -> None:
    data = out.data
    for workers in worker_counts:
        noop = data["noop"][str(workers)]
        if "error" in noop:
            out.rows.append(
                Row(
                    "3 jobs",
                    f"no-op RQ jobs, {workers} worker(s) (floor)",
                    None,
                    "jobs/s",
                    note=f"not measured: {noop['error']}",
                )
            )
            continue
        out.rows.append(
            Row(
                "3 jobs",
                f"no-op RQ jobs, {workers} worker(s) (floor)",
                noop["jobs_per_s"],
                "jobs/s",
                note=f"{noop['ran']:,} jobs, {noop['failed']} failed; worker CPU "
                f"{noop['worker_cpu_ms_per_job']:.1f} ms/job (start-up included)",
            )
        )
    for latency in latencies:
        for workers in worker_counts:
            noop = data["noop"][str(workers)]
            wb = data["writeback"][f"L{latency}_W{workers}"]
            figure = f"survey write-back, {workers} worker(s), L={latency} ms"
            if "error" in wb:
                out.rows.append(
                    Row("3 jobs", figure, None, "jobs/s", note=f"not measured: {wb['error']}")
                )
                continue
            if wb["failed"]:
                out.rows.append(
                    Row(
                        "3 jobs",
                        figure,
                        None,
                        "jobs/s",
                        note=f"not measured: {wb['failed']} of {wb['ran']} jobs failed "
                        f"(tasks {wb['task_outcomes']})",
                    )
                )
                continue
            per_job_ms = workers * wb["span_s"] / wb["ran"] * 1000
            trips = wb["ehr_fhir_requests_per_job"] + wb["ehr_token_requests_per_job"]
            wb["per_job_ms_per_worker"] = per_job_ms
            done = "all" if wb["drained"] else f"{wb['ran']:,} of {wb['queued']:,} queued"
            note = (
                f"{done} done in the window; per job {per_job_ms:.0f} ms per worker "
                f"(worker CPU {wb['worker_cpu_ms_per_job']:.1f} ms, start-up included), "
                f"{wb['ehr_fhir_requests_per_job']:.2f} FHIR + "
                f"{wb['ehr_token_requests_per_job']:.2f} token requests; the EHR's own "
                f"handling {wb['ehr_handling_ms_per_job']:.1f} ms/job (the sandbox's app, "
                "L excluded)"
            )
            floor = None
            ratio = None
            if latency == 0 and "error" not in noop:
                floor = noop["jobs_per_s"]
                ratio = wb["jobs_per_s"] / floor
            else:
                beyond_l = per_job_ms - latency
                beyond_trips = per_job_ms - trips * latency
                wb["overhead_beyond_L_ms"] = beyond_l
                wb["overhead_beyond_round_trips_x_L_ms"] = beyond_trips
                note += (
                    f"; overhead beyond L {beyond_l:.0f} ms/job "
                    f"(beyond {trips:.2f} x L: {beyond_trips:.0f} ms)"
                )
            out.rows.append(
                Row(
                    "3 jobs",
                    figure,
                    wb["jobs_per_s"],
                    "jobs/s",
                    floor=floor,
                    ratio=ratio,
                    note=note,
                )
            )
            if workers == 1 and floor is not None:
                out.figures.append(
                    Figure(
                        "jobs.writeback",
                        wb["jobs_per_s"],
                        "jobs/s",
                        floor,
                        "no-op RQ jobs, same workers",
                    )
                )
            elif workers == 1 and latency > 0:
                out.figures.append(
                    Figure(
                        "jobs.overhead",
                        per_job_ms,
                        "ms/job",
                        trips * latency,
                        f"{trips:.2f} EHR round trips x L",
                        note=f"L = {latency} ms",
                    )
                )
