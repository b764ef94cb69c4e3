"""``helpdesk.surveys.record_answer`` on both stores: PostgreSQL stores an answer in one
statement (data-modifying CTEs), SQLite in four; both must leave the same rows, refuse a
second answer to one link, and queue the write-back only when something follows."""

from __future__ import annotations

import threading
from datetime import timedelta
from typing import Any

import pytest
from flask import Flask
from sqlalchemy import func, select

from fhir_mappers.survey import Answers
from helpdesk import surveys as domain
from helpdesk.db import get_store
from helpdesk.models import CareTask, SurveyInvite, SurveyResponse
from helpdesk.tasks import job_id_for
from helpdesk.timeutil import utcnow
from tests.survey.conftest import add_registration, make_invite

LOW = Answers({"csat": "2", "nps": 6, "comment": "Waited a long time", "contact-ok": True})
HIGH = Answers({"csat": "5", "nps": 10, "contact-ok": False})


@pytest.fixture
def app(make_app, store_url: str) -> Flask:  # type: ignore[no-untyped-def]
    return make_app(DATABASE_URL=store_url, TASK_QUEUE="survey-q")  # type: ignore[no-any-return]


def _record(app: Flask, token: str, answers: Answers, **kwargs: Any) -> domain.Answered:
    with app.app_context(), get_store(app).session() as session:
        invite = domain.find_by_token(session, token)
        assert invite is not None
        return domain.record_answer(session, invite, answers, now=kwargs.get("now", utcnow()))


def _counts(app: Flask) -> tuple[int, int]:
    with get_store(app).session() as s:
        return (
            s.scalar(select(func.count()).select_from(SurveyResponse)) or 0,
            s.scalar(select(func.count()).select_from(CareTask)) or 0,
        )


def test_the_answer_and_its_writeback_task_with_its_job_id_are_stored(app: Flask) -> None:
    reg_id = add_registration(app, "https://ehr.example/fhir")
    token, invite_id = make_invite(app, reg_id, patient_ref="Patient/pat-007")
    now = utcnow()
    answered = _record(app, token, LOW, now=now)
    assert answered.writeback_task_id is not None
    with get_store(app).session() as s:
        response = s.get(SurveyResponse, answered.response_id)
        task = s.get(CareTask, answered.writeback_task_id)
        invite = s.get(SurveyInvite, invite_id)
        assert response is not None and task is not None and invite is not None
        assert (response.invite_id, response.csat, response.nps, response.contact_ok) == (
            invite_id,
            2,
            6,
            True,
        )
        assert response.answers == LOW.to_json()
        assert response.comment == "Waited a long time"
        assert (response.submitted_at, response.writeback_status) == (now, "pending")
        assert (invite.status, invite.answered_at) == ("answered", now)
        assert (task.kind, task.status, task.registration_id, task.patient_ref) == (
            domain.WRITEBACK_KIND,
            "queued",
            reg_id,
            "Patient/pat-007",
        )
        assert task.payload == {"response_id": response.id}
        assert task.dedupe_key == domain.writeback_key(response.id)
        assert task.job_id == job_id_for(task.id, 1)
        assert (task.queue, task.attempts, task.max_attempts, task.fhir_refs) == (
            "survey-q",
            0,
            5,
            {},
        )
        assert task.due_at is None and task.created_at is not None
        assert task.updated_at is not None


def test_a_second_answer_to_one_link_is_refused_and_stores_nothing(app: Flask) -> None:
    reg_id = add_registration(app, "https://ehr.example/fhir")
    token, _invite_id = make_invite(app, reg_id)
    _record(app, token, LOW)
    with get_store(app).session() as session:
        invite = domain.find_by_token(session, token)
        assert invite is not None
        # The page was loaded before the first answer: the invitation still looked open.
        with pytest.raises(domain.NotAnswerable):
            domain.record_answer(session, invite._replace(status="sent"), HIGH, now=utcnow())
    assert _counts(app) == (1, 1)


def test_an_expired_link_is_refused_and_stores_nothing(app: Flask) -> None:
    reg_id = add_registration(app, "https://ehr.example/fhir")
    token, _invite_id = make_invite(app, reg_id, link_days=1)
    with pytest.raises(domain.NotAnswerable):
        _record(app, token, LOW, now=utcnow() + timedelta(days=2))
    assert _counts(app) == (0, 0)


def test_an_ehr_that_cannot_take_the_write_gets_a_task_only_for_a_low_score(
    app: Flask,
) -> None:
    reg_id = add_registration(app, "https://ehr.example/fhir", allow_writes=False)
    high = _record(app, make_invite(app, reg_id)[0], HIGH)
    low = _record(app, make_invite(app, reg_id, patient_ref="Patient/pat-002")[0], LOW)
    assert high.writeback_task_id is None and low.writeback_task_id is not None
    with get_store(app).session() as s:
        statuses = {
            r.id: (r.writeback_status, bool(r.writeback_error))
            for r in s.scalars(select(SurveyResponse))
        }
        assert statuses == {
            high.response_id: ("not-supported", True),
            low.response_id: ("not-supported", True),
        }
        [task] = s.scalars(select(CareTask)).all()
        assert task.payload == {"response_id": low.response_id}
    assert _counts(app) == (2, 1)


def test_two_simultaneous_answers_to_one_link_store_one(make_app, pg_url: str) -> None:  # type: ignore[no-untyped-def]
    """The second POST waits on the first's row lock, then finds the invitation claimed."""
    app = make_app(DATABASE_URL=pg_url)
    reg_id = add_registration(app, "https://ehr.example/fhir")
    token, _invite_id = make_invite(app, reg_id)
    store = get_store(app)
    first = store.sessions()
    invite = domain.find_by_token(first, token)
    assert invite is not None
    domain.record_answer(first, invite, LOW, now=utcnow())  # claimed, not committed yet
    outcome: list[str] = []

    def second() -> None:
        with store.session() as session:
            try:
                domain.record_answer(session, invite, HIGH, now=utcnow())
            except domain.NotAnswerable:
                outcome.append("refused")
            else:
                outcome.append("stored")

    thread = threading.Thread(target=second)
    thread.start()
    thread.join(0.5)
    assert thread.is_alive(), "the second answer should wait for the first to commit"
    first.commit()
    first.close()
    thread.join(10)
    assert outcome == ["refused"]
    assert _counts(app) == (1, 1)
