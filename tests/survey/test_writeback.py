"""The write-back job against the sandbox EHR over HTTP, run by RQ on the real Redis."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from fhir.resources.R4B.questionnaireresponse import QuestionnaireResponse

from helpdesk import surveys as domain
from helpdesk.access import PatientScope
from helpdesk.db import get_store
from helpdesk.models import CareTask, SurveyResponse
from helpdesk.tasks import new_task
from jobs import outbox
from sandbox.testing import SandboxHandle, running_sandbox
from smart_launch.fhir import FhirClient
from tests.survey.conftest import (
    make_invite,
    make_survey_app,
    questionnaire_responses,
    register_backend_ehr,
    work,
)

SYSTEM = "https://caredesk.example/fhir/sid/survey-invitation"
ANSWERS = {"csat": "2", "nps": 4, "comment": "Long wait", "contact-ok": True}


@pytest.fixture
def survey_app(make_app, survey_redis_url: str, store_url: str):  # type: ignore[no-untyped-def]
    """Every test here on SQLite and on PostgreSQL: a job's claim and outcome are one
    statement each on PostgreSQL, several on SQLite (``jobs.tasks``)."""
    return make_survey_app(make_app, survey_redis_url, DATABASE_URL=store_url)


@pytest.fixture
def sandbox(request: pytest.FixtureRequest) -> Iterator[SandboxHandle]:
    profile = getattr(request, "param", "smart")
    with running_sandbox(profile=profile) as sb:
        yield sb


def _answered(app, reg_id: int) -> tuple[str, int]:  # type: ignore[no-untyped-def]
    _, invite_id = make_invite(app, reg_id, status="answered")
    with get_store(app).session() as s:
        response = SurveyResponse(
            invite_id=invite_id,
            answers=ANSWERS,
            csat=2,
            nps=4,
            comment="Long wait",
            contact_ok=True,
        )
        s.add(response)
        s.flush()
        return invite_id, response.id


def _write_back(app, reg_id: int, response_id: int) -> int:  # type: ignore[no-untyped-def]
    """Queue one run of the write-back job (no dedupe key: each call is another run)."""
    with app.app_context():
        with get_store(app).session() as s:
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
    return task_id


def _state(app, task_id: int, response_id: int) -> tuple[str, str, str | None]:  # type: ignore[no-untyped-def]
    with get_store(app).session() as s:
        task = s.get(CareTask, task_id)
        response = s.get(SurveyResponse, response_id)
        return task.status, response.writeback_status, response.fhir_id


def _forget_written(app, response_id: int) -> None:  # type: ignore[no-untyped-def]
    """As if CareDesk's commit after a successful create had been lost."""
    with get_store(app).session() as s:
        r = s.get(SurveyResponse, response_id)
        r.writeback_status, r.fhir_id = "pending", None


@pytest.mark.parametrize("sandbox", ["smart", "epic"], indirect=True)
def test_three_runs_leave_exactly_one_questionnaire_response(survey_app, sandbox) -> None:
    reg_id = register_backend_ehr(survey_app, sandbox)
    invite_id, response_id = _answered(survey_app, reg_id)
    first = _write_back(survey_app, reg_id, response_id)
    status, wb, fhir_id = _state(survey_app, first, response_id)
    assert (status, wb) == ("done", "written") and fhir_id
    _forget_written(survey_app, response_id)  # run 2 must find it on the server
    second = _write_back(survey_app, reg_id, response_id)
    third = _write_back(survey_app, reg_id, response_id)
    assert _state(survey_app, second, response_id) == ("done", "written", fhir_id)
    assert _state(survey_app, third, response_id) == ("done", "written", fhir_id)

    found = questionnaire_responses(sandbox, f"{SYSTEM}|{invite_id}")
    assert [r["id"] for r in found] == [fhir_id]
    qr = found[0]
    QuestionnaireResponse.model_validate(qr)
    assert qr["subject"] == {"reference": "Patient/pat-001"}
    assert qr["encounter"] == {"reference": "Encounter/enc-pat-001-past"}
    assert qr["questionnaire"] == "https://caredesk.example/fhir/Questionnaire/csat|1.0.0"
    assert qr["status"] == "completed"
    assert {i["linkId"]: i["answer"][0] for i in qr["item"]} == {
        "csat": {
            "valueCoding": {
                "code": "2",
                "display": "Dissatisfied",
                "system": "https://caredesk.example/fhir/CodeSystem/csat-scale",
            }
        },
        "nps": {"valueInteger": 4},
        "comment": {"valueString": "Long wait"},
        "contact-ok": {"valueBoolean": True},
    }


