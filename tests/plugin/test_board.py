"""The scheduler board over HTTP: a day's appointments from paged searches (requests grow
with pages and 50-patient chunks, never per row), filters, flags."""

from __future__ import annotations

import datetime as dt
import math
import re
from collections.abc import Iterator
from zoneinfo import ZoneInfo

import pytest
import requests

from sandbox.testing import running_sandbox
from tests.ehr import connect
from tests.live import serve

CLIENT_ID = "caredesk-board"


@pytest.fixture
def board(make_app) -> Iterator[tuple]:  # type: ignore[no-untyped-def,type-arg]
    app = make_app()
    with serve(app) as url, running_sandbox() as sb:
        connect(app, sb, url, client_id=CLIENT_ID)
        browser = requests.Session()
        launch = sb.launch(CLIENT_ID, user="Practitioner/prac-scheduler-ortiz")
        page = browser.get(launch["url"], timeout=30)
        assert page.status_code == 200 and "/board" in page.url
        yield sb, browser, page.url.split("?")[0]


def _today() -> str:
    return dt.datetime.now(ZoneInfo("America/Chicago")).date().isoformat()


def test_board_requests_grow_with_pages_not_rows(board) -> None:
    sb, browser, url = board
    sb.generate_appointments(_today(), 400)
    sb.clear_requests()
    page = browser.get(url, params={"date": _today()}, timeout=60)
    assert page.status_code == 200
    rows = page.text.count('class="cd-row"')
    assert rows >= 400
    fhir = [r for r in sb.requests() if r["path"].startswith("/fhir/")]
    appointment_pages = sum(1 for r in fhir if r["path"] == "/fhir/Appointment")
    patient_searches = sum(1 for r in fhir if r["path"] == "/fhir/Patient")
    coverage_searches = sum(1 for r in fhir if r["path"] == "/fhir/Coverage")
    assert appointment_pages <= math.ceil(rows / 100) + 1
    # At most one Patient and one Coverage search per 50 patients on the board.
    assert patient_searches == coverage_searches <= math.ceil(rows / 50)
    assert not any(re.match(r"^/fhir/Patient/[^/]+$", r["path"]) for r in fhir)


def test_board_filters_by_practitioner_from_a_list_of_names(board) -> None:
    sb, browser, url = board
    page = browser.get(url, params={"date": _today()}, timeout=30)
    assert '<option value="prac-clinician-lee">Dr. Ana Lee</option>' in page.text
    assert "CareDesk Clinic - Lakeview</option>" in page.text
    filtered = browser.get(
        url, params={"date": _today(), "practitioner": "prac-clinician-lee"}, timeout=30
    )
    rows = re.findall(
        r'<li class="cd-row">(.*?)</li>\s*(?=<li class="cd-row">|</ol>)', filtered.text, re.S
    )
    assert rows, "Dr. Lee has visits today in the fixtures"
    assert all("Dr. Ana Lee" in row for row in rows)


def test_board_sorted_by_flags_puts_problems_first(board) -> None:
    _, browser, url = board
    page = browser.get(url, params={"date": _today(), "sort": "flags"}, timeout=30)
    first_row = page.text.split('class="cd-row"', 2)[1]
    assert "cd-flag" in first_row
