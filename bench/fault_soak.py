"""6. Fault soak: mixed jobs under random worker kills, Redis restarts and EHR faults.

Each round queues a mix of CareTasks (two survey write-backs, a referral, an SMS
follow-up; one of them due a second or two later, so RQ's scheduler is in the path) and
sets random EHR knobs on the sandbox (503s, 429 with Retry-After, latency). Then, at a
random moment, it may SIGKILL a worker with its scheduler (the process group, as a lost
machine or the OOM killer would) or kill and restart Redis (a throwaway ``redis-server``
this module starts on a port of its own, without persistence: everything in it is lost;
never the shared Redis). A killed worker is started again, as a supervisor would, and
the sweeper runs every second, as the cron does (more often).

After the last round the faults stop and everything drains. Then every task is checked
against what the EHR and the store hold:

- lost: a task that never finished, or finished without its effect (no
  QuestionnaireResponse with the answer's identifier, no ServiceRequest with the
  referral's identifier, no stored message for the follow-up);
- duplicated: an effect made twice (two resources with one identifier, two messages for
  one follow-up) or a task whose attempts say it ran to completion twice.

Both must be 0. ``run_soak`` is also what tests/jobs/test_fault_soak.py runs, sampled.
"""

from __future__ import annotations

import datetime as dt
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis
import requests

from bench.common import ROOT, SECRET, Outcome, Row, close_app, new_app, postgres_store

SCOPES = (
    "system/Patient.rs system/Appointment.rs system/Practitioner.rs "
    "system/QuestionnaireResponse.crs system/ServiceRequest.cus system/Task.cus"
)
CLIENT = "caredesk-soak"
# Short heartbeats, retries and sweep grace so a round recovers in seconds; many attempts
# so that injected faults alone never exhaust a task (a task that gives up is reported).
CONFIG = {
    "TASK_LEASE_SECONDS": 2,
    "TASK_SWEEP_GRACE_SECONDS": 1,
    "RETRY_BASE_SECONDS": 1,
    "RETRY_MAX_SECONDS": 4,
    "CLINIC_NAME": "Soak Clinic",
}
MAX_ATTEMPTS = 12
TERMINAL = {"done", "waiting", "failed", "cancelled", "needs-authorization"}
ANSWERS = {"csat": "4", "nps": 9, "comment": "fine", "contact-ok": False}


@dataclass
class SoakResult:
    rounds: int = 0
    tasks: int = 0
    worker_kills: int = 0
    worker_restarts: int = 0
    redis_restarts: int = 0
    lost: list[int] = field(default_factory=list)
    duplicated: list[int] = field(default_factory=list)
    gave_up: list[int] = field(default_factory=list)
    seconds: float = 0.0
    kinds: dict[str, int] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


