"""The staff pages around the board as help-desk staff use them: the satisfaction report,
the jobs page (Retry in the browser: the form once answered 403), the ticket pages and
the demo outbox. Each at 400 px inside the sandbox EHR, and on its own at 320 and 1440 px;
axe-core (WCAG 2.2 AA) on every one. Screenshots go to test-artifacts/screenshots/."""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterator
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import select

from helpdesk.crypto import get_vault
from helpdesk.db import get_store
from helpdesk.models import CareTask, EhrRegistration, OutboundMessage, SurveyResponse, Ticket
from helpdesk.tasks import GAVE_UP
from helpdesk.tickets import open_ticket
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
from tests.survey.conftest import make_invite

CLIENT_ID = "caredesk-browser"
SCHEDULER = "prac-scheduler-ortiz"
CHICAGO = ZoneInfo("America/Chicago")
IN_FRAME = {"fromFrames": ["#app-frame"]}
LOCATIONS = ["CareDesk Clinic - Lakeview", "CareDesk Clinic - Denver Highlands"]
PRACTITIONERS = ["Dr. Ana Lee", "Mai Nguyen, NP", "Dr. Patrick Brennan"]


@pytest.fixture
def staff(make_app) -> Iterator[tuple[Any, Any]]:  # type: ignore[no-untyped-def]
    app = make_app()
    with serve(app) as url, running_sandbox() as sb:
        connect(app, sb, url, client_id=CLIENT_ID)
        _seed(app, url)
        yield app, sb


def _seed(app: Any, url: str) -> None:
    with get_store(app).session() as s:
        reg = s.scalar(select(EhrRegistration.id))
    assert reg is not None
    now = dt.datetime.now(CHICAGO)
    # Survey answers over four weeks: some cells with enough answers, some without.
    n = 0
    for days in range(0, 27):
        for loc_i, loc in enumerate(LOCATIONS):
            for prac in PRACTITIONERS[: 3 - loc_i]:
                n += 1
                visit = now - dt.timedelta(days=days, hours=1)
                _, invite = make_invite(
                    app,
                    reg,
                    status="answered" if n % 3 else "sent",
                    visit_at=visit,
                    sent_at=visit + dt.timedelta(hours=2),
                    clinic_name=loc,
                    practitioner_name=prac,
                    appointment_ref=f"Appointment/seed-{n}",
                )
                if n % 3:
                    with get_store(app).session() as s:
                        s.add(
                            SurveyResponse(
                                invite_id=invite,
                                answers={},
                                csat=1 + n % 5,
                                nps=n % 11,
                                submitted_at=visit + dt.timedelta(hours=3),
                            )
                        )
    vault = get_vault(app)
    with get_store(app).session() as s:
        for i, (status, error, kind) in enumerate(
            [
                (
                    "failed",
                    f"{GAVE_UP} 3 attempts: the EHR answered 503 (Retry-After 30)",
                    "reminder",
                ),
                ("failed", "The patient cannot be reached by SMS or email.", "reminder"),
                ("queued", None, "survey-invite"),
                ("done", None, "follow-up"),
                ("needs-authorization", "The EHR ended this session's grant.", "referral"),
            ]
        ):
            s.add(
                CareTask(
                    registration_id=reg,
                    kind=kind,
                    status=status,
                    patient_ref=f"Patient/pat-00{i + 1}",
                    payload={"appointment_ref": f"Appointment/appt-pat-00{i + 1}-next"},
                    attempts=3 if status == "failed" else 1,
                    max_attempts=3,
                    last_error=error,
                    status_note="Reminder sent by sms to ···0113." if status == "done" else None,
                )
            )
        ticket = open_ticket(
            s,
            registration_id=reg,
            patient_ref="Patient/pat-001",
            subject="Question about a bill from the October visit",
            category="billing",
            priority="high",
        )
        open_ticket(
            s,
            registration_id=reg,
            patient_ref="Patient/pat-002",
            subject="Needs an interpreter for the next visit",
            category="scheduling",
            priority="urgent",
        )
        s.flush()
        link = f"{url}/s/" + "k" * 43
        for channel, to, subject, body in (
            ("sms", "+13125550113", "How was your visit?", f"CareDesk: how was your visit? {link}"),
            (
                "email",
                "peggy.okonkwo@example.org",
                "How was your visit with Dr. Ana Lee?",
                f"Dear Margaret,\n\nThree questions, one minute:\n{link}\n\nCareDesk",
            ),
        ):
            s.add(
                OutboundMessage(
                    registration_id=reg,
                    patient_ref="Patient/pat-001",
                    channel=channel,
                    adapter="outbox",
                    template="survey-invitation",
                    language="en",
                    to_enc=vault.encrypt(to),
                    subject_enc=vault.encrypt_optional(subject),
                    body_enc=vault.encrypt(body),
                    status="sent",
                )
            )
        assert ticket.id


