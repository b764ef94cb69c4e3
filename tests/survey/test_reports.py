"""/reports/csat: figures for a generated set of answers equal an independent computation."""

from __future__ import annotations

import csv
import hashlib
import html
import io
import random
import re
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


MIN_N = 5  # REPORT_MIN_ANSWERS' default


def _figure(value: float | None, n: int, suffix: str = " %") -> str:
    if not n or value is None:
        return "no answers"
    return "not enough answers" if n < MIN_N else f"{value:.0f}{suffix}"


def _expected(truth: list[dict], *, by_week: bool = True) -> dict[tuple[str, ...], dict[str, str]]:  # type: ignore[type-arg]
    groups: dict[tuple[str, ...], list[dict]] = defaultdict(list)  # type: ignore[type-arg]
    for t in truth:
        iso = t["visit"].astimezone(CHICAGO).isocalendar()
        monday = datetime.fromisocalendar(iso.year, iso.week, 1).date().isoformat()
        key = (monday, t["loc"], t["prac"]) if by_week else (t["loc"], t["prac"])
        groups[key].append(t)
    out = {}
    for key, items in groups.items():
        answered = [t for t in items if t["answered"]]
        csats = [t["csat"] for t in answered if t["csat"] is not None]
        npss = [t["nps"] for t in answered if t["nps"] is not None]
        happy = len([c for c in csats if c in (4, 5)])
        net = sum(n > 8 for n in npss) - sum(n < 7 for n in npss)
        out[key] = {
            "invitations": str(len(items)),
            "responses": str(len(answered)),
            "response_rate": _figure(100 * len(answered) / len(items), len(items)),
            "csat": _figure(100 * happy / len(csats) if csats else None, len(csats)),
            "csat_answers": str(len(csats)),
            "nps": _figure(100 * net / len(npss) if npss else None, len(npss), ""),
            "nps_answers": str(len(npss)),
        }
    return out


FIGURES = (
    "invitations",
    "responses",
    "response_rate",
    "csat",
    "csat_answers",
    "nps",
    "nps_answers",
)


def _csv_rows(served, launch_id: str, **params: str) -> list[dict[str, str]]:  # type: ignore[no-untyped-def]
    got = served.http.get(f"{served.url}/reports/csat.csv", params={"launch": launch_id, **params})
    assert got.status_code == 200 and got.headers["Content-Type"].startswith("text/csv")
    return list(csv.DictReader(io.StringIO(got.text)))


@pytest.mark.parametrize("seed", [7, 20261127])
def test_csv_figures_equal_an_independent_computation(survey_app, served, seed: int) -> None:
    reg_id = add_registration(survey_app, "https://ehr.example/fhir")
    other = add_registration(survey_app, "https://other.example/fhir", slug="ehr-b")
    with time_machine.travel(NOW, tick=False):
        truth = _generate(survey_app, reg_id, seed)
        _generate(survey_app, other, seed + 1)  # another EHR's figures stay out
        launch_id, secret = _launch(survey_app, reg_id)
        served.http.cookies.set(COOKIE, secret)
        weekly = _csv_rows(served, launch_id)
        people = _csv_rows(served, launch_id, table="people")
    actual = {
        (r["week"], r["location"], r["practitioner"]): {k: r[k] for k in FIGURES} for r in weekly
    }
    assert actual == _expected(truth)
    assert len(weekly) == len(actual)  # one row per group
    assert any(r["csat"] == "not enough answers" for r in weekly)  # small weeks say so
    by_people = {(r["location"], r["practitioner"]): {k: r[k] for k in FIGURES} for r in people}
    assert by_people == _expected(truth, by_week=False)


def test_one_answer_is_not_enough_for_a_percentage(survey_app, served) -> None:
    reg_id = add_registration(survey_app, "https://ehr.example/fhir")
    with time_machine.travel(NOW, tick=False):
        _, invite_id = make_invite(
            survey_app, reg_id, status="answered", visit_at=NOW - timedelta(days=1)
        )
        with get_store(survey_app).session() as s:
            s.add(SurveyResponse(invite_id=invite_id, answers={}, csat=3, nps=2, submitted_at=NOW))
        launch_id, secret = _launch(survey_app, reg_id)
        served.http.cookies.set(COOKIE, secret)
        page = served.http.get(f"{served.url}/reports/csat", params={"launch": launch_id}).text
        [row] = _csv_rows(served, launch_id)
    # Never "CSAT 0 %, NPS -100" from one answer: the count, and that it is not enough.
    assert (row["csat"], row["csat_answers"], row["nps"], row["nps_answers"]) == (
        "not enough answers",
        "1",
        "not enough answers",
        "1",
    )
    figures = re.search(r'data-testid="totals">(.*?)</dl>', page, re.S)
    assert figures and "not enough answers" in figures[1]
    assert "0 %" not in figures[1] and "-100" not in figures[1]
    assert "Not enough answers (1 of at least 5)" in page


