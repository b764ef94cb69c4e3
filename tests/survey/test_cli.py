"""``caredesk survey publish|request|export`` against the sandbox."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator

import pytest
import requests
from click.testing import CliRunner

from fixtures.population import build_population
from helpdesk.db import get_store
from helpdesk.models import CareTask, EhrRegistration, SurveyResponse
from plugin.cli import cli
from sandbox.testing import running_sandbox
from tests.ehr import connect_backend, sandbox_token
from tests.survey.conftest import SURVEY_SCOPES, make_invite, register_backend_ehr

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


CSAT_URL = "https://caredesk.example/fhir/Questionnaire/csat"


def _questionnaires(sb) -> list[dict]:  # type: ignore[no-untyped-def,type-arg]
    """Every CSAT Questionnaire the sandbox holds, read with a token of its own (what the
    EHR has, not what CareDesk believes it wrote)."""
    token = sandbox_token(sb, "system/Questionnaire.rs")
    got = requests.get(
        f"{sb.fhir_base}/Questionnaire",
        params={"url": CSAT_URL},
        headers={"Authorization": f"Bearer {token}"},
        timeout=30,
    )
    assert got.status_code == 200, got.text
    return [e["resource"] for e in got.json().get("entry", [])]


def _fails(*args: str) -> str:
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    assert result.exit_code == 1, result.output
    return result.output


def test_publish_twice_without_canonical_search_leaves_exactly_one_questionnaire(
    survey_app, env
) -> None:
    # The third-party server takes `url=X|1.0.0` as a whole url: a publish that searched
    # (or guarded its create) that way made a second copy on the second run.
    with running_sandbox(profile="thirdparty", population=NO_QUESTIONNAIRE) as sb:
        assert sb.get_knobs()["canonical_version_search"] is False
        register_backend_ehr(survey_app, sb)
        first = _run("survey", "publish", "sandbox")
        second = _run("survey", "publish", "sandbox")
        held = _questionnaires(sb)
    assert first.startswith("published: Questionnaire/")
    [one] = held
    assert (one["url"], one["version"]) == (CSAT_URL, "1.0.0")
    assert second.startswith(f"already published: Questionnaire/{one['id']} ")


def test_publish_refused_on_its_own_search_blames_caredesks_scopes_not_the_ehr(
    survey_app, env
) -> None:
    # The registration's backend scopes lack Questionnaire: the EHR answers CareDesk's
    # *search* with 403. That is CareDesk's registration to fix, not an EHR without writes.
    without = " ".join(
        s for s in SURVEY_SCOPES.split() if not s.startswith("system/Questionnaire.")
    )
    with running_sandbox(population=NO_QUESTIONNAIRE) as sb:
        connect_backend(survey_app, sb, client_id="caredesk-survey", scopes=without)
        out = _fails("survey", "publish", "sandbox")
        assert _questionnaires(sb) == []
    assert "does not accept Questionnaire writes" not in out
    assert "CareDesk's backend scopes for 'sandbox' do not include Questionnaire read" in out
    assert "refused CareDesk's search for the Questionnaire (HTTP 403)" in out
    assert "system/Questionnaire.crs" in out and "caredesk ehr update sandbox" in out


def test_publish_without_questionnaire_create_scope_says_so(survey_app, env) -> None:
    read_only = SURVEY_SCOPES.replace("system/Questionnaire.crs", "system/Questionnaire.rs")
    with running_sandbox(population=NO_QUESTIONNAIRE) as sb:
        connect_backend(survey_app, sb, client_id="caredesk-survey", scopes=read_only)
        out = _fails("survey", "publish", "sandbox")
        assert _questionnaires(sb) == []
    assert "do not include Questionnaire create" in out
    assert "does not accept Questionnaire writes" not in out


def test_publish_with_an_unknown_backend_client_names_caredesks_registration(
    survey_app, env
) -> None:
    with running_sandbox(population=NO_QUESTIONNAIRE) as sb:
        reg_id = register_backend_ehr(survey_app, sb)
        # The registration names a backend client the EHR never heard of.
        with get_store(survey_app).session() as session:
            session.get(EhrRegistration, reg_id).backend_client_id = "caredesk-jobs-typo"
        out = _fails("survey", "publish", "sandbox")
    assert out.startswith("Error: CareDesk's registration 'sandbox' needs fixing:")
    assert "unknown" in out and "client" in out


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
