"""What a survey answer costs, pinned (issue 12 §8): each test fails if a cost comes back.

200 patients answering at once must all see "thank you" within a second on two cores, so
the patient's request does only what must come before it: the link token found by its
hash (one indexed query, which also says whether the EHR takes write-backs), the answer
stored in one statement (claim the invitation, insert the answer and its write-back task
with the task's job id), the write-back enqueued, a small page. Recovery tickets and the
QuestionnaireResponse are the job's. The rate limits (per address, link and EHR) are
security and stay. (The burst itself is measured by ``make bench``, section 7.)
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from flask import template_rendered
from rq.job import Job
from sqlalchemy import event, select

from helpdesk import surveys as domain
from helpdesk.db import get_store
from helpdesk.models import CareTask, SurveyResponse
from jobs.queue import get_queue_state
from plugin.survey import csrf_token
from tests.survey.conftest import add_registration, make_invite

LOW = {"csat": "2", "nps": "6", "comment": "Waited a long time", "contact-ok": "yes"}


@pytest.fixture
def pg_survey_app(make_app, pg_url: str, survey_redis_url: str):  # type: ignore[no-untyped-def]
    """The survey page on PostgreSQL and Redis, as production runs it."""
    return make_app(DATABASE_URL=pg_url, REDIS_URL=survey_redis_url)


@pytest.fixture
def redis_sends(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[bytes]]:
    """Every write to a Redis socket (a pipeline is one), with its first command."""
    sent: list[bytes] = []
    real = redis.connection.AbstractConnection.send_packed_command

    def spy(self: Any, command: Any, check_health: bool = True) -> None:
        parts = [command] if isinstance(command, bytes | bytearray) else list(command)
        sent.append(b"".join(bytes(p) for p in parts))
        real(self, command, check_health)

    monkeypatch.setattr(redis.connection.AbstractConnection, "send_packed_command", spy)
    yield sent


def _post(app, token: str, invite_id: str):  # type: ignore[no-untyped-def]
    with app.app_context():
        csrf = csrf_token(invite_id)
    return app.test_client().post(f"/s/{token}", data={"csrf": csrf, **LOW})


def test_an_answer_is_one_transaction_of_two_statements_and_six_redis_round_trips(
    pg_survey_app, redis_sends: list[bytes]
) -> None:
    app = pg_survey_app
    reg_id = add_registration(app, "https://ehr.example/fhir")
    first = make_invite(app, reg_id)
    token, invite_id = make_invite(app, reg_id, patient_ref="Patient/pat-002")
    assert _post(app, *first).status_code == 200  # connections, scripts, compiled statements

    statements: list[str] = []
    commits: list[int] = []
    engine = get_store(app).engine
    event.listen(engine, "before_cursor_execute", lambda *a: statements.append(a[2]))
    event.listen(engine, "commit", lambda *a: commits.append(1))
    redis_sends.clear()
    page = _post(app, token, invite_id)

    assert page.status_code == 200 and "Thank you" in page.get_data(as_text=True)
    verbs = [s.split(None, 1)[0] for s in statements]
    # The invitation by token hash; then one statement claims it and inserts the answer
    # and its task with the task's job id (helpdesk.surveys._record_statement).
    assert verbs == ["SELECT", "WITH"], statements
    assert "token_hash" in statements[0] and "ehr_registration" in statements[0]
    for part in ("UPDATE survey_invite", "INSERT INTO survey_response", "INSERT INTO care_task"):
        assert part in statements[1]
    assert len(commits) == 1
    # Three rate limits (address, link, EHR), no X-RateLimit headers read back; the
    # write-back's job: RQ's queue set, the job, its per-EHR slot.
    limits = [s for s in redis_sends if b"LIMITS:LIMITER" in s]
    assert len(limits) == 3, redis_sends
    # And the patient's change stamp, renewed after the commit (one pipeline).
    assert len(redis_sends) <= 7, redis_sends

    with get_store(app).session() as s:
        response = s.scalars(
            select(SurveyResponse).where(SurveyResponse.invite_id == invite_id)
        ).one()
        task = s.scalars(
            select(CareTask).where(CareTask.dedupe_key == domain.writeback_key(response.id))
        ).one()
        assert (response.csat, response.nps, response.contact_ok) == (2, 6, True)
        assert task.kind == domain.WRITEBACK_KIND and task.status == "queued"
    # Nothing lost: the job the row names is in RQ.
    with app.app_context():
        job = Job.fetch(str(task.job_id), connection=get_queue_state(app).connection)
    assert job.args == (task.id,)


def test_no_key_derivation_on_the_answer_path(
    pg_survey_app, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A password-style KDF per answer (scrypt, PBKDF2, bcrypt-like) would cost tens of
    milliseconds each: the link token is checked by its SHA-256 and the form by an HMAC."""
    from cryptography.hazmat.primitives.kdf import hkdf, pbkdf2, scrypt
    from werkzeug import security

    app = pg_survey_app
    reg_id = add_registration(app, "https://ehr.example/fhir")
    token, invite_id = make_invite(app, reg_id)

    def refuse(*_args: Any, **_kwargs: Any) -> None:
        raise AssertionError("a key derivation function ran on the survey answer path")

    for owner, name in [
        (hashlib, "scrypt"),
        (hashlib, "pbkdf2_hmac"),
        (scrypt.Scrypt, "derive"),
        (pbkdf2.PBKDF2HMAC, "derive"),
        (hkdf.HKDF, "derive"),
        (security, "generate_password_hash"),
        (security, "check_password_hash"),
    ]:
        monkeypatch.setattr(owner, name, refuse)
    page = _post(app, token, invite_id)
    assert page.status_code == 200 and "Thank you" in page.get_data(as_text=True)
    with get_store(app).session() as s:
        assert s.scalars(select(SurveyResponse.id)).one()


def test_the_thank_you_page_is_rendered_once_per_app_and_language(pg_survey_app) -> None:
    """Its HTML says the same to every patient of a language: a burst of answers renders
    no template after the first (plugin.survey._message)."""
    app = pg_survey_app
    reg_id = add_registration(app, "https://ehr.example/fhir")
    first = make_invite(app, reg_id)
    second = make_invite(app, reg_id, patient_ref="Patient/pat-002")
    rendered: list[str] = []

    def record(_sender: Any, template: Any, **_extra: Any) -> None:
        rendered.append(str(template.name))

    with template_rendered.connected_to(record, app):
        pages = [_post(app, *first), _post(app, *second)]
    assert pages[0].get_data() == pages[1].get_data()
    assert "Thank you" in pages[1].get_data(as_text=True)
    assert rendered == ["survey/message.html"]


@pytest.mark.parametrize("store", ["sqlite", "postgresql"])
def test_an_answer_moves_its_patients_change_stamp_not_everyones(
    request: pytest.FixtureRequest, store: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The answer is written by Core statements, which the session's flush never saw: it
    moved no stamp, so the clinician's cached sidebar kept showing the invitation as
    unanswered. Now it moves the invitation's patient's stamp, and only theirs."""
    from helpdesk import stamps

    app = request.getfixturevalue("pg_survey_app" if store == "postgresql" else "survey_app")
    reg_id = add_registration(app, "https://ehr.example/fhir")
    token, invite_id = make_invite(app, reg_id, patient_ref="Patient/pat-002")
    renewed: list[set[str]] = []
    monkeypatch.setattr(stamps, "renew", lambda _conn, keys: renewed.append(set(keys)))
    assert _post(app, token, invite_id).status_code == 200
    assert renewed == [{stamps.key(reg_id, "Patient/pat-002")}]