def test_page_tables_and_their_csv_files_hold_the_same_cells(survey_app, served) -> None:
    reg_id = add_registration(survey_app, "https://ehr.example/fhir")
    with time_machine.travel(NOW, tick=False):
        _generate(survey_app, reg_id, 11)
        launch_id, secret = _launch(survey_app, reg_id)
        served.http.cookies.set(COOKIE, secret)
        page = served.http.get(f"{served.url}/reports/csat", params={"launch": launch_id}).text
        for table, testid in (("weeks", "weeks-table"), ("people", "people-table")):
            block = re.search(rf'data-testid="{testid}">(.*?)</table>', page, re.S)
            assert block
            shown = [
                [html.unescape(c) for c in re.findall(r"<td[^>]*>(.*?)</td>", tr, re.S)]
                for tr in re.findall(r"<tr>(.*?)</tr>", block[1].split("<tbody>")[1], re.S)
            ]
            got = served.http.get(
                f"{served.url}/reports/csat.csv", params={"launch": launch_id, "table": table}
            )
            assert list(csv.reader(io.StringIO(got.text)))[1:] == shown


@pytest.mark.parametrize(
    ("params", "first_day", "words"),
    [
        ({"weeks": "4"}, "2026-11-02", "Last 4 weeks (Nov 2, 2026 – Nov 27, 2026)"),
        ({"weeks": "52"}, "2025-12-01", "Last 52 weeks"),
        (
            {"weeks": "custom", "from": "2026-11-16", "to": "2026-11-22"},
            "2026-11-16",
            "Nov 16, 2026 – Nov 22, 2026",
        ),
    ],
)
def test_period_choice(
    survey_app, served, params: dict[str, str], first_day: str, words: str
) -> None:
    reg_id = add_registration(survey_app, "https://ehr.example/fhir")
    with time_machine.travel(NOW, tick=False):
        truth = _generate(survey_app, reg_id, 5)
        launch_id, secret = _launch(survey_app, reg_id)
        served.http.cookies.set(COOKIE, secret)
        page = served.http.get(f"{served.url}/reports/csat", params={"launch": launch_id, **params})
        rows = _csv_rows(served, launch_id, **params)
    assert page.status_code == 200 and words in html.unescape(page.text)
    start = datetime.fromisoformat(first_day).replace(tzinfo=CHICAGO)
    end = (
        datetime.fromisoformat(params["to"]).replace(tzinfo=CHICAGO) + timedelta(days=1)
        if "to" in params
        else NOW + timedelta(days=1)
    )
    inside = [t for t in truth if start <= t["visit"] < end]
    assert sum(int(r["invitations"]) for r in rows) == len(inside)


@pytest.mark.parametrize(
    "params",
    [
        {"weeks": "7"},
        {"weeks": "custom", "from": "2026-11-20", "to": "2026-11-01"},
        {"weeks": "custom"},
    ],
)
def test_bad_periods_are_refused_in_words(survey_app, served, params: dict[str, str]) -> None:
    reg_id = add_registration(survey_app, "https://ehr.example/fhir")
    launch_id, secret = _launch(survey_app, reg_id)
    served.http.cookies.set(COOKIE, secret)
    got = served.http.get(f"{served.url}/reports/csat", params={"launch": launch_id, **params})
    assert got.status_code == 400


def test_report_page_shows_totals_and_an_svg_chart_without_inline_style(survey_app, served) -> None:
    reg_id = add_registration(survey_app, "https://ehr.example/fhir")
    with time_machine.travel(NOW, tick=False):
        truth = _generate(survey_app, reg_id, 3)
        launch_id, secret = _launch(survey_app, reg_id)
        served.http.cookies.set(COOKIE, secret)
        page = served.http.get(f"{served.url}/reports/csat", params={"launch": launch_id})
    assert page.status_code == 200
    text = page.text
    assert "<svg" in text and "<rect" in text
    assert "style=" not in text and "<script" not in text
    assert f"<dd>{len(truth)}</dd>" in text  # total invitations
    for loc in LOCATIONS:
        assert loc in text


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
