"""7. A burst of survey answers: N patients press "Send my answers" at the same moment.

CareDesk runs as in production: ``CAREDESK_ENV=production``, the repository's
gunicorn.conf.py (its workers and threads), PostgreSQL, Redis; the per-address survey limit
is raised, since every simulated patient here shares one address (behind a proxy with
``CAREDESK_PROXY_FIX`` each would have their own). N sent invitations are stored first and
each patient's form page is loaded (its CSRF token); then N connections send their answer
at once (asyncio, pre-built raw HTTP/1.1 requests over loopback, so the load generator
costs little CPU). Measured per answer: from connect to the whole response. Then the store
is checked: every answer is stored once, with its write-back task queued (nothing lost).

The floor, in the same gunicorn right after: N simultaneous requests to a route that does
nothing (``bench.loadapp``'s ``/bench/noop``: the same app, hooks and access log), the
cost of gunicorn + HTTP + Flask alone. CPU is counted per answer for every process the
burst keeps busy, whatever else shares the machine: the gunicorn workers, the PostgreSQL
backends of their connections (found by ``application_name``), the Redis server, and the
load generator. On two idle cores a CPU-bound burst ends when all of that work is done, so
``total CPU x N / cores`` is what p99 would be on an idle machine (an estimate: the figure
itself is only as good as the machine is idle, and the table says its load).
"""

from __future__ import annotations

import asyncio
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import requests

from bench.common import (
    REDIS_URL,
    ROOT,
    SECRET,
    Outcome,
    Row,
    close_app,
    flush_bench_redis,
    new_app,
    percentile,
    postgres_store,
)

SECTION = "7 survey burst"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_ready(base: str, proc: subprocess.Popen[bytes], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"gunicorn exited with {proc.returncode}")
        try:
            with requests.get(f"{base}/healthz", timeout=10) as resp:
                if resp.status_code == 200:
                    return
        except requests.RequestException:
            pass
        time.sleep(0.1)
    raise RuntimeError("gunicorn did not answer /healthz")


def _cpu_seconds(root_pid: int) -> float:
    """CPU time (user + system) of a process and its children so far, from /proc: what
    CareDesk itself spent, whatever else shares the machine."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        pid, ppid = int(entry.name), int(fields[1])
        if pid == root_pid or ppid == root_pid:
            total += (int(fields[11]) + int(fields[12])) / ticks
    return total


def _load() -> float:
    return os.getloadavg()[0]


def _proc_cpu(pids: list[int]) -> float:
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / ticks
    return total


def _postgres_pids(db_url: str) -> list[int]:
    """The PostgreSQL backends serving CareDesk's connections (by application_name)."""
    from sqlalchemy import create_engine, text

    engine = create_engine(db_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                text("SELECT pid FROM pg_stat_activity WHERE application_name = :name"),
                {"name": APP_NAME},
            )
            return [int(r[0]) for r in rows]
    finally:
        engine.dispose()


def _redis_pid() -> int | None:
    import redis

    conn = redis.Redis.from_url(REDIS_URL)
    try:
        info: dict[str, Any] = conn.info("server")  # type: ignore[assignment]
        pid = info.get("process_id")
    finally:
        conn.close()
    # Only a server on this machine can be measured (a container's pid means nothing here).
    return int(pid) if pid and Path(f"/proc/{pid}").exists() else None


APP_NAME = "caredesk-bench-burst"


def _invitations(app: Any, n: int) -> list[str]:
    """N sent invitations of one registration; their link tokens."""
    from helpdesk import registry
    from helpdesk import surveys as domain
    from helpdesk.crypto import get_vault
    from helpdesk.db import get_store
    from helpdesk.models import SurveyInvite
    from helpdesk.timeutil import utcnow

    tokens = []
    with app.app_context(), get_store(app).session() as session:
        reg = registry.upsert(
            session,
            get_vault(app),
            slug="bench-ehr",
            iss="http://127.0.0.1:9/fhir",
            client_id="bench",
        )
        session.flush()
        now = utcnow()
        for i in range(n):
            token, digest = domain.new_link_token()
            tokens.append(token)
            session.add(
                SurveyInvite(
                    id=uuid.uuid4().hex,
                    registration_id=reg.id,
                    patient_ref=f"Patient/bench-{i}",
                    appointment_ref=f"Appointment/bench-{i}",
                    clinic_name="Bench Clinic",
                    language="en",
                    timezone="America/Chicago",
                    token_hash=digest,
                    status="sent",
                    sent_at=now,
                    expires_at=now + timedelta(days=7),
                    visit_at=now - timedelta(hours=3),
                    channel="sms",
                )
            )
    return tokens