def _board(sb: Any, chromium: Any) -> tuple[Any, Any, Any]:
    page, frame, frame_el = open_in_ehr(
        chromium, sb.base_url, user=SCHEDULER, mode="board", client=CLIENT_ID
    )
    frame.get_by_test_id("board").wait_for(timeout=30_000)
    return page, frame, frame_el


def _content(frame_el: Any) -> Any:
    return frame_el.element_handle().content_frame()


def _widths(page: Any, url: str, name: str, screenshots: Any, ready: str) -> None:
    """The page on its own at 320 and 1440 px: screenshot, nothing sideways, axe."""
    for width in (NARROW, WIDE):
        page.set_viewport_size({"width": width, "height": 900})
        page.goto(url)
        page.locator(ready).first.wait_for()
        page.screenshot(path=str(screenshots / f"{name}-{width}px.png"), full_page=True)
        assert horizontal_overflow(page) <= 0, f"{name} scrolls sideways at {width} px"
        assert_accessible(page, f"{name} at {width} px")


def _hidden_sideways(page_or_frame: Any) -> int:
    """How many pixels of the report's tables sit outside their box (to be scrolled to)."""
    return int(
        page_or_frame.evaluate(
            "Math.max(0, ...[...document.querySelectorAll('.st-scroll')]"
            ".map(e => e.scrollWidth - e.clientWidth))"
        )
    )


def test_satisfaction_report(staff, chromium, screenshots) -> None:
    _, sb = staff
    page, frame, frame_el = _board(sb, chromium)
    frame.get_by_role("link", name="Satisfaction report").click()
    frame.get_by_test_id("totals").wait_for()
    text = frame.locator("main").inner_text()
    assert "not enough answers" in text.lower()
    assert re.search(r"\d+ %", frame.get_by_test_id("chart").inner_text())
    frame_el.screenshot(path=str(screenshots / "report-ehr-400.png"))
    assert_accessible(page, "the report in the EHR panel", context=IN_FRAME)
    # In the panel each row is a card: no column is cut off or hidden sideways.
    assert _hidden_sideways(_content(frame_el)) == 0
    frame.get_by_test_id("weeks-table").scroll_into_view_if_needed()
    frame_el.screenshot(path=str(screenshots / "report-ehr-400-weeks.png"))
    # A different period, chosen in the page.
    frame.locator("input[name=weeks][value='4']").check()
    frame.get_by_role("button", name="Show").click()
    frame.get_by_test_id("period-words").filter(has_text="Last 4 weeks").wait_for()
    url = frame_url(frame_el)
    _widths(page, url, "report", screenshots, "[data-testid=totals]")
    page.set_viewport_size({"width": NARROW, "height": 900})
    assert _hidden_sideways(page) == 0
    # At 1440 px the NPS column is on screen, not cut off.
    page.set_viewport_size({"width": WIDE, "height": 900})
    box = page.locator("[data-testid=people-table] th", has_text="NPS answers").bounding_box()
    assert box and box["x"] + box["width"] <= WIDE
    page.close()


def test_jobs_page_retry_works_in_the_browser(staff, chromium, screenshots) -> None:
    app, sb = staff
    page, frame, frame_el = _board(sb, chromium)
    frame.get_by_role("link", name="Jobs").click()
    frame.get_by_test_id("queue-state").wait_for()
    assert "No worker is running" in frame.get_by_test_id("queue-state").inner_text()
    retries = frame.get_by_test_id("retry")
    assert retries.count() == 2  # the 503s and the ended grant; not "cannot be reached"
    # The lasting failure says why there is no Retry and what to do instead.
    lasting = frame.locator("tr", has_text="cannot be reached by SMS or email")
    assert lasting.get_by_test_id("retry").count() == 0
    assert "Call the patient instead" in lasting.get_by_test_id("instead").inner_text()
    frame_el.screenshot(path=str(screenshots / "jobs-ehr-400.png"))
    assert_accessible(page, "the jobs page in the EHR panel", context=IN_FRAME)
    frame.locator("#jb-state").select_option("failed")
    _content(frame_el).wait_for_url(re.compile(r"state=failed"))
    frame.get_by_test_id("retry").first.click()
    confirmation = frame.get_by_test_id("confirmation")
    confirmation.wait_for()
    assert "is queued again" in confirmation.inner_text()
    assert "state=failed" in _content(frame_el).url  # back on the same filtered list
    with get_store(app).session() as s:
        statuses = sorted(s.scalars(select(CareTask.status).where(CareTask.kind == "reminder")))
    assert statuses == ["failed", "queued"]
    frame_el.screenshot(path=str(screenshots / "jobs-ehr-400-retried.png"))
    assert_accessible(page, "the jobs page after a retry", context=IN_FRAME)
    _widths(page, frame_url(frame_el).split("?")[0], "jobs", screenshots, "[data-testid=tasks]")
    page.close()


