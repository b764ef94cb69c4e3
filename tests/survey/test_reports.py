"""/reports/csat: figures for a generated set of answers equal an independent computation."""

from __future__ import annotations

import csv
import hashlib
import io
import random
import secrets
from collections import defaultdict
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
import time_machine

from helpdesk.db import get_store
from helpdesk.models import LaunchSession, SurveyInvite, SurveyResponse
from plugin.launch import COOKIE
from tests.survey.conftest import add_registration, make_invite

CHICAGO = ZoneInfo("America/Chicago")
NOW = datetime(2026, 11, 27, 15, 0, tzinfo=CHICAGO)  # a Friday
LOCATIONS = ["CareDesk Clinic - Lakeview", "CareDesk Clinic - Denver Highlands"]
PRACTITIONERS = ["Dr. Ana Lee", "Mai Nguyen, NP", "Dr. Patrick Brennan"]


def _launch(app, reg_id: int) -> tuple[str, str]:  # type: ignore[no-untyped-def]
    launch_id, secret = secrets.token_urlsafe(16), secrets.token_urlsafe(32)
    with get_store(app).session() as s:
        s.add(
            LaunchSession(
                id=launch_id,
                registration_id=reg_id,
                status="active",
                browser_hash=hashlib.sha256(secret.encode()).hexdigest(),
                fhir_user="Practitioner/prac-clinician-lee",
                # A staff launch without a patient whose grant reaches every patient.
                scope_granted="openid fhirUser user/*.rs",
            )
        )
    return launch_id, secret


def _generate(app, reg_id: int, seed: int) -> list[dict]:  # type: ignore[no-untyped-def,type-arg]
    """Invitations over four weeks, some answered, with their ground truth."""
    rng = random.Random(seed)
    truth = []
    for _ in range(120):
        visit = NOW - timedelta(days=rng.randrange(0, 27), hours=rng.randrange(0, 9))
        loc, prac = rng.choice(LOCATIONS), rng.choice(PRACTITIONERS)
        status = rng.choice(["sent", "answered", "answered", "expired"])
        _, invite_id = make_invite(
            app,
            reg_id,
            status=status,
            visit_at=visit,
            sent_at=visit + timedelta(hours=2),
            clinic_name=loc,
            practitioner_name=prac,
        )
        csat = nps = None
        if status == "answered":
            csat = rng.choice([None, 1, 2, 3, 4, 5])
            nps = rng.choice([None, *range(11)])
            with get_store(app).session() as s:
                s.add(
                    SurveyResponse(
                        invite_id=invite_id,
                        answers={},
                        csat=csat,
                        nps=nps,
                        submitted_at=visit + timedelta(hours=3),
                    )
                )
        truth.append(
            {
                "visit": visit,
                "loc": loc,
                "prac": prac,
                "answered": status == "answered",
                "csat": csat,
                "nps": nps,
            }
        )
    # Noise the report must leave out: skipped and never-sent invitations.
    make_invite(
        app,
        reg_id,
        status="skipped",
        visit_at=NOW - timedelta(days=1),
        clinic_name=LOCATIONS[0],
        practitioner_name=PRACTITIONERS[0],
    )
    make_invite(
        app,
        reg_id,
        status="pending",
        visit_at=NOW - timedelta(days=1),
        clinic_name=LOCATIONS[0],
        practitioner_name=PRACTITIONERS[0],
    )
    return truth


def _expected(truth: list[dict]) -> dict[tuple[str, str, str], dict[str, str]]:  # type: ignore[type-arg]
    groups: dict[tuple[str, str, str], list[dict]] = defaultdict(list)  # type: ignore[type-arg]
    for t in truth:
        iso = t["visit"].astimezone(CHICAGO).isocalendar()
        monday = datetime.fromisocalendar(iso.year, iso.week, 1).date().isoformat()
        groups[(monday, t["loc"], t["prac"])].append(t)
    out = {}
    for key, items in groups.items():
        answered = [t for t in items if t["answered"]]
        csats = [t["csat"] for t in answered if t["csat"] is not None]
        npss = [t["nps"] for t in answered if t["nps"] is not None]
        out[key] = {
            "invitations": str(len(items)),
            "responses": str(len(answered)),
            "response_rate_percent": f"{100 * len(answered) / len(items):.1f}",
            "csat_percent": f"{100 * len([c for c in csats if c in (4, 5)]) / len(csats):.1f}"
            if csats
            else "",
            "nps": f"{100 * (sum(n > 8 for n in npss) - sum(n < 7 for n in npss)) / len(npss):.1f}"
            if npss
            else "",
        }
    return out


