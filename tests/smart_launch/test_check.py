"""`check_ehr` proves what it can against the sandbox over real HTTP: a backend token with
the registered client and scopes, reads with it, the CSAT Questionnaire; each line is
verified, advertised, failed (with the EHR's words) or skipped, and each feature's
verdict and the exit code follow from the lines."""

from __future__ import annotations

import dataclasses
import json
import socket
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from sandbox.testing import running_sandbox
from smart_launch.backend import backend_token
from smart_launch.check import EXIT_CODES, FEATURES, CheckLine, CheckReport, check_ehr
from smart_launch.config import Registration, SigningKey
from smart_launch.discovery import discover
from smart_launch.features import FEATURES as FEATURE_DATA
from smart_launch.features import FEATURES_BY_NAME, scopes_for_features
from smart_launch.fhir import FhirClient, find_canonical
from smart_launch.keys import generate_signing_key, jwks
from tests.smart_launch.sandbox_flow import client_and_registration

CSAT = ("http://caredesk.test/fhir/Questionnaire/csat", "1.0.0")
USER_SCOPES = scopes_for_features([FEATURES_BY_NAME["sidebar"], FEATURES_BY_NAME["board"]], "user")
BACKEND_SCOPES = scopes_for_features(FEATURE_DATA, "backend")


@pytest.fixture
def http() -> Iterator[requests.Session]:
    with requests.Session() as session:
        yield session


def registered(
    sb: Any,
    *,
    backend_scopes: str = BACKEND_SCOPES,
    backend_known: bool = True,
    publish: bool = True,
) -> Registration:
    """A registration as `caredesk ehr add` leaves it: a user client and a backend client
    (known to the EHR unless ``backend_known`` is False)."""
    reg = client_and_registration(sb, "confidential-symmetric", scopes=USER_SCOPES)
    key: SigningKey = generate_signing_key("ES384")
    if backend_known:
        sb.register_client(
            {
                "client_id": "caredesk-jobs",
                "type": "confidential-asymmetric",
                "jwks": jwks([key]),
                "backend": True,
                "redirect_uris": [],
            }
        )
    if publish:
        sb.put_resource(
            {
                "resourceType": "Questionnaire",
                "url": CSAT[0],
                "version": CSAT[1],
                "status": "active",
            }
        )
    return dataclasses.replace(
        reg,
        signing_keys=(key,),
        backend_client_id="caredesk-jobs",
        backend_scopes=backend_scopes,
    )


def verdicts(report: CheckReport) -> dict[str, str]:
    return {f: v.verdict for f, v in report.feature_verdicts().items()}


def test_correct_registration_verifies_every_feature_and_exits_0(http: requests.Session) -> None:
    with running_sandbox(profile="smart") as sb:
        report = check_ehr(registered(sb), http=http, questionnaire=CSAT)
        searched = {
            r["path"].rsplit("/", 1)[-1]
            for r in sb.requests()
            if r["method"] == "GET" and "_count=1" in r["query"] and r["status"] == 200
        }
    assert verdicts(report) == {f: "verified" for f in FEATURES}
    assert report.exit_code == 0 and report.required_features >= {"launch", "backend jobs"}
    assert {line.result for line in report.lines} <= {"verified", "advertised"}
    # Proved, not read from the CapabilityStatement: the backend token read these.
    assert {"Patient search", "Appointment search", "Coverage search"} <= {
        line.name for line in report.lines if line.result == "verified"
    }
    assert {"Patient", "Appointment", "Coverage", "QuestionnaireResponse"} <= searched
    assert report.line("CareDesk's client accepted").result == "verified"
    assert report.line("CSAT Questionnaire").detail.startswith("Questionnaire/")
    # Writes are never tried: advertised only, and that does not hold a feature back.
    assert report.line("QuestionnaireResponse create").result == "advertised"
    text = report.render_text()
    assert "should work" not in text and "PASS (exit 0" in text
    data = json.loads(report.to_json_text())
    assert data["exit_code"] == 0 and data["exit_codes"]["2"] == EXIT_CODES[2]
    assert data["features"]["survey write-back"] == {
        "verdict": "verified",
        "works": True,
        "blocked_by": [],
        "unverified": [],
        "skipped": [],
    }
    # The older vocabulary stays for readers of stored reports (jobs read these).
    statuses = {line["name"]: line["status"] for line in data["lines"]}
    assert statuses["ServiceRequest create"] == statuses["Task create"] == "supported"