def test_ticket_pages(staff, chromium, screenshots) -> None:
    app, sb = staff
    page, frame, frame_el = _board(sb, chromium)
    frame.get_by_role("link", name="Tickets").click()
    frame.locator("[data-testid=ticket]").first.wait_for()
    listing = frame.locator("main").inner_text()
    assert "Margaret Ann Okonkwo" in listing  # patients by name, not Patient/pat-001
    assert "High priority" in listing and "Urgent" in listing and "!" not in listing
    frame_el.screenshot(path=str(screenshots / "tickets-ehr-400.png"))
    assert_accessible(page, "the ticket list in the EHR panel", context=IN_FRAME)
    tickets_url = frame_url(frame_el)

    frame.get_by_role("link", name=re.compile("Question about a bill")).click()
    frame.get_by_test_id("ticket-subject").wait_for()
    assert frame.get_by_test_id("ticket-patient").inner_text() == "Margaret Ann Okonkwo"
    frame.get_by_role("link", name="Log a call you made").click()
    _content(frame_el).wait_for_url(re.compile(r"note=call"))
    frame.locator("#nn-body").fill("Called back: the bill is the copay, explained.")
    assert frame.locator("#nn-channel").input_value() == "phone"
    assert frame.locator("#nn-direction").input_value() == "outbound"
    frame.get_by_role("button", name="Add note").click()
    frame.get_by_test_id("confirmation").wait_for()
    assert (
        "Note added: phone call to the patient."
        in frame.get_by_test_id("confirmation").inner_text()
    )
    frame_el.screenshot(path=str(screenshots / "ticket-ehr-400-note-added.png"))
    assert_accessible(page, "a ticket after a note", context=IN_FRAME)
    frame.get_by_test_id("resolve").click()
    frame.get_by_test_id("confirmation").filter(has_text="is now resolved").wait_for()
    frame_el.screenshot(path=str(screenshots / "ticket-ehr-400-resolved.png"))
    assert_accessible(page, "a resolved ticket", context=IN_FRAME)
    detail_url = frame_url(frame_el)
    with get_store(app).session() as s:
        resolved = s.scalar(select(Ticket).where(Ticket.patient_ref == "Patient/pat-001"))
        assert resolved is not None and resolved.status == "resolved"
    # The patient's context is one click away.
    frame.get_by_test_id("patient-link").first.click()
    _content(frame_el).wait_for_url(re.compile(r"/patient/Patient/pat-001"))
    _widths(page, tickets_url, "tickets", screenshots, "[data-testid=ticket]")
    _widths(page, detail_url, "ticket", screenshots, "[data-testid=ticket-subject]")
    page.close()


def test_demo_outbox(staff, chromium, screenshots) -> None:
    _, sb = staff
    page, frame, frame_el = _board(sb, chromium)
    frame.get_by_role("link", name="Outbox (demo)").click()
    frame.get_by_test_id("message").first.wait_for()
    sms = frame.locator("[data-channel=sms]")
    assert "Text message" in sms.inner_text() and "Subject" not in sms.inner_text()
    assert sms.get_by_role("link").count() == 1
    assert frame.locator("[data-channel=email]").get_by_role("link").count() == 1
    content = _content(frame_el)
    assert horizontal_overflow(content) <= 0
    frame_el.screenshot(path=str(screenshots / "outbox-ehr-400.png"))
    assert_accessible(page, "the outbox in the EHR panel", context=IN_FRAME)
    _widths(page, frame_url(frame_el), "outbox", screenshots, "[data-testid=message]")
    page.close()
