"""The scheduler's board as she uses it: a 300-visit day across two time zones, inside
the sandbox EHR's 400 px panel and in a full 1440 px tab. Grouped, searchable, filtered,
a keyboard path to the next patient who needs a call, and the same place after opening a
patient and coming back. Screenshots go to test-artifacts/screenshots/; axe-core checks
every state (WCAG 2.2 AA)."""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs, urlsplit
from zoneinfo import ZoneInfo

import pytest

from sandbox.testing import running_sandbox
from tests.browser.pages import (
    NARROW,
    WIDE,
    assert_accessible,
    frame_url,
    horizontal_overflow,
    open_in_ehr,
)
from tests.ehr import connect
from tests.live import serve

CLIENT_ID = "caredesk-browser"
SCHEDULER = "prac-scheduler-ortiz"
CHICAGO = ZoneInfo("America/Chicago")
IN_FRAME = {"fromFrames": ["#app-frame"]}


@pytest.fixture
def busy_day(make_app) -> Iterator[Any]:  # type: ignore[no-untyped-def]
    """The sandbox with 300 extra visits today: 240 across the clinics, 60 in Denver
    (America/Denver, an hour behind the viewer's Chicago)."""
    app = make_app()
    with serve(app) as url, running_sandbox() as sb:
        connect(app, sb, url, client_id=CLIENT_ID)
        today = dt.datetime.now(CHICAGO).date().isoformat()
        sb.generate_appointments(today, 240)
        sb.generate_appointments(today, 60, location="loc-denver")
        yield sb


def _content(frame_el: Any) -> Any:
    return frame_el.element_handle().content_frame()


def _query(url: str) -> dict[str, list[str]]:
    return parse_qs(urlsplit(url).query)


def _visible_rows(where: Any) -> Any:
    return where.locator("[data-row]:not([hidden])")


def _story(where: Any, content: Any, shot: Any, prefix: str) -> None:
    """Filter, search, open a patient, come back: everything as it was."""
    board = where.get_by_test_id("board")
    board.wait_for(timeout=30_000)
    total = where.locator("[data-row]").count()
    assert total >= 300
    headers = where.locator(".bd-group-h")
    assert headers.count() >= 10
    assert "Denver Highlands" in where.locator(".bd-group-h").all_inner_texts().__str__()
    position = content.evaluate("getComputedStyle(document.querySelector('.bd-group-h')).position")
    assert position == "sticky"
    # Scrolled to the end of the busiest hour, its header is still on top.
    top = content.evaluate(
        """(() => {
          const groups = [...document.querySelectorAll('[data-group]')];
          const size = g => g.querySelectorAll('[data-row]').length;
          const g = groups.reduce((a, b) => (size(a) >= size(b) ? a : b));
          const rows = g.querySelectorAll('[data-row]');
          window.scrollBy(0, rows[rows.length - 1].getBoundingClientRect().top - 80);
          return g.querySelector('.bd-group-h').getBoundingClientRect().top;
        })()"""
    )
    assert abs(top) < 1
    shot(f"{prefix}-day")

    where.locator("#bd-sort").select_option("flags")
    content.wait_for_url(re.compile(r"sort=flags"))
    where.get_by_test_id("board").wait_for()
    if prefix.endswith("400"):
        where.locator("#bd-flag").select_option("needs-call")
    else:
        where.locator(".bd-flagnav a[data-flag=needs-call]").click()
    content.wait_for_url(re.compile(r"flag=needs-call"))
    where.get_by_test_id("board").wait_for()
    needing = where.locator("[data-row]").count()
    assert needing == where.locator("[data-row][data-needs-call]").count() > 0

    search = where.locator("#bd-q")
    search.fill("ramirez")
    content.wait_for_function(
        "n => document.querySelector('[data-shown]').textContent !== n", arg=str(needing)
    )
    found = _visible_rows(where)
    count = found.count()
    assert 0 < count < needing
    assert all("Ramírez" in t for t in found.all_inner_texts())
    assert where.locator("[data-shown]").inner_text() == str(count)
    # The search text never goes to the server: it is not in the query.
    assert "ramirez" not in urlsplit(content.url).query
    shot(f"{prefix}-searched")

    before = _query(content.url)
    target = found.nth(min(1, count - 1))
    row_id = target.get_attribute("id")
    target.locator("[data-patient-link]").click()
    content.wait_for_url(re.compile(r"/patient/Patient/"))
    where.get_by_role("link", name=re.compile(r"board", re.I)).first.click()
    content.wait_for_url(re.compile(r"/board\?"))
    where.get_by_test_id("board").wait_for()
    after = _query(content.url)
    assert after == before
    assert urlsplit(content.url).fragment == row_id
    assert search.input_value() == "ramirez"
    assert _visible_rows(where).count() == count
    focused = content.evaluate("document.activeElement && document.activeElement.id")
    assert focused == row_id
    shot(f"{prefix}-back-from-patient")