def test_unknown_backend_client_fails_backend_jobs_with_the_ehrs_words(
    http: requests.Session,
) -> None:
    with running_sandbox(profile="smart") as sb:
        report = check_ehr(registered(sb, backend_known=False), http=http, questionnaire=CSAT)
    line = report.line("backend token")
    assert (line.result, line.party, line.ehr_text) == (
        "failed",
        "caredesk",
        "unknown asymmetric client",
    )
    assert verdicts(report)["backend jobs"] == "failed"
    assert report.exit_code == 1
    text = report.render_text()
    assert "backend jobs (required): will NOT work - backend token" in text
    assert 'the EHR said: "unknown asymmetric client"' in text
    # The launch itself is fine: the user client is known.
    assert verdicts(report)["launch"] == "verified"


def test_backend_scopes_without_questionnaire_fail_survey_publishing(
    http: requests.Session,
) -> None:
    without = " ".join(s for s in BACKEND_SCOPES.split() if "Questionnaire." not in s)
    with running_sandbox(profile="smart") as sb:
        report = check_ehr(registered(sb, backend_scopes=without), http=http, questionnaire=CSAT)
    line = report.line("backend scopes for survey publishing")
    assert (line.result, line.party) == ("failed", "caredesk")
    assert "system/Questionnaire.crs" in line.detail
    # Finding the Questionnaire was refused too: the EHR's own words are kept.
    found = report.line("CSAT Questionnaire")
    assert found.result == "failed" and found.ehr_text and "Questionnaire" in found.ehr_text
    assert verdicts(report)["survey publishing"] == "failed"
    assert verdicts(report)["survey write-back"] == "failed"
    assert report.exit_code == 1
    assert "survey publishing: will NOT work" in report.render_text()


def test_unreachable_ehr_is_one_failed_line_and_exit_2(http: requests.Session) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    report = check_ehr(f"http://127.0.0.1:{port}/fhir", http=http)
    assert [(line.name, line.result, line.party) for line in report.lines] == [
        ("EHR reachable", "failed", "network")
    ]
    assert report.exit_code == 2
    assert set(verdicts(report).values()) == {"failed"}
    # One line: nothing was examined, so no table of features that all "fail".
    assert report.render_text() == (
        f"UNREACHABLE (exit 2): The EHR at http://127.0.0.1:{port}/fhir cannot be reached: "
        "could not connect (ConnectionError)."
    )
    assert json.loads(report.to_json_text())["exit_code"] == 2


def test_epic_like_ehr_cannot_publish_or_confirm_but_required_features_pass(
    http: requests.Session,
) -> None:
    with running_sandbox(profile="epic") as sb:
        report = check_ehr(registered(sb), http=http, questionnaire=CSAT)
    v = verdicts(report)
    assert v["survey publishing"] == "failed"  # Questionnaire is read-only there
    assert v["reminder confirmation"] == "failed"  # no Appointment update
    # No conditional create, but the identifier search guards against duplicates.
    assert report.line("QuestionnaireResponse conditional create").result == "failed"
    assert v["survey write-back"] == "verified"
    assert report.exit_code == 0


def test_registration_without_backend_client_cannot_prove_reads(http: requests.Session) -> None:
    with running_sandbox(profile="smart") as sb:
        reg = dataclasses.replace(
            registered(sb), backend_client_id=None, backend_scopes=None, signing_keys=()
        )
        report = check_ehr(reg, http=http, questionnaire=CSAT)
    assert report.line("backend token").result == "skipped"
    assert report.line("Patient search").result == "advertised"
    v = verdicts(report)
    assert v["launch"] == "verified"
    assert v["sidebar context"] == "advertised" and v["backend jobs"] == "skipped"
    assert report.exit_code == 1  # the sidebar's reads were not proved
    assert "sidebar context (required): should work (unverified: Patient search" in (
        report.render_text()
    )