@pytest.mark.parametrize("seed", [7, 20261127])
def test_csv_figures_equal_an_independent_computation(survey_app, served, seed: int) -> None:
    reg_id = add_registration(survey_app, "https://ehr.example/fhir")
    other = add_registration(survey_app, "https://other.example/fhir", slug="ehr-b")
    with time_machine.travel(NOW, tick=False):
        truth = _generate(survey_app, reg_id, seed)
        _generate(survey_app, other, seed + 1)  # another EHR's figures stay out
        launch_id, secret = _launch(survey_app, reg_id)
        served.http.cookies.set(COOKIE, secret)
        got = served.http.get(f"{served.url}/reports/csat.csv", params={"launch": launch_id})
    assert got.status_code == 200 and got.headers["Content-Type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(got.text)))
    actual = {
        (r["week"], r["location"], r["practitioner"]): {
            k: r[k]
            for k in ("invitations", "responses", "response_rate_percent", "csat_percent", "nps")
        }
        for r in rows
    }
    assert actual == _expected(truth)
    assert len(rows) == len(actual)  # one row per group


def test_report_page_shows_totals_and_an_svg_chart_without_inline_style(survey_app, served) -> None:
    reg_id = add_registration(survey_app, "https://ehr.example/fhir")
    with time_machine.travel(NOW, tick=False):
        truth = _generate(survey_app, reg_id, 3)
        launch_id, secret = _launch(survey_app, reg_id)
        served.http.cookies.set(COOKIE, secret)
        page = served.http.get(f"{served.url}/reports/csat", params={"launch": launch_id})
    assert page.status_code == 200
    html = page.text
    assert "<svg" in html and "<rect" in html
    assert "style=" not in html and "<script" not in html
    assert f"<dd>{len(truth)}</dd>" in html  # total invitations
    for loc in LOCATIONS:
        assert loc in html


def test_report_needs_the_launch_of_this_browser(survey_app, served) -> None:
    reg_id = add_registration(survey_app, "https://ehr.example/fhir")
    launch_id, _secret = _launch(survey_app, reg_id)
    assert served.http.get(f"{served.url}/reports/csat").status_code == 401
    served.http.cookies.set(COOKIE, "someone-elses-browser-secret-value-1234")
    denied = served.http.get(f"{served.url}/reports/csat.csv", params={"launch": launch_id})
    assert denied.status_code == 401


def test_answers_not_written_back_are_exportable(survey_app, served) -> None:
    reg_id = add_registration(survey_app, "https://ehr.example/fhir")
    _, kept = make_invite(survey_app, reg_id, status="answered")
    _, written = make_invite(survey_app, reg_id, status="answered", patient_ref="Patient/pat-002")
    with get_store(survey_app).session() as s:
        s.add(
            SurveyResponse(
                invite_id=kept,
                answers={"csat": "2"},
                csat=2,
                comment="=cmd()",
                writeback_status="not-supported",
            )
        )
        s.add(
            SurveyResponse(
                invite_id=written,
                answers={"csat": "5"},
                csat=5,
                writeback_status="written",
                fhir_id="qr-1",
            )
        )
    launch_id, secret = _launch(survey_app, reg_id)
    served.http.cookies.set(COOKIE, secret)
    got = served.http.get(
        f"{served.url}/reports/csat/responses.csv",
        params={"launch": launch_id, "status": "not-supported"},
    )
    rows = list(csv.DictReader(io.StringIO(got.text)))
    assert [(r["invitation_id"], r["patient"], r["csat"], r["writeback_status"]) for r in rows] == [
        (kept, "Patient/pat-001", "2", "not-supported")
    ]
    assert rows[0]["comment"] == "'=cmd()"  # no formula injection into spreadsheets
    with get_store(survey_app).session() as s:
        assert s.get(SurveyInvite, kept).status == "answered"
