"""`caredesk ehr check` as the integration engineer runs it against the sandbox: a backend
client the EHR does not know, backend scopes without Questionnaire, nothing listening.
Each is a failed verdict with the reason and the right exit code; `--json` is exactly
JSON on stdout."""

from __future__ import annotations

import json
import socket

import pytest
from click.testing import CliRunner, Result

from helpdesk.db import get_store
from helpdesk.models import EhrRegistration
from plugin.cli import cli
from sandbox.testing import running_sandbox
from smart_launch.features import FEATURES, scopes_for_features
from tests.ehr import connect_backend

SECRET = "s" * 48  # one key for the test's app and every CLI invocation
BACKEND_SCOPES = scopes_for_features(FEATURES, "backend")


@pytest.fixture
def app(make_app, monkeypatch):  # type: ignore[no-untyped-def]
    app = make_app(SECRET_KEY=SECRET)
    for key in ("ENV", "DATABASE_URL", "REDIS_URL", "SECRET_KEY"):
        monkeypatch.setenv(f"CAREDESK_{key}", str(app.config[key]))
    return app


def check(*args: str) -> Result:
    return CliRunner().invoke(cli, ["ehr", "check", *args], catch_exceptions=False)


def _both(target: str) -> tuple[Result, Result]:
    return check(target), check(target, "--json")


def test_unknown_backend_client_is_backend_jobs_will_not_work_with_the_ehrs_error(app) -> None:  # type: ignore[no-untyped-def]
    with running_sandbox() as sb:
        reg_id = connect_backend(app, sb, client_id="caredesk-jobs", scopes=BACKEND_SCOPES)
        with get_store(app).session() as session:
            row = session.get(EhrRegistration, reg_id)
            assert row is not None
            row.backend_client_id = "caredesk-jobs-typo"  # the EHR never heard of it
        text, as_json = _both("sandbox")
    assert text.exit_code == 1, text.output
    assert "backend jobs (required): will NOT work - backend token" in text.stdout
    assert 'the EHR said: "unknown asymmetric client"' in text.stdout
    report = json.loads(as_json.stdout)
    assert as_json.exit_code == 1 and report["exit_code"] == 1
    assert report["features"]["backend jobs"]["verdict"] == "failed"
    [token] = [line for line in report["lines"] if line["name"] == "backend token"]
    assert (token["result"], token["party"], token["ehr_text"]) == (
        "failed",
        "caredesk",
        "unknown asymmetric client",
    )


def test_backend_scopes_without_questionnaire_is_survey_publishing_will_not_work(app) -> None:  # type: ignore[no-untyped-def]
    without = " ".join(s for s in BACKEND_SCOPES.split() if "Questionnaire." not in s)
    with running_sandbox() as sb:
        connect_backend(app, sb, client_id="caredesk-jobs", scopes=without)
        text, as_json = _both("sandbox")
    assert text.exit_code == 1, text.output
    assert "survey publishing: will NOT work" in text.stdout
    assert "system/Questionnaire.crs" in text.stdout
    report = json.loads(as_json.stdout)
    assert as_json.exit_code == 1
    assert report["features"]["survey publishing"]["verdict"] == "failed"
    assert report["features"]["backend jobs"]["verdict"] == "failed"


def test_nothing_listening_is_one_line_and_exit_2(app) -> None:  # type: ignore[no-untyped-def]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    target = f"http://127.0.0.1:{port}/fhir"
    text, as_json = _both(target)
    assert text.exit_code == 2
    assert text.stdout.splitlines() == [
        f"UNREACHABLE (exit 2): The EHR at {target} cannot be reached: "
        "could not connect (ConnectionError)."
    ]
    assert "should work" not in text.output
    assert as_json.exit_code == 2
    report = json.loads(as_json.stdout)  # exactly JSON: nothing else on stdout
    assert (report["reachable"], report["exit_code"]) == (False, 2)


def test_the_csat_questionnaire_is_looked_for_after_survey_publish(app) -> None:  # type: ignore[no-untyped-def]
    """The guide runs `caredesk survey publish` then `caredesk ehr check`: the check looks
    for the Questionnaire CareDesk publishes (it said "no Questionnaire to look for was
    given" and left survey write-back unchecked)."""
    with running_sandbox() as sb:
        connect_backend(app, sb, client_id="caredesk-jobs", scopes=BACKEND_SCOPES)
        text = check("sandbox")
    assert text.exit_code == 0, text.output
    assert "no Questionnaire to look for" not in text.stdout
    [line] = [line for line in text.stdout.splitlines() if "CSAT Questionnaire" in line]
    assert line.startswith("ok ") and "Questionnaire/csat" in line, line
    assert "survey write-back: will work" in text.stdout