def test_check_of_a_bare_iss_reports_disabled_features(http: requests.Session) -> None:
    with running_sandbox(
        profile="smart", disabled=("well-known", "questionnaire-response-create")
    ) as sb:
        report = check_ehr(sb.fhir_base, http=http)
    assert report.line(".well-known/smart-configuration").result == "failed"
    assert report.discovery_source == "capability-statement (fallback)"
    assert report.line("QuestionnaireResponse create").result == "failed"
    blockers = report.to_json()["features"]["survey write-back"]["blocked_by"]
    assert blockers == ["QuestionnaireResponse create"]
    assert report.line("CareDesk's client accepted").result == "skipped"
    assert verdicts(report)["launch"] == "skipped"
    assert report.exit_code == 1


def test_find_canonical_without_canonical_search_and_publish_twice_makes_one(
    http: requests.Session,
) -> None:
    with running_sandbox(profile="thirdparty") as sb:
        reg = registered(sb, publish=False)
        conf = discover(reg, http=http)
        token = backend_token(reg, conf, http=http)
        with FhirClient(sb.fhir_base, lambda: token.access_token, session=http) as fhir:
            for _ in range(2):
                if find_canonical(fhir, "Questionnaire", *CSAT) is None:
                    fhir.create(
                        {
                            "resourceType": "Questionnaire",
                            "url": CSAT[0],
                            "version": CSAT[1],
                            "status": "active",
                        }
                    )
            # This server takes url|version as a whole URL: canonical search finds nothing.
            assert "entry" not in fhir.search("Questionnaire", {"url": f"{CSAT[0]}|{CSAT[1]}"})
            every = list(fhir.search_all("Questionnaire", {"url": CSAT[0]}))
            assert len(every) == 1
            assert find_canonical(fhir, "Questionnaire", CSAT[0], "2.0.0") is None
            assert find_canonical(fhir, "Questionnaire", CSAT[0])["id"] == every[0]["id"]  # type: ignore[index]


def line(name: str, result: str, feature: str = "referrals", **kw: Any) -> CheckLine:
    return CheckLine(name, result, features=(feature,), **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("lines", "verdict", "blocked", "unverified", "skipped"),
    [
        ([line("a", "verified"), line("b", "verified")], "verified", [], [], []),
        # A write can only be advertised: that is as good as it gets.
        ([line("a", "verified"), line("w", "advertised", provable=False)], "verified", [], [], []),
        ([line("a", "verified"), line("r", "advertised")], "advertised", [], ["r"], []),
        ([line("a", "skipped"), line("r", "advertised")], "skipped", [], ["r"], ["a"]),
        ([line("a", "failed"), line("s", "skipped")], "failed", ["a"], [], ["s"]),
        # Any-of group: one verified member is enough; all failed blocks.
        (
            [line("g1", "failed", group="g"), line("g2", "verified", group="g")],
            "verified",
            [],
            [],
            [],
        ),
        (
            [line("g1", "failed", group="g"), line("g2", "failed", group="g")],
            "failed",
            ["g1 or g2"],
            [],
            [],
        ),
        (
            [line("g1", "failed", group="g"), line("g2", "advertised", group="g")],
            "advertised",
            [],
            ["g1 or g2"],
            [],
        ),
        ([], "failed", [], [], []),  # no line at all proves nothing
    ],
)
def test_feature_verdict_follows_from_its_lines(
    lines: list[CheckLine],
    verdict: str,
    blocked: list[str],
    unverified: list[str],
    skipped: list[str],
) -> None:
    report = CheckReport(iss="x", lines=tuple(lines), required_features=frozenset({"referrals"}))
    got = report.feature_verdicts()["referrals"]
    assert (got.verdict, list(got.blocked_by), list(got.unverified), list(got.skipped)) == (
        verdict,
        blocked,
        unverified,
        skipped,
    )
    assert report.exit_code == (0 if verdict == "verified" else 1)