def test_a_create_that_timed_out_but_succeeded_is_found_not_repeated(
    survey_app, sandbox, monkeypatch
) -> None:
    reg_id = register_backend_ehr(survey_app, sandbox)
    invite_id, response_id = _answered(survey_app, reg_id)
    original = FhirClient.create
    calls: list[str] = []

    def slow_create(self, resource, **kwargs):  # type: ignore[no-untyped-def]
        calls.append(resource["resourceType"])
        if len(calls) > 1:
            return original(self, resource, **kwargs)
        # The EHR takes 1.5 s; we wait 0.5 s. The POST reaches it and it creates the
        # resource after our timeout, so our side sees a failure that was a success.
        sandbox.set_knobs(latency_ms=1500)
        self.timeout = 0.5
        try:
            return original(self, resource, **kwargs)
        finally:
            sandbox.set_knobs(latency_ms=0)

    monkeypatch.setattr(FhirClient, "create", slow_create)
    task_id = _write_back(survey_app, reg_id, response_id)
    status, wb, fhir_id = _state(survey_app, task_id, response_id)
    assert (status, wb, fhir_id) == ("scheduled", "pending", None)  # a retry is due
    deadline = time.monotonic() + 10
    while not questionnaire_responses(sandbox, f"{SYSTEM}|{invite_id}"):
        assert time.monotonic() < deadline, "the sandbox never finished the create"
        time.sleep(0.2)
    time.sleep(1.1)  # RETRY_BASE_SECONDS
    work(survey_app, include_scheduled=True)
    status, wb, fhir_id = _state(survey_app, task_id, response_id)
    assert (status, wb) == ("done", "written")
    found = questionnaire_responses(sandbox, f"{SYSTEM}|{invite_id}")
    assert [r["id"] for r in found] == [fhir_id]
    assert calls == ["QuestionnaireResponse"]  # the retry searched and found it: no 2nd POST


@pytest.mark.parametrize("sandbox", ["oracle"], indirect=True)
def test_ehr_without_questionnaire_response_create_keeps_the_answer(survey_app, sandbox) -> None:
    # Never checked (capabilities unknown): the write is tried, refused, and recorded.
    reg_id = register_backend_ehr(survey_app, sandbox)
    invite_id, response_id = _answered(survey_app, reg_id)
    task_id = _write_back(survey_app, reg_id, response_id)
    with get_store(survey_app).session() as s:
        task = s.get(CareTask, task_id)
        response = s.get(SurveyResponse, response_id)
        assert task.status == "done" and "kept in CareDesk" in task.status_note
        assert response.writeback_status == "not-supported" and response.fhir_id is None
        assert "read-only" in response.writeback_error


def test_registration_known_not_to_take_writes_is_not_even_asked(survey_app, sandbox) -> None:
    reg_id = register_backend_ehr(survey_app, sandbox, allow_writes=False)
    _, response_id = _answered(survey_app, reg_id)
    sandbox.clear_requests()
    task_id = _write_back(survey_app, reg_id, response_id)
    assert _state(survey_app, task_id, response_id) == ("done", "not-supported", None)
    posts = [
        r for r in sandbox.requests() if r["method"] == "POST" and "Questionnaire" in r["path"]
    ]
    assert posts == []


def test_latest_for_patient_summarizes_the_last_answer(survey_app, sandbox) -> None:
    reg_id = register_backend_ehr(survey_app, sandbox)
    _, response_id = _answered(survey_app, reg_id)
    _write_back(survey_app, reg_id, response_id)
    with get_store(survey_app).session() as s:
        everyone = PatientScope.whole_registration(reg_id)
        latest = domain.latest_for_patient(s, everyone, "Patient/pat-001")
        assert domain.latest_for_patient(s, everyone, "Patient/pat-002") is None
    assert latest is not None
    assert (latest["csat"], latest["nps"], latest["comment"]) == (2, 4, "Long wait")
    assert latest["needs_recovery"] is True and latest["writeback_status"] == "written"


@pytest.mark.parametrize(
    ("sandbox", "outcome"),
    [("smart", "written"), ("oracle", "not-supported")],
    indirect=["sandbox"],
)
def test_a_write_back_moves_its_patients_change_stamp_not_everyones(
    survey_app, sandbox, outcome, monkeypatch
) -> None:
    """The answer's row names no patient, but its invitation does: the job's claim and its
    outcome (the answer marked written by a Core UPDATE, or refused by the ORM's flush)
    move that patient's stamp only, so a write-back leaves every other patient's cached
    sidebar valid (each one moved everyone's, issue 16 §3)."""
    from helpdesk import stamps

    reg_id = register_backend_ehr(survey_app, sandbox)
    _, response_id = _answered(survey_app, reg_id)
    renewed: list[set[str]] = []
    monkeypatch.setattr(stamps, "renew", lambda _conn, keys: renewed.append(set(keys)))
    task_id = _write_back(survey_app, reg_id, response_id)
    assert _state(survey_app, task_id, response_id)[:2] == ("done", outcome)
    # The task queued, dispatched, claimed and done: every commit about the one patient.
    patient = stamps.key(reg_id, "Patient/pat-001")
    assert len(renewed) >= 3 and all(keys == {patient} for keys in renewed), renewed
