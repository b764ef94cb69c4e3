"""7. A burst of survey answers: N patients press "Send my answers" at the same moment.

CareDesk runs as in production: ``CAREDESK_ENV=production``, the repository's
gunicorn.conf.py (its workers and threads), PostgreSQL, Redis; the per-address survey limit
is raised, since every simulated patient here shares one address (behind a proxy with
``CAREDESK_PROXY_FIX`` each would have their own). N sent invitations are stored first and
each patient's form page is loaded (its CSRF token); then N connections send their answer
at once (asyncio, raw HTTP/1.1 over loopback, so the load generator costs little CPU).
Measured per answer: from connect to the whole response. Then the store is checked:
every answer is stored once, with its write-back task queued (nothing lost).
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


async def _answer(port: int, token: str, body: bytes, gate: asyncio.Event) -> tuple[float, int]:
    await gate.wait()
    t0 = time.perf_counter()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(
        (
            f"POST /s/{token} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            "Content-Type: application/x-www-form-urlencoded\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
        ).encode()
        + body
    )
    await writer.drain()
    response = await reader.read()
    elapsed = time.perf_counter() - t0
    writer.close()
    status = int(response.split(b" ", 2)[1]) if response.startswith(b"HTTP/") else 0
    return elapsed, status


async def _burst(port: int, forms: list[tuple[str, bytes]]) -> tuple[list[float], list[int]]:
    gate = asyncio.Event()
    tasks = [asyncio.create_task(_answer(port, t, b, gate)) for t, b in forms]
    await asyncio.sleep(0.1)  # every coroutine is waiting at the gate
    gate.set()
    results = await asyncio.gather(*tasks)
    return [r[0] for r in results], [r[1] for r in results]


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
            CAREDESK_DATABASE_URL=db_url,
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
            proc = subprocess.Popen(  # noqa: S603 - gunicorn from our venv, fixed arguments
                [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "wsgi:app"],
                cwd=ROOT,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
            try:
                _wait_ready(base, proc)
                forms = []
                with requests.Session() as http:
                    for token in tokens:
                        page = http.get(f"{base}/s/{token}", timeout=30).text
                        csrf = re.search(r'name="csrf" value="([^"]+)"', page)
                        if csrf is None:
                            raise RuntimeError("the survey form did not render")
                        answer = {"csrf": csrf.group(1), "csat": "2", "nps": "6"}
                        answer["comment"] = "Waited a long time"
                        answer["contact-ok"] = "yes"
                        forms.append((token, urlencode(answer).encode()))
                cpu_before, load_before = _cpu_seconds(proc.pid), _load()
                began = time.perf_counter()
                latencies, statuses = asyncio.run(_burst(port, forms))
                wall = time.perf_counter() - began
                cpu = _cpu_seconds(proc.pid) - cpu_before
            finally:
                proc.terminate()
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        stored = _stored(db_url)
    ok = sum(1 for s in statuses if s == 200)
    data.update(
        {
            "workers": env.get("CAREDESK_WEB_WORKERS", "gunicorn.conf.py default"),
            "threads": env.get("CAREDESK_WEB_THREADS", "gunicorn.conf.py default"),
            "ok": ok,
            "statuses": sorted(set(statuses)),
            "wall_s": wall,
            "p50_ms": percentile(latencies, 50) * 1000,
            "p95_ms": percentile(latencies, 95) * 1000,
            "p99_ms": percentile(latencies, 99) * 1000,
            "max_ms": max(latencies) * 1000,
            "caredesk_cpu_ms_per_answer": cpu / n * 1000,
            "load_average_before": load_before,
            **stored,
        }
    )
    lost = n - stored["distinct_invites"]
    out.rows.append(
        Row(
            SECTION,
            f"{n} simultaneous survey answers, p99 (target < 1000 ms)",
            data["p99_ms"],
            "ms",
            note=(
                f"p50 {data['p50_ms']:.0f} / p95 {data['p95_ms']:.0f} / max "
                f"{data['max_ms']:.0f} ms; {ok}/{n} answered 200 in {wall:.2f} s; stored "
                f"{stored['answers']}, lost {lost}, write-backs queued "
                f"{stored['writebacks_enqueued']}; CareDesk CPU "
                f"{data['caredesk_cpu_ms_per_answer']:.1f} ms per answer (machine load "
                f"{load_before:.1f} before the burst)"
            ),
        )
    )
    return out