def test_a_300_visit_day_in_the_ehr_panel_keeps_its_state_across_a_patient(
    busy_day, chromium, screenshots
) -> None:
    page, frame, frame_el = open_in_ehr(
        chromium, busy_day.base_url, user=SCHEDULER, mode="board", client=CLIENT_ID
    )
    frame.get_by_test_id("board").wait_for(timeout=30_000)
    box = frame_el.bounding_box()
    assert box and 380 <= box["width"] <= 420
    content = _content(frame_el)
    assert horizontal_overflow(content) <= 0
    assert_accessible(page, "the board in the EHR panel", context=IN_FRAME)

    def shot(name: str) -> None:
        frame_el.screenshot(path=str(screenshots / f"board-{name}.png"))

    _story(frame, content, shot, "ehr-400")
    assert_accessible(page, "the board after coming back", context=IN_FRAME)

    # The same board on its own at the narrowest and widest widths (the page's own URL,
    # in the same browser): nothing scrolls sideways, axe finds nothing.
    url = frame_url(frame_el).split("#")[0]
    for width in (NARROW, WIDE):
        page.set_viewport_size({"width": width, "height": 900})
        page.goto(url)
        page.get_by_test_id("board").wait_for()
        page.evaluate("window.scrollTo(0, 0)")
        assert horizontal_overflow(page) <= 0, width
        page.screenshot(path=str(screenshots / f"board-{width}px.png"))
        assert_accessible(page, f"the board at {width} px")
    page.close()


def test_a_300_visit_day_in_a_full_tab_uses_the_width(busy_day, chromium, screenshots) -> None:
    context = chromium.new_context(viewport={"width": 1440, "height": 900})
    page = context.new_page()
    page.goto(f"{busy_day.base_url}/ehr/launch?user={SCHEDULER}&client={CLIENT_ID}")
    page.get_by_test_id("board").wait_for(timeout=30_000)
    # Filters beside the list, each visit one line of columns.
    side = page.locator(".bd-side").bounding_box()
    main = page.locator(".bd-main").bounding_box()
    assert side and main and side["x"] + side["width"] <= main["x"]
    assert main["width"] > 900
    row = page.locator("[data-row]").first
    parts = [row.locator(s).bounding_box() for s in (".bd-time", ".bd-who", ".bd-visit")]
    assert all(p is not None for p in parts)
    ys = [p["y"] for p in parts if p]
    xs = [p["x"] for p in parts if p]
    assert max(ys) - min(ys) < 16 and xs == sorted(xs)  # side by side, not stacked
    assert horizontal_overflow(page) <= 0
    assert_accessible(page, "the board in a full tab")

    def shot(name: str) -> None:
        page.screenshot(path=str(screenshots / f"board-{name}.png"))

    _story(page, page.main_frame, shot, "tab-1440")
    assert_accessible(page, "the board in a tab after coming back")
    # Reminders for three visits, answered in the tab's width.
    picks = page.locator("[data-row]:not([hidden]) input[name=appointment]")
    for i in range(3):
        picks.nth(i).check()
    page.get_by_test_id("remind-selected").click()
    page.get_by_test_id("reminder-summary").wait_for()
    assert horizontal_overflow(page) <= 0
    shot("reminders-1440")
    assert_accessible(page, "the reminders summary in a tab")
    context.close()


def test_next_who_needs_a_call_from_the_keyboard(busy_day, chromium, screenshots) -> None:
    page, frame, frame_el = open_in_ehr(
        chromium, busy_day.base_url, user=SCHEDULER, mode="board", client=CLIENT_ID
    )
    frame.get_by_test_id("board").wait_for(timeout=30_000)
    content = _content(frame_el)
    expected = content.evaluate(
        "[...document.querySelectorAll('[data-row][data-needs-call]')].map(r => r.id)"
    )
    assert len(expected) > 3
    frame.get_by_test_id("next-call").focus()
    page.keyboard.press("Enter")
    seen = [content.evaluate("document.activeElement.closest('[data-row]').id")]
    for _ in range(3):
        page.keyboard.press("n")  # single keys act only while focus is in the list
        seen.append(content.evaluate("document.activeElement.closest('[data-row]').id"))
    assert seen == expected[:4]
    page.keyboard.press("p")
    assert content.evaluate("document.activeElement.closest('[data-row]').id") == expected[2]
    # Typed into the search box, n is just a letter.
    frame.locator("#bd-q").focus()
    page.keyboard.type("n")
    assert frame.locator("#bd-q").input_value() == "n"
    frame_el.screenshot(path=str(screenshots / "board-ehr-400-next-call.png"))
    page.close()


