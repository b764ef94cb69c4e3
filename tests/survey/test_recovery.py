"""Service recovery (issue 7): a low score opens a high-priority feedback ticket and, when
the patient agreed to be contacted, a follow-up call task; the ticket links to the answer.

The patient's POST stores the answer and queues one write-back task, nothing more (issue
12 §8: a burst of answers must cost the store little); that task's job opens the recovery
first, committed before the EHR is asked anything, then writes the QuestionnaireResponse.
These tests pin the timing and the "exactly once": retries, repeated runs, an EHR that
fails or cannot take the write, and a concurrent second ticket."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from helpdesk import surveys as domain
from helpdesk.db import get_store
from helpdesk.models import CareTask, SurveyInvite, SurveyResponse, Ticket
from helpdesk.tasks import new_task
from helpdesk.tickets import sla_due, sla_hours
from jobs import outbox
from sandbox.testing import SandboxHandle, running_sandbox
from tests.survey.conftest import make_invite, register_backend_ehr, work

LOW = {"csat": "2", "nps": "8", "comment": "Waited 90 min", "contact-ok": "yes"}


@pytest.fixture
def sandbox() -> Iterator[SandboxHandle]:
    with running_sandbox() as sb:
        yield sb


def _answer(app, served, reg_id: int, form: dict[str, str]) -> str:  # type: ignore[no-untyped-def]
    token, invite_id = make_invite(app, reg_id)
    url = f"{served.url}/s/{token}"
    csrf = re.search(r'name="csrf" value="([^"]+)"', served.http.get(url).text)
    assert csrf is not None
    done = served.http.post(url, data={"csrf": csrf.group(1), **form})
    assert done.status_code == 200 and "Thank you" in done.text
    return invite_id


def _rows(app) -> tuple[list[Ticket], dict[str, list[CareTask]]]:  # type: ignore[no-untyped-def]
    with get_store(app).session() as s:
        tickets = list(s.scalars(select(Ticket)))
        tasks: dict[str, list[CareTask]] = {}
        for task in s.scalars(select(CareTask).order_by(CareTask.id)):
            tasks.setdefault(task.kind, []).append(task)
        return tickets, tasks


def _run_again(app, reg_id: int, response_id: int) -> None:  # type: ignore[no-untyped-def]
    """Another run of the write-back job for the same answer (as a sweeper re-enqueue or
    an operator's retry would make), run to the end."""
    with app.app_context(), get_store(app).session() as s:
        task = new_task(
            s,
            registration_id=reg_id,
            kind=domain.WRITEBACK_KIND,
            patient_ref="Patient/pat-001",
            payload={"response_id": response_id},
        )
        s.flush()
        task_id = task.id
    outbox.dispatch([task_id], app=app)
    work(app)


def test_a_low_score_is_stored_at_once_and_its_job_opens_the_recovery_exactly_once(
    survey_app, sandbox, served
) -> None:
    reg_id = register_backend_ehr(survey_app, sandbox)
    invite_id = _answer(survey_app, served, reg_id, LOW)

    # Before any job ran: the answer is stored and its one task queued; no ticket yet.
    tickets, tasks = _rows(survey_app)
    assert tickets == [] and set(tasks) == {"survey-writeback"}
    [writeback] = tasks["survey-writeback"]
    assert writeback.job_id and writeback.status == "queued"
    with get_store(survey_app).session() as s:
        response = s.scalars(select(SurveyResponse)).one()
        assert s.get(SurveyInvite, invite_id).status == "answered"
        assert writeback.payload == {"response_id": response.id}

    work(survey_app)
    tickets, tasks = _rows(survey_app)
    [ticket] = tickets
    assert (ticket.category, ticket.priority, ticket.status, ticket.source) == (
        "feedback",
        "high",
        "open",
        "survey",
    )
    assert ticket.survey_response_id == response.id
    assert ticket.patient_ref == "Patient/pat-001" and "CSAT 2/5" in ticket.subject
    # The SLA clock started when the patient answered, not when the job ran.
    assert ticket.due_at == sla_due("feedback", response.submitted_at, sla_hours(survey_app.config))
    [follow] = tasks["follow-up"]
    assert follow.payload == {
        "ticket_id": ticket.id,
        "survey_response_id": response.id,
        "reason": "survey-recovery",
        "channel": "phone",
    }
    assert follow.patient_ref == "Patient/pat-001" and follow.job_id
    with get_store(survey_app).session() as s:
        assert s.get(SurveyResponse, response.id).writeback_status == "written"

    # Two more runs for the same answer open nothing more.
    _run_again(survey_app, reg_id, response.id)
    _run_again(survey_app, reg_id, response.id)
    tickets, tasks = _rows(survey_app)
    assert [t.id for t in tickets] == [ticket.id]
    assert [t.id for t in tasks["follow-up"]] == [follow.id]
    assert [t.status for t in tasks["survey-writeback"]] == ["done", "done", "done"]


def test_a_detractor_without_consent_gets_a_ticket_but_no_call(survey_app, sandbox, served) -> None:
    reg_id = register_backend_ehr(survey_app, sandbox)
    _answer(survey_app, served, reg_id, {"csat": "4", "nps": "6", "contact-ok": "no"})
    work(survey_app)
    [ticket], tasks = _rows(survey_app)
    assert "do not call" in ticket.description and "NPS 6/10" in ticket.subject
    assert set(tasks) == {"survey-writeback"}


def test_the_recovery_does_not_wait_for_a_failing_ehr_nor_repeat_on_the_retry(
    survey_app, sandbox, served
) -> None:
    reg_id = register_backend_ehr(survey_app, sandbox)
    sandbox.set_knobs(fail_next=[{"status": 503, "path_contains": "QuestionnaireResponse"}])
    _answer(survey_app, served, reg_id, LOW)
    work(survey_app)
    tickets, tasks = _rows(survey_app)
    [writeback] = tasks["survey-writeback"]
    assert (writeback.status, writeback.attempts) == ("scheduled", 1)  # a retry is due
    assert len(tickets) == 1 and len(tasks["follow-up"]) == 1  # opened all the same

    work(survey_app, include_scheduled=True)  # the retry
    tickets, tasks = _rows(survey_app)
    [writeback] = tasks["survey-writeback"]
    assert (writeback.status, writeback.attempts) == ("done", 2)
    assert len(tickets) == 1 and len(tasks["follow-up"]) == 1
    with get_store(survey_app).session() as s:
        assert s.scalars(select(SurveyResponse)).one().writeback_status == "written"


def test_an_ehr_that_cannot_take_the_write_still_gets_the_recovery(
    survey_app, sandbox, served
) -> None:
    reg_id = register_backend_ehr(survey_app, sandbox, allow_writes=False)
    _answer(survey_app, served, reg_id, LOW)
    with get_store(survey_app).session() as s:
        response = s.scalars(select(SurveyResponse)).one()
        assert response.writeback_status == "not-supported"  # known at once
    sandbox.clear_requests()
    work(survey_app)
    tickets, tasks = _rows(survey_app)
    assert len(tickets) == 1 and len(tasks["follow-up"]) == 1
    [writeback] = tasks["survey-writeback"]
    assert writeback.status == "done" and "kept in CareDesk" in writeback.status_note
    assert [r for r in sandbox.requests() if "Questionnaire" in r["path"]] == []


def test_a_high_score_for_an_ehr_that_cannot_take_the_write_queues_nothing(
    survey_app, sandbox, served
) -> None:
    reg_id = register_backend_ehr(survey_app, sandbox, allow_writes=False)
    _answer(survey_app, served, reg_id, {"csat": "5", "nps": "10", "contact-ok": "yes"})
    tickets, tasks = _rows(survey_app)
    assert tickets == [] and tasks == {}


def test_the_store_refuses_a_second_recovery_ticket_for_one_answer(
    survey_app, sandbox, served
) -> None:
    # Two runs at the same moment both find no ticket; the unique index lets one win.
    reg_id = register_backend_ehr(survey_app, sandbox)
    _answer(survey_app, served, reg_id, LOW)
    work(survey_app)
    [ticket], _ = _rows(survey_app)
    with pytest.raises(IntegrityError), get_store(survey_app).session() as s:
        s.add(
            Ticket(
                registration_id=reg_id,
                subject="a second recovery",
                category="feedback",
                survey_response_id=ticket.survey_response_id,
            )
        )
        s.flush()
    with get_store(survey_app).session() as s:
        assert s.scalar(select(func.count()).select_from(Ticket)) == 1