def _post(port: int, path: str, body: bytes) -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        "Content-Type: application/x-www-form-urlencoded\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode() + body


def _get(port: int, path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n".encode()


async def _send(port: int, raw: bytes, gate: asyncio.Event) -> tuple[float, int]:
    await gate.wait()
    t0 = time.perf_counter()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(raw)
    await writer.drain()
    response = await reader.read()
    elapsed = time.perf_counter() - t0
    writer.close()
    status = int(response.split(b" ", 2)[1]) if response.startswith(b"HTTP/") else 0
    return elapsed, status


async def _burst(port: int, requests_: list[bytes]) -> tuple[list[float], list[int]]:
    gate = asyncio.Event()
    tasks = [asyncio.create_task(_send(port, raw, gate)) for raw in requests_]
    await asyncio.sleep(0.1)  # every coroutine is waiting at the gate
    gate.set()
    results = await asyncio.gather(*tasks)
    return [r[0] for r in results], [r[1] for r in results]


class _Cpu:
    """CPU seconds of everything a burst keeps busy, by part. The PostgreSQL backends are
    listed again at every sample: a worker thread may open a connection mid-burst, and a
    backend that is new since the last sample counts from zero (its start is the burst's)."""

    def __init__(self, gunicorn: int, db_url: str, redis_pid: int | None) -> None:
        self.gunicorn, self.db_url, self.redis_pid = gunicorn, db_url, redis_pid

    def sample(self) -> dict[str, float]:
        return {
            "gunicorn": _cpu_seconds(self.gunicorn),
            "postgres": _proc_cpu(_postgres_pids(self.db_url)),
            "redis": _proc_cpu([self.redis_pid]) if self.redis_pid else 0.0,
            "loadgen": time.process_time(),
        }


def _measure(port: int, raw: list[bytes], cpu: _Cpu) -> dict[str, Any]:
    before, load = cpu.sample(), _load()
    began = time.perf_counter()
    latencies, statuses = asyncio.run(_burst(port, raw))
    wall = time.perf_counter() - began
    after = cpu.sample()
    n = len(raw)
    per = {k: (after[k] - before[k]) / n * 1000 for k in before}
    total = sum(per.values())
    return {
        "ok": sum(1 for s in statuses if s == 200),
        "statuses": sorted(set(statuses)),
        "wall_s": wall,
        "p50_ms": percentile(latencies, 50) * 1000,
        "p95_ms": percentile(latencies, 95) * 1000,
        "p99_ms": percentile(latencies, 99) * 1000,
        "max_ms": max(latencies) * 1000,
        "cpu_ms_per_request": per,
        "total_cpu_ms_per_request": total,
        # CPU-bound on idle cores: the burst ends when all of its work is done.
        "idle_estimate_ms": total * n / CORES,
        "load_average_before": load,
    }


CORES = os.cpu_count() or 1


def _stored(db_url: str) -> dict[str, int]:
    from sqlalchemy import create_engine, func, select

    from helpdesk.models import CareTask, SurveyResponse

    engine = create_engine(db_url)
    try:
        with engine.connect() as conn:
            answers = conn.scalar(select(func.count()).select_from(SurveyResponse)) or 0
            distinct = conn.scalar(select(func.count(func.distinct(SurveyResponse.invite_id))))
            writebacks = conn.scalar(
                select(func.count())
                .select_from(CareTask)
                .where(CareTask.kind == "survey-writeback", CareTask.job_id.is_not(None))
            )
    finally:
        engine.dispose()
    return {
        "answers": int(answers),
        "distinct_invites": int(distinct or 0),
        "writebacks_enqueued": int(writebacks or 0),
    }


def run(*, quick: bool) -> Outcome:
    from helpdesk import migrate

    n = 50 if quick else 200
    out = Outcome()
    data: dict[str, Any] = {"answers": n}
    out.data = data
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    flush_bench_redis()
    with postgres_store() as db_url, tempfile.TemporaryDirectory(prefix="bench-burst-") as tmp:
        migrate.upgrade(db_url)
        app = new_app(db_url)
        try:
            tokens = _invitations(app, n)
        finally:
            close_app(app)
        env = {k: v for k, v in os.environ.items() if not k.startswith("CAREDESK_")}
        env.update(
            CAREDESK_ENV="production",
            CAREDESK_SECRET_KEY=SECRET,
            # application_name: the PostgreSQL backends of this gunicorn, for their CPU.
            CAREDESK_DATABASE_URL=f"{db_url}&application_name={APP_NAME}",
            CAREDESK_REDIS_URL=REDIS_URL,
            CAREDESK_PUBLIC_URL=base,
            CAREDESK_BIND=f"127.0.0.1:{port}",
            # One address for every simulated patient: lift the per-address limit only.
            CAREDESK_SURVEY_RATE_PER_IP=str(n * 10),
            CAREDESK_SURVEY_RATE_PER_EHR=str(n * 10),
        )
        for name in ("CAREDESK_WEB_WORKERS", "CAREDESK_WEB_THREADS"):
            if name in os.environ:
                env[name] = os.environ[name]
        log_path = Path(tmp) / "gunicorn.log"
        with log_path.open("wb") as log:
            # bench.loadapp: wsgi.py's app plus the no-op route of the floor.
            proc = subprocess.Popen(  # noqa: S603 - gunicorn from our venv, fixed arguments
                [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "bench.loadapp:app"],
                cwd=ROOT,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
            try:
                _wait_ready(base, proc)
                answers = []
                with requests.Session() as http:
                    for token in tokens:
                        page = http.get(f"{base}/s/{token}", timeout=30).text
                        csrf = re.search(r'name="csrf" value="([^"]+)"', page)
                        if csrf is None:
                            raise RuntimeError("the survey form did not render")
                        answer = {"csrf": csrf.group(1), "csat": "2", "nps": "6"}
                        answer["comment"] = "Waited a long time"
                        answer["contact-ok"] = "yes"
                        answers.append(_post(port, f"/s/{token}", urlencode(answer).encode()))
                cpu = _Cpu(proc.pid, db_url, _redis_pid())
                burst = _measure(port, answers, cpu)
                floor = _measure(port, [_get(port, "/bench/noop")] * n, cpu)
            finally:
                proc.terminate()
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        stored = _stored(db_url)
    data.update(
        {
            "workers": env.get("CAREDESK_WEB_WORKERS", "gunicorn.conf.py default"),
            "threads": env.get("CAREDESK_WEB_THREADS", "gunicorn.conf.py default"),
            **burst,
            "caredesk_cpu_ms_per_answer": burst["cpu_ms_per_request"]["gunicorn"],
            "noop_floor": floor,
            **stored,
        }
    )
    lost = n - stored["distinct_invites"]
    cpu_parts = burst["cpu_ms_per_request"]
    out.rows.append(
        Row(
            SECTION,
            f"{n} simultaneous survey answers, p99 (target < 1000 ms)",
            burst["p99_ms"],
            "ms",
            note=(
                f"p50 {burst['p50_ms']:.0f} / p95 {burst['p95_ms']:.0f} / max "
                f"{burst['max_ms']:.0f} ms; {burst['ok']}/{n} answered 200 in "
                f"{burst['wall_s']:.2f} s; stored {stored['answers']}, lost {lost}, "
                f"write-backs queued {stored['writebacks_enqueued']}; machine load "
                f"{burst['load_average_before']:.1f} before the burst"
            ),
        )
    )
    out.rows.append(
        Row(
            SECTION,
            "CPU per survey answer (gunicorn + PostgreSQL + Redis + load generator)",
            burst["total_cpu_ms_per_request"],
            "ms",
            note=(
                f"CareDesk (gunicorn) {cpu_parts['gunicorn']:.1f}, PostgreSQL backends "
                f"{cpu_parts['postgres']:.1f}, Redis {cpu_parts['redis']:.1f}, load generator "
                f"{cpu_parts['loadgen']:.1f} ms; on {CORES} idle cores the burst's p99 would "
                f"be about {burst['idle_estimate_ms']:.0f} ms (total CPU x {n} / {CORES})"
            ),
        )
    )
    floor_cpu = floor["cpu_ms_per_request"]
    out.rows.append(
        Row(
            SECTION,
            f"floor: {n} simultaneous no-op requests, same gunicorn, p99",
            floor["p99_ms"],
            "ms",
            note=(
                f"gunicorn + HTTP + Flask + CareDesk's hooks: {floor_cpu['gunicorn']:.1f} ms "
                f"CPU per request (load generator {floor_cpu['loadgen']:.1f}); idle estimate "
                f"{floor['idle_estimate_ms']:.0f} ms; {floor['ok']}/{n} answered 200; machine "
                f"load {floor['load_average_before']:.1f}"
            ),
        )
    )
    return out
