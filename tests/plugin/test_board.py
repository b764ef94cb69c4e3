"""The scheduler board over HTTP: a day's appointments from paged searches (requests grow
with pages and 50-patient chunks, never per row), filters from the day's own references,
flags in the one vocabulary, grouping by hour and place, state kept for the way back, and
pages that say what went wrong instead of a bare error."""

from __future__ import annotations

import datetime as dt
import html
import math
import re
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs, urlsplit
from zoneinfo import ZoneInfo

import pytest
import requests

from sandbox.testing import running_sandbox
from tests.ehr import connect, sandbox_token
from tests.live import serve

CLIENT_ID = "caredesk-board"
SCHEDULER = "Practitioner/prac-scheduler-ortiz"
CHICAGO = ZoneInfo("America/Chicago")
DENVER = ZoneInfo("America/Denver")


class Board:
    """A scheduler's launch without a patient, and the board's URL."""

    def __init__(self, sb: Any, browser: requests.Session, url: str) -> None:
        self.sb, self.browser, self.url = sb, browser, url

    def get(self, **params: str) -> requests.Response:
        return self.browser.get(self.url, params=params, timeout=60, allow_redirects=False)

    def csrf(self, page: str) -> str:
        found = re.search(r'name="csrf_token" value="([^"]+)"', page)
        assert found
        return found.group(1)


@pytest.fixture
def board(connected_ehr) -> Iterator[Board]:  # type: ignore[no-untyped-def]
    _, sb = connected_ehr(CLIENT_ID)
    yield _launch(sb)


def _launch(sb: Any) -> Board:
    browser = requests.Session()
    launch = sb.launch(CLIENT_ID, user=SCHEDULER)
    page = browser.get(launch["url"], timeout=30)
    assert page.status_code == 200 and "/board" in page.url
    return Board(sb, browser, page.url.split("?")[0])


def _today() -> str:
    return dt.datetime.now(CHICAGO).date().isoformat()


def rows(page: str) -> list[str]:
    """The HTML of each visit row."""
    return page.split('<li class="cd-row')[1:]


def _options(page: str, select_id: str) -> dict[str, str]:
    block = re.search(rf'<select id="{select_id}"[^>]*>(.*?)</select>', page, re.S)
    assert block, select_id
    return {
        value: html.unescape(text)
        for value, text in re.findall(r'<option value="([^"]*)"[^>]*>([^<]*)</option>', block[1])
        if value
    }


def _day_references(sb: Any, day: str) -> tuple[set[str], set[str]]:
    """Practitioner and Location ids of the day's appointments, read from the EHR with a
    token of its own (what the board's choices must equal)."""
    token = sandbox_token(sb, scopes="system/Appointment.rs")
    start = dt.datetime.combine(dt.date.fromisoformat(day), dt.time.min, CHICAGO)
    params = {
        "date": [f"ge{start.isoformat()}", f"lt{(start + dt.timedelta(days=1)).isoformat()}"],
        "_count": "1000",
    }
    bundle = requests.get(
        f"{sb.fhir_base}/Appointment",
        params=params,
        headers={"Authorization": f"Bearer {token}"},
        timeout=30,
    ).json()
    people, places = set(), set()
    for entry in bundle.get("entry") or []:
        for part in entry["resource"].get("participant") or []:
            ref = (part.get("actor") or {}).get("reference", "")
            if ref.startswith("Practitioner/"):
                people.add(ref.split("/", 1)[1])
            if ref.startswith("Location/"):
                places.add(ref.split("/", 1)[1])
    return people, places


def test_board_requests_grow_with_pages_not_rows(board: Board) -> None:
    board.sb.generate_appointments(_today(), 400)
    board.sb.clear_requests()
    page = board.get(date=_today())
    assert page.status_code == 200
    count = len(rows(page.text))
    assert count >= 400
    fhir = [r for r in board.sb.requests() if r["path"].startswith("/fhir/")]
    appointment_pages = sum(1 for r in fhir if r["path"] == "/fhir/Appointment")
    patient_searches = sum(1 for r in fhir if r["path"] == "/fhir/Patient")
    coverage_searches = sum(1 for r in fhir if r["path"] == "/fhir/Coverage")
    assert appointment_pages <= math.ceil(count / 100) + 1
    # At most one Patient and one Coverage search per 50 patients on the board.
    assert patient_searches == coverage_searches <= math.ceil(count / 50)
    assert not any(
        re.match(r"^/fhir/(Patient|Practitioner|Location)/[^/]+$", r["path"]) for r in fhir
    )