def _tomorrows_board(frame: Any) -> None:
    frame.get_by_test_id("next-day").click()
    frame.get_by_role("heading", name=re.compile(r"^Tomorrow")).wait_for()
    frame.get_by_test_id("board").wait_for()


def test_queue_reminders_from_the_board_in_the_browser(busy_day, chromium, screenshots) -> None:
    # Tomorrow's visits: today's first ones have started by mid-morning in Denver, and a
    # visit that has started gets no reminder, whatever the time of day the test runs.
    tomorrow = dt.datetime.now(CHICAGO).date() + dt.timedelta(days=1)
    busy_day.generate_appointments(tomorrow.isoformat(), 12)
    page, frame, frame_el = open_in_ehr(
        chromium, busy_day.base_url, user=SCHEDULER, mode="board", client=CLIENT_ID
    )
    frame.get_by_test_id("board").wait_for(timeout=30_000)
    _tomorrows_board(frame)
    picks = frame.locator("input[name=appointment]")
    for i in range(3):
        picks.nth(i).check()
    assert "(3)" in frame.get_by_test_id("remind-selected").inner_text()
    frame.get_by_test_id("remind-selected").click()
    summary = frame.get_by_test_id("reminder-summary")
    summary.wait_for()
    assert re.search(r"\b[0-3] reminders? queued", summary.inner_text())
    frame_el.screenshot(path=str(screenshots / "board-reminders-queued.png"))
    assert_accessible(page, "the reminders summary", context=IN_FRAME)
    frame.get_by_test_id("back-to-board").click()
    frame.get_by_role("heading", name=re.compile(r"^Tomorrow")).wait_for()
    frame.get_by_test_id("board").wait_for()
    # The same three again: nothing new, and why.
    picks = frame.locator("input[name=appointment]")
    for i in range(3):
        picks.nth(i).check()
    frame.get_by_test_id("remind-selected").click()
    summary.wait_for()
    assert "0 reminders queued, 3 skipped" in summary.inner_text()
    assert frame.get_by_test_id("skipped").inner_text().count("task #") >= 1
    frame_el.screenshot(path=str(screenshots / "board-reminders-second-run.png"))
    assert_accessible(page, "the reminders summary, second run", context=IN_FRAME)
    # The same rows as reminder calls: on the call list, the count on that button too.
    frame.get_by_test_id("back-to-board").click()
    frame.get_by_role("heading", name=re.compile(r"^Tomorrow")).wait_for()
    frame.get_by_test_id("board").wait_for()
    picks = frame.locator("input[name=appointment]")
    for i in range(2):
        picks.nth(i).check()
    assert "(2)" in frame.get_by_test_id("call-selected").inner_text()
    frame.get_by_test_id("call-selected").click()
    summary.wait_for()
    assert re.search(r"\b[0-2] reminder calls? queued", summary.inner_text())
    frame_el.screenshot(path=str(screenshots / "board-reminder-calls.png"))
    assert_accessible(page, "the reminder calls summary", context=IN_FRAME)
    page.close()


def test_ehr_down_shows_the_board_with_try_again(busy_day, chromium, screenshots) -> None:
    page, frame, frame_el = open_in_ehr(
        chromium, busy_day.base_url, user=SCHEDULER, mode="board", client=CLIENT_ID
    )
    frame.get_by_test_id("board").wait_for(timeout=30_000)
    busy_day.set_knobs(error_rate=1.0)
    frame.get_by_test_id("next-day").click()
    frame.get_by_test_id("board-down").wait_for()
    assert "The EHR is not answering" in frame.get_by_test_id("board-down").inner_text()
    frame_el.screenshot(path=str(screenshots / "board-ehr-down.png"))
    assert_accessible(page, "the board with the EHR down", context=IN_FRAME)
    busy_day.set_knobs(error_rate=0.0)
    frame.get_by_test_id("try-again").click()
    frame.get_by_test_id("board").wait_for()
    page.close()
