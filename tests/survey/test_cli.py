"""``caredesk survey publish|request|export`` against the sandbox."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator

import pytest
from click.testing import CliRunner

import plugin.survey_cli  # noqa: F401 - attaches `caredesk survey` to the CLI
from fixtures.population import build_population
from helpdesk.db import get_store
from helpdesk.models import CareTask, SurveyResponse
from plugin.cli import cli
from sandbox.testing import running_sandbox
from tests.survey.conftest import make_invite, register_backend_ehr

NO_QUESTIONNAIRE = {
    k: v for k, v in build_population(dt.date(2026, 11, 27)).items() if k != "Questionnaire"
}


@pytest.fixture
def env(survey_app, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    for key in ("ENV", "DATABASE_URL", "REDIS_URL", "SECRET_KEY", "SURVEY_PUBLIC_URL"):
        monkeypatch.setenv(f"CAREDESK_{key}", str(survey_app.config[key]))


def _run(*args: str) -> str:
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


@pytest.fixture
def sandbox_without_questionnaire() -> Iterator:  # type: ignore[type-arg]
    with running_sandbox(population=NO_QUESTIONNAIRE) as sb:
        yield sb


def test_publish_creates_the_questionnaire_once(survey_app, env, sandbox_without_questionnaire):  # type: ignore[no-untyped-def]
    register_backend_ehr(survey_app, sandbox_without_questionnaire)
    first = _run("survey", "publish", "sandbox")
    assert first.startswith("published: Questionnaire/")
    assert "https://caredesk.example/fhir/Questionnaire/csat|1.0.0" in first
    assert _run("survey", "publish", "sandbox").startswith("already published")


def test_publish_on_an_ehr_with_read_only_questionnaires_explains_and_succeeds(
    survey_app, env
) -> None:
    with running_sandbox(profile="epic", population=NO_QUESTIONNAIRE) as sb:
        register_backend_ehr(survey_app, sb)
        out = _run("survey", "publish", "sandbox")
    assert "does not accept Questionnaire writes" in out
    assert "reference https://caredesk.example/fhir/Questionnaire/csat|1.0.0" in out


def test_request_queues_one_invitation_task_per_appointment(survey_app, env) -> None:
    with running_sandbox() as sb:
        reg_id = register_backend_ehr(survey_app, sb)
    out = _run("survey", "request", "sandbox", "--appointment", "Appointment/appt-pat-001-past")
    assert out.startswith("queued survey invitation task")
    assert _run(
        "survey", "request", "sandbox", "--appointment", "Appointment/appt-pat-001-past"
    ).startswith("already requested")
    with get_store(survey_app).session() as s:
        tasks = s.query(CareTask).all()
        assert [(t.kind, t.registration_id, t.payload) for t in tasks] == [
            ("survey-invite", reg_id, {"appointment_ref": "Appointment/appt-pat-001-past"})
        ]
        assert tasks[0].status == "scheduled" and tasks[0].job_id  # after the 2 h delay


def test_export_writes_answers_not_written_back_as_csv(survey_app, env, reg_id) -> None:
    _, kept = make_invite(survey_app, reg_id, status="answered")
    _, done = make_invite(survey_app, reg_id, status="answered", patient_ref="Patient/pat-002")
    with get_store(survey_app).session() as s:
        s.add(SurveyResponse(invite_id=kept, answers={}, csat=1, writeback_status="not-supported"))
        s.add(SurveyResponse(invite_id=done, answers={}, csat=5, writeback_status="written"))
    lines = _run("survey", "export", "ehr-a").splitlines()
    assert lines[0].startswith("invitation_id,patient,")
    assert len(lines) == 2 and lines[1].startswith(f"{kept},Patient/pat-001,")


FORMULAS = [
    ('=HYPERLINK("http://evil.example","click")', "'=HYPERLINK"),
    ("+cmd|' /C calc'!A0", "'+cmd"),
    ("-2+3", "'-2+3"),
    ("@SUM(A1:A2)", "'@SUM"),
    ("\t=1+1", "'\t=1+1"),
    ("\r=1+1", "'\r=1+1"),
    ("-3", "-3"),  # a plain number stays a number
    ("Fine, thanks", "Fine, thanks"),
]


@pytest.mark.parametrize(("comment", "cell_starts"), FORMULAS)
def test_export_neutralises_formula_leading_cells(
    survey_app, env, reg_id, comment: str, cell_starts: str
) -> None:
    """The command line's CSV and the web's go through one writer (plugin.csvout)."""
    import csv
    import io

    _, kept = make_invite(survey_app, reg_id, status="answered")
    with get_store(survey_app).session() as s:
        s.add(
            SurveyResponse(
                invite_id=kept,
                answers={},
                csat=1,
                comment=comment,
                writeback_status="not-supported",
            )
        )
    [row] = list(csv.DictReader(io.StringIO(_run("survey", "export", "ehr-a"))))
    assert row["comment"].startswith(cell_starts)
    assert row["comment"].endswith(comment[-3:])