# --- a Redis of our own ---------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ThrowawayRedis:
    """A redis-server on a free port, without persistence, that can be killed and started
    again (losing everything) while clients stay pointed at it."""

    def __init__(self, workdir: Path) -> None:
        self.port = _free_port()
        self.dir = workdir
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed (make services installs it)")
        self.proc = subprocess.Popen(  # noqa: S603 - a fixed binary and arguments
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", ""]
            + ["--appendonly", "no", "--dir", str(self.dir)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                conn = redis.Redis(port=self.port, socket_connect_timeout=0.2)
                conn.ping()
                conn.close()
                return
            except redis.exceptions.ConnectionError:
                time.sleep(0.05)
        raise RuntimeError("the soak's redis-server did not start")

    def crash(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def restart(self) -> None:
        self.crash()
        self.start()


# --- workers, supervised ----------------------------------------------------------------


class Workers:
    """`caredesk worker` processes (with RQ's scheduler), restarted when they exit."""

    def __init__(self, env: dict[str, str], count: int, log_dir: Path) -> None:
        self.env = env
        self.log_dir = log_dir
        self.procs: list[subprocess.Popen[bytes] | None] = [None] * count
        self.restarts = 0

    def _start(self, slot: int) -> None:
        log = (self.log_dir / f"soak-worker-{slot}.log").open("ab")
        self.procs[slot] = subprocess.Popen(  # noqa: S603 - our own CLI, fixed arguments
            [sys.executable, "-m", "plugin.cli", "worker"],
            cwd=ROOT,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()

    def supervise(self) -> None:
        for slot, proc in enumerate(self.procs):
            if proc is None:
                self._start(slot)
            elif proc.poll() is not None:
                self.restarts += 1
                self._start(slot)

    def kill(self, slot: int) -> None:
        proc = self.procs[slot]
        if proc is not None and proc.poll() is None:
            # The worker's process group: the worker and its scheduler process.
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()

    def stop(self) -> None:
        for proc in self.procs:
            if proc is not None and proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.procs:
            if proc is None:
                continue
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


# --- the tasks ----------------------------------------------------------------------------


def _register(app: Any, sb: Any) -> int:
    from helpdesk import registry
    from helpdesk.crypto import get_vault
    from helpdesk.db import get_store
    from helpdesk.models import SigningKey
    from smart_launch.keys import generate_signing_key

    key = generate_signing_key("RS384")
    sb.register_client(
        {
            "client_id": CLIENT,
            "type": "confidential-asymmetric",
            "jwks": {"keys": [key.public_jwk()]},
            "backend": True,
        }
    )
    with app.app_context(), get_store(app).session() as session:
        reg = registry.upsert(
            session,
            get_vault(app),
            slug="soak",
            iss=sb.fhir_base,
            client_id=CLIENT,
            client_type="confidential-asymmetric",
            backend_client_id=CLIENT,
            backend_scopes=SCOPES,
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


def _queue_round(app: Any, reg_id: int, rng: random.Random) -> dict[int, str]:
    """One round's tasks (id -> kind), committed, then dispatched."""
    from helpdesk import surveys as domain
    from helpdesk.db import get_store
    from helpdesk.models import SurveyInvite, SurveyResponse
    from helpdesk.tasks import new_task
    from jobs import outbox

    now = dt.datetime.now(dt.UTC)
    later = now + dt.timedelta(seconds=rng.choice((1, 2)))
    delayed = rng.randrange(4)
    made: dict[int, str] = {}
    with app.app_context():
        with get_store(app).session() as session:
            specs: list[tuple[str, dict[str, Any], str | None, str]] = []
            for _ in range(2):
                invite = SurveyInvite(
                    id=uuid.uuid4().hex,
                    registration_id=reg_id,
                    patient_ref="Patient/pat-001",
                    appointment_ref="Appointment/appt-pat-001-past",
                    encounter_ref="Encounter/enc-pat-001-past",
                    language="en",
                    timezone="America/Chicago",
                    token_hash=uuid.uuid4().hex,
                    status="answered",
                    sent_at=now - dt.timedelta(hours=2),
                    expires_at=now + dt.timedelta(days=7),
                    answered_at=now,
                    visit_at=now - dt.timedelta(hours=5),
                    channel="sms",
                )
                session.add(invite)
                session.flush()
                response = SurveyResponse(
                    invite_id=invite.id, answers=ANSWERS, csat=4, nps=9, contact_ok=False
                )
                session.add(response)
                session.flush()
                specs.append(
                    (
                        domain.WRITEBACK_KIND,
                        {"response_id": response.id},
                        domain.writeback_key(response.id),
                        "Patient/pat-001",
                    )
                )
            specs.append(
                (
                    "referral",
                    {"reason": "knee pain", "target": {"specialty": "Orthopedics"}},
                    None,
                    "Patient/pat-001",
                )
            )
            specs.append(
                ("follow-up", {"reason": "lab results", "channel": "sms"}, None, "Patient/pat-002")
            )
            for i, (kind, payload, key, patient) in enumerate(specs):
                task = new_task(
                    session,
                    registration_id=reg_id,
                    kind=kind,
                    patient_ref=patient,
                    payload=payload,
                    dedupe_key=key,
                    due_at=later if i == delayed else None,
                    max_attempts=MAX_ATTEMPTS,
                )
                assert task is not None
                session.flush()
                made[task.id] = kind
        # dispatch never raises for Redis trouble: the sweeper enqueues what it could not.
        outbox.dispatch(list(made), app=app)
    return made


def _statuses(app: Any, ids: list[int]) -> dict[int, str]:
    from sqlalchemy import select

    from helpdesk.db import get_store
    from helpdesk.models import CareTask

    with get_store(app).session() as session:
        rows = session.execute(select(CareTask.id, CareTask.status).where(CareTask.id.in_(ids)))
        return {int(i): str(s) for i, s in rows}


def _sweep(app: Any) -> None:
    from jobs.outbox import sweep

    try:
        with app.app_context():
            sweep(app)
    except redis.exceptions.RedisError:
        pass  # Redis is restarting: the next sweep does it


def _reader_token(sb: Any) -> str:
    from smart_launch.backend import backend_token
    from smart_launch.config import Registration
    from smart_launch.discovery import discover
    from smart_launch.keys import generate_signing_key

    key = generate_signing_key("RS384")
    sb.register_client(
        {
            "client_id": "soak-reader",
            "type": "confidential-asymmetric",
            "jwks": {"keys": [key.public_jwk()]},
            "backend": True,
        }
    )
    reg = Registration(
        id="soak-reader",
        iss=sb.fhir_base,
        client_id="soak-reader",
        client_type="confidential-asymmetric",
        scopes="",
        redirect_uri=None,
        signing_keys=(key,),
        backend_client_id="soak-reader",
        backend_scopes="system/QuestionnaireResponse.rs system/ServiceRequest.rs",
    )
    with requests.Session() as http:
        return backend_token(reg, discover(reg, http=http), http=http).access_token


def _count(http: requests.Session, sb: Any, rtype: str, identifier: str) -> int:
    resp = http.get(f"{sb.fhir_base}/{rtype}", params={"identifier": identifier}, timeout=30)
    resp.raise_for_status()
    return len(resp.json().get("entry") or [])


def _check(app: Any, sb: Any, tasks: dict[int, str], result: SoakResult) -> None:
    """Every task against the EHR's and the store's records (see the module docstring)."""
    from sqlalchemy import func, select

    from helpdesk.db import get_store
    from helpdesk.models import CareTask, OutboundMessage, SurveyResponse, TaskAttempt
    from jobs.referral import IDENTIFIER_SYSTEM

    system = str(app.config["SURVEY_IDENTIFIER_SYSTEM"])
    sb.set_knobs(latency_ms=0, error_rate=0.0, rate_limit=None, fail_next=[])
    with requests.Session() as http, get_store(app).session() as session:
        http.headers["Authorization"] = f"Bearer {_reader_token(sb)}"
        for task_id, kind in sorted(tasks.items()):
            task = session.get(CareTask, task_id)
            assert task is not None
            completed = session.scalar(
                select(func.count()).where(
                    TaskAttempt.task_id == task_id, TaskAttempt.outcome == "done"
                )
            )
            if kind == "survey-writeback":
                response = session.get(SurveyResponse, int(task.payload["response_id"]))
                assert response is not None
                made = _count(http, sb, "QuestionnaireResponse", f"{system}|{response.invite_id}")
            elif kind == "referral":
                made = _count(http, sb, "ServiceRequest", f"{IDENTIFIER_SYSTEM}|task-{task_id}")
            else:
                made = int(
                    session.scalar(
                        select(func.count()).where(
                            OutboundMessage.task_id == task_id, OutboundMessage.status == "sent"
                        )
                    )
                    or 0
                )
            if made > 1 or (completed or 0) > 1:
                result.duplicated.append(task_id)
            if task.status == "failed":
                result.gave_up.append(task_id)
            elif task.status not in TERMINAL or made == 0:
                result.lost.append(task_id)


def run_soak(
    rounds: int,
    *,
    seed: int = 12,
    workers: int = 2,
    kill_rate: float = 0.35,
    redis_restart_rate: float = 0.12,
    drain_s: float = 90.0,
    log_dir: Path | None = None,
) -> SoakResult:
    from helpdesk import migrate
    from sandbox.testing import running_sandbox

    rng = random.Random(seed)  # noqa: S311 - reproducible faults, not secrets
    result = SoakResult()
    started = time.monotonic()
    with (
        tempfile.TemporaryDirectory(prefix="caredesk-soak-") as tmp,
        postgres_store() as db_url,
        running_sandbox(in_process=False) as sb,
    ):
        logs = log_dir or Path(tmp)
        rs = ThrowawayRedis(Path(tmp))
        rs.start()
        migrate.upgrade(db_url)
        app = new_app(db_url, REDIS_URL=rs.url, **CONFIG)
        env = {k: v for k, v in os.environ.items() if not k.startswith("CAREDESK_")}
        env.update(
            CAREDESK_ENV="test",
            CAREDESK_SECRET_KEY=SECRET,
            CAREDESK_DATABASE_URL=db_url,
            CAREDESK_REDIS_URL=rs.url,
            CAREDESK_JOB_HANDLER_MODULES="jobs.survey",
            CAREDESK_LOG_LEVEL="WARNING",
            PYTHONUNBUFFERED="1",
            **{f"CAREDESK_{k}": str(v) for k, v in CONFIG.items()},
        )
        pool = Workers(env, workers, logs)
        tasks: dict[int, str] = {}
        try:
            reg_id = _register(app, sb)
            pool.supervise()
            for _ in range(rounds):
                sb.set_knobs(
                    latency_ms=rng.choice((0, 0, 10, 50)),
                    error_rate=rng.choice((0.0, 0.1, 0.25)),
                    rate_limit=rng.choice((None, None, {"every": 5, "retry_after": 1})),
                )
                made = _queue_round(app, reg_id, rng)
                tasks.update(made)
                result.rounds += 1
                time.sleep(rng.uniform(0.0, 0.8))
                roll = rng.random()
                if roll < kill_rate:
                    pool.kill(rng.randrange(workers))
                    result.worker_kills += 1
                elif roll < kill_rate + redis_restart_rate:
                    rs.restart()
                    result.redis_restarts += 1
                # The round's own tasks may spill into the next rounds (retries, a
                # recovery after a kill); the drain at the end waits for all of them.
                deadline = time.monotonic() + 6
                while time.monotonic() < deadline:
                    pool.supervise()
                    _sweep(app)
                    if all(s in TERMINAL for s in _statuses(app, list(made)).values()):
                        break
                    time.sleep(0.5)
            sb.set_knobs(latency_ms=0, error_rate=0.0, rate_limit=None)
            deadline = time.monotonic() + drain_s
            while time.monotonic() < deadline:
                pool.supervise()
                _sweep(app)
                if all(s in TERMINAL for s in _statuses(app, list(tasks)).values()):
                    break
                time.sleep(1.0)
            _check(app, sb, tasks, result)
        finally:
            pool.stop()
            close_app(app)
            rs.crash()
        result.tasks = len(tasks)
        result.worker_restarts = pool.restarts
        for kind in tasks.values():
            result.kinds[kind] = result.kinds.get(kind, 0) + 1
    result.seconds = time.monotonic() - started
    return result


def run(*, quick: bool) -> Outcome:
    if quick:
        # A round costs seconds (worker restarts, heartbeats lapsing): 100 of them do not
        # fit in bench-quick's two minutes. tests/jobs/test_fault_soak.py samples it.
        return Outcome(
            rows=[
                Row(
                    "6 soak",
                    "fault soak: lost / duplicated work",
                    None,
                    "tasks",
                    note="not run by --quick: `make bench` runs 100 rounds; `make test` "
                    "runs a 3-round sample (tests/jobs/test_fault_soak.py)",
                )
            ]
        )
    soak = run_soak(100)
    kinds = ", ".join(f"{n} {k}" for k, n in sorted(soak.kinds.items()))
    note = (
        f"{soak.rounds} rounds, {soak.tasks} tasks ({kinds}); "
        f"{soak.worker_kills} worker SIGKILLs, {soak.redis_restarts} Redis restarts, "
        f"EHR 503/429/latency; lost {len(soak.lost)}, duplicated {len(soak.duplicated)}, "
        f"gave up {len(soak.gave_up)}; {soak.seconds:.0f} s"
    )
    return Outcome(
        rows=[
            Row(
                "6 soak",
                "fault soak: lost / duplicated work",
                float(len(soak.lost) + len(soak.duplicated)),
                "tasks",
                floor=0.0,
                note=note,
            )
        ],
        data=soak.to_json(),
    )
