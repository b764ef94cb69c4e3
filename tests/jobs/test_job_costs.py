"""What a job costs, pinned (issue 16): each test fails if its optimisation is undone.

- the worker runs jobs in one process (no fork per job), so what one job built (database
  and HTTP connections, compiled statements, model classes) serves the next;
- a survey write-back's first attempt is one EHR request (a conditional create), not a
  search and a create;
- the store statements of a write-back job, on one connection checkout per job, with the
  outcome committed without waiting for PostgreSQL's WAL flush;
- the EHR client reads the environment's proxy settings once per host, not per request,
  and never looks up ~/.netrc (nor lets a netrc entry replace CareDesk's credentials);
- no SQL statement is built per job: each is built once per process and bound anew;
- the answer's query reads only the columns the write-back needs: not the registration's
  check report (only its write-back entry) nor the signing keys' public JWKs;
- a write-back validates no QuestionnaireResponse with fhir.resources at run time (what
  that checked is proven for every answer the form accepts, in
  tests/survey/test_writeback_resource.py), and reads CareDesk's Questionnaire into
  forms once per process and language, not twice per job.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import requests
from fhir.resources.R4B.questionnaireresponse import QuestionnaireResponse
from psycopg.pq import TransactionStatus
from rq.job import Job
from sqlalchemy import event

from fhir_mappers import survey as survey_mapper
from helpdesk import ehr
from helpdesk import surveys as domain
from helpdesk.db import get_store
from helpdesk.ehr import clients
from helpdesk.models import CareTask, EhrRegistration, SigningKey, SurveyResponse
from helpdesk.tasks import new_task as create_task
from helpdesk.timeutil import utcnow
from jobs import outbox
from jobs.queue import get_queue, get_queue_state
from jobs.worker import EmbeddedWorker
from sandbox.testing import SandboxHandle, running_sandbox
from tests.jobs.conftest import JOB_CONFIG, SECRET, run_burst
from tests.survey.conftest import make_invite, register_backend_ehr

ANSWERS = {"csat": "4", "nps": 9, "comment": "ok", "contact-ok": False}


@pytest.fixture
def sandbox() -> Iterator[SandboxHandle]:
    with running_sandbox() as sb:
        yield sb


def _writebacks(app, reg_id: int, count: int) -> list[int]:  # type: ignore[no-untyped-def]
    """Answered invitations with their write-back task, queued as record_answer does."""
    ids = []
    with app.app_context():
        for _ in range(count):
            _, invite_id = make_invite(app, reg_id, status="answered")
            with get_store(app).session() as session:
                response = SurveyResponse(
                    invite_id=invite_id, answers=ANSWERS, csat=4, nps=9, contact_ok=False
                )
                session.add(response)
                session.flush()
                task = create_task(
                    session,
                    registration_id=reg_id,
                    kind=domain.WRITEBACK_KIND,
                    patient_ref="Patient/pat-001",
                    payload={"response_id": response.id},
                    dedupe_key=domain.writeback_key(response.id),
                )
                session.flush()
                ids.append(task.id)
        outbox.dispatch(ids, app=app)
    return ids


def _queued(make_app, pg_url: str, sandbox: SandboxHandle, count: int):  # type: ignore[no-untyped-def]
    """An app on PostgreSQL with a backend-services EHR and ``count`` write-backs queued."""
    app = make_app(DATABASE_URL=pg_url, SECRET_KEY=SECRET, **JOB_CONFIG)
    reg_id = register_backend_ehr(app, sandbox)
    return app, reg_id, _writebacks(app, reg_id, count)


def _work(app) -> None:  # type: ignore[no-untyped-def]
    """Drain the queues with the production worker class, in this process."""
    state = get_queue_state(app)
    worker = EmbeddedWorker(
        [state.queue(n) for n in state.queue_names], connection=state.connection, app=app
    )
    worker.work(burst=True, with_scheduler=False, logging_level="WARNING")


def _statuses(app, ids: list[int]) -> set[str]:  # type: ignore[no-untyped-def]
    with get_store(app).session() as session:
        return {session.get(CareTask, i).status for i in ids}


def test_the_worker_runs_its_jobs_in_one_process(job_app) -> None:
    jobs = [get_queue(app=job_app).enqueue("os.getpid") for _ in range(3)]
    run_burst(job_app)
    pids = {
        Job.fetch(j.id, connection=get_queue_state(job_app).connection).return_value() for j in jobs
    }
    # One worker process ran all three: no work horse forked per job.
    assert len(pids) == 1 and None not in pids


def test_a_first_write_back_is_one_ehr_request_on_one_connection_each(
    make_app, pg_url, sandbox
) -> None:
    app, reg_id, ids = _queued(make_app, pg_url, sandbox, 5)
    store = get_store(app)
    store.engine.dispose()
    opened: list[object] = []
    checkouts: list[object] = []
    trips: list[str] = []
    event.listen(store.engine, "connect", lambda *a: opened.append(a))
    event.listen(store.engine, "checkout", lambda *a: checkouts.append(a))

    def count(conn, cursor, statement, *rest) -> None:  # type: ignore[no-untyped-def]
        raw = conn.connection.dbapi_connection
        if not raw.autocommit and raw.info.transaction_status == TransactionStatus.IDLE:
            trips.append("BEGIN")  # psycopg sends it, a round trip of its own, first
        trips.append(statement.split(None, 1)[0].upper())

    def committed(conn) -> None:  # type: ignore[no-untyped-def]
        # A COMMIT goes to the server only from inside a transaction (not in autocommit).
        if conn.connection.dbapi_connection.info.transaction_status != TransactionStatus.IDLE:
            trips.append("COMMIT")

    event.listen(store.engine, "before_cursor_execute", count)
    event.listen(store.engine, "commit", committed)
    sandbox.clear_requests()
    _work(app)
    checked_out = len(checkouts)
    assert _statuses(app, ids) == {"done"}
    requests_made = [
        (r["method"], r["path"].rsplit("/", 1)[-1])
        for r in sandbox.requests()
        if "/fhir/" in r["path"] and not r["path"].endswith(("metadata", "smart-configuration"))
    ]
    # Create with If-None-Exist only: no search before the first attempt's create.
    assert requests_made == [("POST", "QuestionnaireResponse")] * 5
    # One database connection (pool_pre_ping's ping aside) served every job, checked out
    # once per job: the claim's transaction and the work's share it (one ping, not two).
    assert len(opened) == 1
    assert checked_out == 5
    # Per job, five round trips to the store (eleven before issue 16's second pass): the
    # claim and its attempt row as one statement that commits by itself (WITH .. UPDATE ..
    # INSERT); one query for the answer, its invitation and the registration with its
    # signing keys; the outcome (the answer written, the task done, the attempt closed,
    # no wait for the WAL flush) as one statement, and its COMMIT. No re-read of the task,
    # no separate queries for the invitation, the registration or its keys, no UPDATE
    # per row, no SET.
    one_job = ["WITH", "BEGIN", "SELECT", "WITH", "COMMIT"]
    assert trips[: 5 * len(one_job)] == one_job * 5, trips
    http = clients(app).http(reg_id)
    pools = http.get_adapter(sandbox.fhir_base).poolmanager.pools
    # One HTTP connection to the EHR, kept alive from job to job.
    assert [pools[key].num_connections for key in pools.keys()] == [1]


def test_a_write_back_job_builds_no_sql_statement(make_app, pg_url, sandbox) -> None:
    app, reg_id, ids = _queued(make_app, pg_url, sandbox, 1)
    executed: list[object] = []

    def record(conn, statement, *rest) -> None:  # type: ignore[no-untyped-def]
        executed.append(statement)

    engine = get_store(app).engine
    event.listen(engine, "before_execute", record)
    try:
        _work(app)  # the first job of a process: what it runs, every later one re-uses
        first = list(executed)
        more = _writebacks(app, reg_id, 3)
        executed.clear()
        _work(app)
    finally:
        event.remove(engine, "before_execute", record)
    assert _statuses(app, ids + more) == {"done"}
    # The claim with its attempt, the answer's query, the outcome.
    assert len(executed) == 3 * 3
    # The very statement objects of the first job, bound to new values: none built anew
    # (building one, and computing the cache key SQLAlchemy finds its compiled form by,
    # cost a job more than running it).
    assert all(any(s is f for f in first) for s in executed), executed


class _CountingValidator:
    """Stands in for a model's pydantic validator, counting what it validates (every
    strict path goes through it: ``model_validate``, the constructor, JSON)."""

    def __init__(self, real: object) -> None:
        self.real = real
        self.calls: list[str] = []

    def __getattr__(self, name: str) -> object:
        attr = getattr(self.real, name)
        if not name.startswith("validate") or not callable(attr):
            return attr

        def counted(*args: object, **kwargs: object) -> object:
            self.calls.append(name)
            return attr(*args, **kwargs)

        return counted


def test_a_write_back_validates_no_resource_strictly(
    make_app, pg_url, sandbox, monkeypatch
) -> None:
    app, reg_id, ids = _queued(make_app, pg_url, sandbox, 3)
    counting = _CountingValidator(QuestionnaireResponse.__pydantic_validator__)
    monkeypatch.setattr(QuestionnaireResponse, "__pydantic_validator__", counting)
    forms: list[object] = []
    real_to_form = survey_mapper.to_form

    def to_form(questionnaire, language):  # type: ignore[no-untyped-def]
        forms.append(language)
        return real_to_form(questionnaire, language)

    monkeypatch.setattr(survey_mapper, "to_form", to_form)
    domain.response_forms.cache_clear()
    sandbox.clear_requests()
    _work(app)
    assert _statuses(app, ids) == {"done"}
    assert len([r for r in sandbox.requests() if r["method"] == "POST"]) >= 3
    # The resource is built from answers the form accepted (proven valid R4B for every
    # one of them); the EHR's own 4xx still fails a job whose resource it refuses.
    assert counting.calls == []
    # The Questionnaire is read into forms by the first job only (the form the patient
    # answered and the original texts), not twice per job.
    assert forms == ["en", None]


def test_the_ehr_client_reads_proxy_settings_once_per_host(
    make_app, pg_url, sandbox, monkeypatch
) -> None:
    app, reg_id, ids = _queued(make_app, pg_url, sandbox, 5)
    lookups: list[str] = []
    real = ehr.get_environ_proxies

    def counted(url: str, no_proxy: str | None = None) -> dict[str, str]:
        lookups.append(url)
        return real(url, no_proxy=no_proxy)

    monkeypatch.setattr(ehr, "get_environ_proxies", counted)
    sandbox.clear_requests()
    _work(app)
    assert _statuses(app, ids) == {"done"}
    assert len([r for r in sandbox.requests() if r["method"] == "POST"]) >= 5
    # requests would look them up for each of the five creates (and the token request).
    assert len(lookups) == 1


def test_a_write_back_job_looks_up_no_netrc(make_app, pg_url, sandbox, monkeypatch) -> None:
    app, reg_id, ids = _queued(make_app, pg_url, sandbox, 3)
    lookups: list[str] = []
    real = requests.sessions.get_netrc_auth

    def counted(url: str, raise_errors: bool = False) -> tuple[str, str] | None:
        lookups.append(url)
        return real(url, raise_errors)

    sandbox.clear_requests()
    monkeypatch.setattr(requests.sessions, "get_netrc_auth", counted)
    _work(app)
    during = list(lookups)  # not the test's own requests to the sandbox's admin API
    assert _statuses(app, ids) == {"done"}
    assert len([r for r in sandbox.requests() if r["method"] == "POST"]) >= 3
    # requests would look it up for each create, and for the first job's discovery and
    # token request: each request to the EHR carries its own credentials.
    assert during == []


def test_a_netrc_entry_never_replaces_the_ehr_sessions_credentials(tmp_path, monkeypatch) -> None:
    netrc = tmp_path / "netrc"
    netrc.write_text("machine ehr.example.org login someone password pw\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))

    def request() -> requests.Request:
        # As the token endpoint's client assertion or a token request would go: no auth.
        return requests.Request(
            "GET", "https://ehr.example.org/fhir/Patient/1", headers={"Authorization": "Bearer t"}
        )

    # What requests does by itself: the login from the file instead of the token.
    plain = requests.Session().prepare_request(request())
    assert plain.headers["Authorization"].startswith("Basic ")
    ours = ehr.EhrClients().http(1).prepare_request(request())
    assert ours.headers["Authorization"] == "Bearer t"


@pytest.mark.parametrize(
    "url",
    ["http://ehr.example.org/fhir/Patient/1", "https://inside.example.net/fhir/metadata"],
)
def test_the_ehr_client_honours_proxy_settings_as_requests_does(monkeypatch, url: str) -> None:
    monkeypatch.setenv("HTTP_PROXY", "http://proxy.example.com:3128")
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.example.com:3129")
    monkeypatch.setenv("NO_PROXY", "inside.example.net")
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", "/etc/ssl/certs/ca-certificates.crt")
    ours = ehr.EhrClients().http(1)
    plain = requests.Session()
    for _ in range(2):  # the second time from what the first one kept
        assert ours.merge_environment_settings(url, {}, None, None, None) == (
            plain.merge_environment_settings(url, {}, None, None, None)
        )


def test_a_write_back_parses_no_scope_and_builds_no_loader_option(
    make_app, pg_url, sandbox, monkeypatch
) -> None:
    from jobs import context
    from smart_launch import scopes

    app, reg_id, ids = _queued(make_app, pg_url, sandbox, 1)
    _work(app)  # the first job of a process: its token, its registration's scopes
    more = _writebacks(app, reg_id, 3)
    parsed: list[str] = []
    real_parse = scopes.parse_resource_scope

    def parse(scope: str):  # type: ignore[no-untyped-def]
        parsed.append(scope)
        return real_parse(scope)

    def no_option(*args: object) -> object:
        raise AssertionError("a loader option built per job")

    monkeypatch.setattr(scopes, "parse_resource_scope", parse)
    monkeypatch.setattr(context, "joinedload", no_option)
    _work(app)
    assert _statuses(app, ids + more) == {"done"}
    # The backend token's cache key is the registration's scopes translated for the EHR:
    # translated once per process (smart_launch.scopes.translate), not twice per job.
    assert parsed == []


def test_a_write_back_with_its_token_cached_decrypts_no_private_key(
    make_app, pg_url, sandbox, monkeypatch
) -> None:
    from helpdesk.crypto import Vault

    app, reg_id, ids = _queued(make_app, pg_url, sandbox, 1)
    decrypted: list[bytes] = []
    real = Vault.decrypt

    def decrypt(self: Vault, token: bytes) -> str:
        decrypted.append(token)
        return real(self, token)

    monkeypatch.setattr(Vault, "decrypt", decrypt)
    _work(app)  # the first job fetches the backend token: it signs, so it decrypts the key
    assert len(decrypted) == 1
    more = _writebacks(app, reg_id, 3)
    decrypted.clear()
    _work(app)
    assert _statuses(app, ids + more) == {"done"}
    # The token is cached: the signing key stays sealed (it was decrypted once per job).
    assert decrypted == []


def test_the_answer_query_reads_neither_the_check_report_nor_the_public_keys(
    make_app, pg_url, sandbox
) -> None:
    app, reg_id, ids = _queued(make_app, pg_url, sandbox, 2)
    with app.app_context(), get_store(app).session() as session:
        # A check report that says nothing of the write-back, as a real one would.
        reg = session.get(EhrRegistration, reg_id)
        reg.capabilities = {"lines": [{"name": f"line {i}", "status": "ok"} for i in range(50)]}
        # And a rotated key beside the one it signs with: the keys' rows repeat the answer.
        key = reg.signing_keys[0]
        reg.signing_keys.append(
            SigningKey(
                kid=key.kid + "-old",
                alg=key.alg,
                private_key_enc=key.private_key_enc,
                public_jwk=key.public_jwk,
                retired_at=utcnow(),
            )
        )
        session.commit()
    columns: list[list[str]] = []

    def record(conn, cursor, statement, *rest) -> None:  # type: ignore[no-untyped-def]
        if statement.lstrip().upper().startswith("SELECT") and "survey_response" in statement:
            columns.append([d.name for d in cursor.description])

    engine = get_store(app).engine
    event.listen(engine, "after_cursor_execute", record)
    try:
        _work(app)
    finally:
        event.remove(engine, "after_cursor_execute", record)
    assert _statuses(app, ids) == {"done"}
    assert len(columns) == 2, columns  # one query per job: nothing left out was read later
    for names in columns:
        # Neither decoded per job: the write-back needs one entry of the report (there
        # "write_back") and signs with the private keys.
        assert "capabilities" not in names and "public_jwk" not in names, names
        assert "write_back" in names
        assert len(names) <= 32, names  # of 61