def test_the_day_is_read_as_a_pipeline_not_page_after_page_then_patients(
    board: Board, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 16 §5: each Appointment page is asked for while the one before it is mapped,
    and the patients of the first pages are read while the later pages are on their way,
    so after the last page only what that page adds is left to wait for."""
    from plugin import board_data

    board.sb.generate_appointments(_today(), 250)
    mapped: list[float] = []  # when the mapping of each page ended
    real = board_data.to_visits

    def to_visits(appointments: Any, **kw: Any) -> Any:
        visits = real(appointments, **kw)
        time.sleep(0.05)  # a slow mapping: the next page must be on its way meanwhile
        mapped.append(time.monotonic())
        return visits

    monkeypatch.setattr(board_data, "to_visits", to_visits)
    board.sb.set_knobs(latency_ms=40)
    board.sb.clear_requests()
    page = board.get(date=_today())
    board.sb.set_knobs(latency_ms=0)
    assert page.status_code == 200 and len(rows(page.text)) >= 250
    log = board.sb.requests()
    pages = sorted((r for r in log if r["path"] == "/fhir/Appointment"), key=lambda r: r["start"])
    searches = [r for r in log if r["path"] in ("/fhir/Patient", "/fhir/Coverage")]
    assert len(pages) >= 3 and len(mapped) == len(pages)
    for done_mapping, following in zip(mapped, pages[1:], strict=False):
        assert following["start"] < done_mapping
    assert min(r["start"] for r in searches) < pages[-1]["end"]


def test_filters_list_who_and_where_has_visits_that_day_not_the_user(board: Board) -> None:
    board.sb.generate_appointments(_today(), 30, location="loc-denver")
    page = board.get(date=_today()).text
    people, places = _day_references(board.sb, _today())
    practitioners = _options(page, "bd-practitioner")
    assert set(practitioners) == people
    assert set(_options(page, "bd-location")) == places
    # The signed-in scheduler has no visits: she is not a choice.
    assert "prac-scheduler-ortiz" not in practitioners
    assert practitioners["prac-clinician-lee"].startswith("Dr. Ana Lee (")
    listed = int(re.search(r"\((\d+)\)$", practitioners["prac-clinician-lee"])[1])  # type: ignore[index]

    filtered = board.get(date=_today(), practitioner="prac-clinician-lee").text
    found = rows(filtered)
    assert len(found) == listed
    assert all("Dr. Ana Lee" in row for row in found)
    # The other choices stay: they come from the whole day, not from the filtered rows.
    assert _options(filtered, "bd-practitioner") == practitioners

    denver = rows(board.get(date=_today(), location="loc-denver").text)
    assert denver and all("Denver Highlands" in row for row in denver)


def test_refused_coverage_search_says_coverage_unknown_never_no_coverage(make_app) -> None:  # type: ignore[no-untyped-def]
    app = make_app()
    refused = ["user/Coverage.rs", "patient/Coverage.rs"]
    with serve(app) as url, running_sandbox(consent_drop_scopes=refused) as sb:
        connect(app, sb, url, client_id=CLIENT_ID)
        b = _launch(sb)
        sb.clear_requests()
        page = b.get(date=_today())
        assert page.status_code == 200
        coverage = [r for r in sb.requests() if r["path"] == "/fhir/Coverage"]
        assert coverage and all(r["status"] == 403 for r in coverage)
        text = page.text
        assert "Coverage could not be read" in text
        assert not any("No coverage on file" in r for r in rows(text))
        patient_rows = [r for r in rows(text) if "data-patient-link" in r]
        live = [r for r in patient_rows if "bd-row-cancelled" not in r.split(">", 1)[0]]
        assert live and all("Coverage unknown" in r for r in live)
        # Nobody is counted under a flag that is not theirs.
        assert 'data-flag="no-coverage"' not in text


def test_the_rows_are_rendered_with_dict_lookups_not_attribute_misses(make_app) -> None:  # type: ignore[no-untyped-def]
    """Issue 16 §5: a row and its flags are dicts, read in the template as r["x"]; r.x has
    Jinja try an attribute first and catch an AttributeError for every field of every row
    (about half the render time of a 300-visit day)."""
    app = make_app()
    looked_up: list[tuple[dict[str, Any], str]] = []
    real = app.jinja_env.getattr

    def getattr_(obj: Any, attribute: str) -> Any:
        if isinstance(obj, dict):
            looked_up.append((obj, attribute))
        return real(obj, attribute)

    app.jinja_env.getattr = getattr_  # type: ignore[method-assign]
    with serve(app) as url, running_sandbox() as sb:
        connect(app, sb, url, client_id=CLIENT_ID)
        sb.generate_appointments(_today(), 60)
        b = _launch(sb)
        looked_up.clear()
        page = b.get(date=_today())
    assert page.status_code == 200 and len(rows(page.text)) >= 60
    assert 'class="cd-flag cd-flag-' in page.text
    assert looked_up  # the page's other dicts (flag counts, filter choices) are read so
    on_rows = [a for d, a in looked_up if "appointment_id" in d]
    on_flags = [a for d, a in looked_up if "code" in d and "count" not in d]
    assert on_rows == [] and on_flags == []


def test_ehr_down_shows_the_board_frame_with_try_again(board: Board) -> None:
    board.sb.set_knobs(error_rate=1.0)
    page = board.get(date=_today(), sort="flags")
    assert page.status_code == 503
    text = page.text
    assert "The EHR is not answering" in text
    assert 'data-testid="try-again"' in text
    # The board's own frame: its heading, day navigation and filters, not an error page.
    assert "Previous day" in text and 'id="bd-filter-form"' in text
    again = re.search(r'href="([^"]+)" data-testid="try-again"', text)
    assert again
    query = parse_qs(urlsplit(html.unescape(again[1])).query)
    assert query == {"date": [_today()], "sort": ["flags"]}
    board.sb.set_knobs(error_rate=0.0)
    assert board.get(date=_today(), sort="flags").status_code == 200


def test_the_way_back_lands_on_the_same_day_filters_and_row(board: Board) -> None:
    day = (dt.date.fromisoformat(_today()) + dt.timedelta(days=1)).isoformat()
    board.sb.generate_appointments(day, 20)
    page = board.get(date=day, sort="flags", flag="needs-call")
    assert page.status_code == 200
    # A plain link to the board (the sidebar's) comes back to this state.
    back = board.get()
    assert back.status_code == 303
    assert parse_qs(urlsplit(back.headers["Location"]).query) == {
        "date": [day],
        "sort": ["flags"],
        "flag": ["needs-call"],
    }
    # Opening a patient from a row remembers the row too.
    link = re.search(r'href="([^"]*/board/open\?[^"]+)"', page.text)
    assert link
    opened = board.browser.get(
        urlsplit(board.url)._replace(path="", query="").geturl() + html.unescape(link[1]),
        allow_redirects=False,
        timeout=30,
    )
    assert opened.status_code == 303 and "/patient/Patient/" in opened.headers["Location"]
    appointment = parse_qs(urlsplit(html.unescape(link[1])).query)["appointment"][0]
    again = board.get()
    assert again.headers["Location"].endswith(f"#row-{appointment}")
    assert f"date={day}" in again.headers["Location"]


def test_search_without_javascript_finds_name_mrn_and_phone_and_keeps_them_out_of_urls(
    board: Board,
) -> None:
    page = board.get(date=_today()).text
    token = board.csrf(page)
    first = next(r for r in rows(page) if "Okonkwo" in r)
    mrn = re.search(r"MRN (\w+)", first)
    phone = re.search(r'MRN \w+ · <span class="bd-phone">([^<]+)</span>', first)
    assert mrn and phone
    for q in (
        "okonkwo",
        "MARGARET okon",
        mrn[1],
        phone[1].replace("+1 ", "(").replace("-", ") ", 1),
    ):
        found = board.browser.post(
            board.url,
            data={"csrf_token": token, "date": _today(), "sort": "time", "q": q},
            timeout=30,
            allow_redirects=False,
        )
        assert found.status_code == 200, q
        hits = rows(found.text)
        assert hits and all("Okonkwo" in r for r in hits), q
        assert q not in found.url
    accents = board.browser.post(
        board.url, data={"csrf_token": token, "date": _today(), "q": "hernandez"}, timeout=30
    )
    assert all("Hernández" in r for r in rows(accents.text)) and rows(accents.text)


def test_day_is_grouped_by_hour_and_place_with_the_location_clock_named(board: Board) -> None:
    board.sb.generate_appointments(_today(), 40, location="loc-denver")
    page = board.get(date=_today()).text
    headers = re.findall(r'<h3 class="bd-group-h"[^>]*>(.*?)</h3>', page, re.S)
    assert len(headers) >= 10
    denver = [h for h in headers if "Denver Highlands" in h]
    assert denver
    abbr = dt.datetime.now(DENVER).tzname()
    assert all(f"{abbr} there" in h for h in denver)
    assert not any("there" in h for h in headers if "Denver" not in h)
    # Rows are in the viewer's clock, in order, the place's clock beside Denver's rows.
    times = [
        dt.datetime.strptime(t, "%I:%M %p").time()
        for t in re.findall(r'<span class="bd-time"><strong>([^<]+)</strong>', page)
    ]
    assert times
    for row in rows(page):
        if "Denver Highlands" in row:
            assert f"{abbr} there" in row
    chicago_zone = dt.datetime.now(CHICAGO).tzname()
    assert f"times in {chicago_zone} (America/Chicago)" in page
    # Groups run in time order; within a group, rows too.
    hours = [int(h) for h in re.findall(r'data-group-hour="(\d+)"', page)]
    assert hours == sorted(hours)


def test_cancelled_visit_needs_no_call_and_the_no_show_is_flagged(board: Board) -> None:
    page = board.get(date=_today()).text
    by_name = {
        re.search(r"data-patient-link>([^<]+)<", r)[1]: r
        for r in rows(page)
        if "data-patient-link" in r
    }  # type: ignore[index]
    cancelled = by_name["Sofía Ramírez"]  # expiring coverage, today's visit cancelled
    assert "Cancelled" in cancelled
    assert "Coverage expiring soon" not in cancelled and "bd-flag-call" not in cancelled
    assert "data-needs-call" not in cancelled.split(">", 1)[0]
    no_show = by_name["William Henry Thompson"]
    assert "No-show: rebook" in no_show and "data-needs-call" in no_show.split(">", 1)[0]


def test_a_chart_launch_cannot_open_the_board(board: Board) -> None:
    browser = requests.Session()
    launch = board.sb.launch(CLIENT_ID, patient="pat-001", user="Practitioner/prac-clinician-lee")
    page = browser.get(launch["url"], timeout=30)
    base = page.url.split("/l/")[0]
    launch_id = page.url.split("/l/")[1].split("/")[0]
    refused = browser.get(f"{base}/l/{launch_id}/board", timeout=30)
    assert refused.status_code == 403
    assert "belongs to the chart's patient" in html.unescape(refused.text)


def _appointment(aid: str, patient: str, start: str) -> dict[str, Any]:
    return {
        "resourceType": "Appointment",
        "id": aid,
        "status": "booked",
        "start": start,
        "participant": [
            {"actor": {"reference": f"Patient/{patient}"}, "status": "accepted"},
            {"actor": {"reference": "Practitioner/dr-late"}, "status": "accepted"},
            {"actor": {"reference": "Location/loc-late"}, "status": "accepted"},
        ],
    }


_LATE_INCLUDES = [
    {
        "resourceType": "Practitioner",
        "id": "dr-late",
        "name": [{"given": ["Ana"], "family": "Lee", "prefix": ["Dr."]}],
    },
    {
        "resourceType": "Location",
        "id": "loc-late",
        "name": "Denver Highlands",
        "extension": [
            {
                "url": "http://hl7.org/fhir/StructureDefinition/timezone",
                "valueCode": "America/Denver",
            }
        ],
    },
]


@pytest.mark.parametrize("includes_on", ["first page", "second page"])
def test_an_include_sent_with_a_later_page_names_the_earlier_pages_visits(
    make_app, includes_on: str
) -> None:  # type: ignore[no-untyped-def]
    """Pages are mapped as they arrive; an EHR that sends a page's `_include`s with a
    later page still gets every visit named and timed as if the day were read at once."""
    from plugin.board_data import fetch_board
    from tests.plugin.reader_fuzzing import _launch, fake_ehr

    first = [_appointment("a1", "p1", "2026-11-30T15:00:00Z")]
    second = [_appointment("a2", "p2", "2026-11-30T16:00:00Z")]
    if includes_on == "first page":
        first += _LATE_INCLUDES
    else:
        second += _LATE_INCLUDES

    def bundle(resources: list[dict[str, Any]], next_url: str | None = None) -> dict[str, Any]:
        return {
            "resourceType": "Bundle",
            "type": "searchset",
            "link": [{"relation": "next", "url": next_url}] if next_url else [],
            "entry": [{"resource": r} for r in resources],
        }

    with fake_ehr(make_app()) as ehr:
        ehr["/Appointment"] = bundle(first, "http://ehr.test/fhir/Appointment-page-2")
        ehr["/Appointment-page-2"] = bundle(second)
        ehr["/Patient"] = bundle(
            [{"resourceType": "Patient", "id": p, "name": [{"text": p}]} for p in ("p1", "p2")]
        )
        board = fetch_board(_launch(None), day=dt.date(2026, 11, 30))
    by_id = {row["appointment_id"]: row for row in board["rows"]}
    assert set(by_id) == {"a1", "a2"}
    for row in by_id.values():
        assert row["practitioner"] == "Dr. Ana Lee"
        assert row["location"] == "Denver Highlands"
        assert row["location_tz"] == "America/Denver" and row["location_start"]
    assert [c["name"] for c in board["locations"]] == ["Denver Highlands"]


def test_the_stores_flags_are_read_a_page_at_a_time_while_the_next_page_is_in_flight(
    make_app,
) -> None:  # type: ignore[no-untyped-def]
    """Issue 16 §5: open tickets, overdue calls and failed reminders come from the store
    for the patients of each page while the next page is on its way (four queries a page,
    none per row), and still land on every visit they belong to, whichever page it is on."""
    from sqlalchemy import event, select

    from helpdesk.db import get_store
    from helpdesk.models import CareTask, EhrRegistration, Ticket

    app = make_app()
    with serve(app) as url, running_sandbox() as sb:
        connect(app, sb, url, client_id=CLIENT_ID)
        sb.generate_appointments(_today(), 250)
        b = _launch(sb)
        links = re.findall(r'appointment=([^&"]+)&amp;patient=([^&"]+)"', b.get(date=_today()).text)
        visits: dict[str, list[str]] = {}
        for appointment, patient in links:
            visits.setdefault(patient.replace("%2F", "/"), []).append(appointment)
        many = sorted((p for p in visits if len(visits[p]) >= 3), key=lambda p: -len(visits[p]))
        urgent, overdue, failed = many[:3]
        now = dt.datetime.now(dt.UTC)
        with get_store(app).session() as db:
            reg = db.scalars(select(EhrRegistration.id)).one()
            db.add(
                Ticket(
                    registration_id=reg,
                    patient_ref=urgent,
                    subject="Billing question",
                    category="billing",
                    priority="urgent",
                )
            )
            db.add(
                CareTask(
                    registration_id=reg,
                    patient_ref=overdue,
                    kind="follow-up",
                    due_at=now - dt.timedelta(days=1),
                )
            )
            for appointment in visits[failed]:
                db.add(
                    CareTask(
                        registration_id=reg,
                        patient_ref=failed,
                        kind="reminder",
                        status="failed",
                        payload={"appointment_ref": f"Appointment/{appointment}"},
                    )
                )
            db.commit()

        asked: list[float] = []  # when the board asked the store about tickets

        def statement(conn, cursor, sql, *args) -> None:  # type: ignore[no-untyped-def]
            if re.search(r"\bFROM ticket\b", sql):
                asked.append(time.monotonic())

        engine = get_store(app).engine
        event.listen(engine, "before_cursor_execute", statement)
        sb.set_knobs(latency_ms=40)
        sb.clear_requests()
        try:
            page = b.get(date=_today()).text
        finally:
            event.remove(engine, "before_cursor_execute", statement)
            sb.set_knobs(latency_ms=0)
        pages = [r for r in sb.requests() if r["path"] == "/fhir/Appointment"]

    assert 2 <= len(asked) <= len(pages)
    assert min(asked) < max(r["end"] for r in pages)
    by_visit = {
        found[1]: row
        for row in rows(page)
        if (found := re.search(r'appointment=([^&"]+)&amp;', row))
    }
    for patient, appointments in visits.items():
        for appointment in appointments:
            row = by_visit[appointment]
            assert ("Open high-priority ticket" in row) == (patient == urgent)
            assert ("Overdue call" in row) == (patient == overdue)
            # Nobody calls about a cancelled visit: its failed reminder is not shown.
            live = "bd-row-cancelled" not in row.split(">", 1)[0]
            assert ("Reminder failed" in row) == (patient == failed and live)
