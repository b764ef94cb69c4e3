"""The four user stories walked end to end in Chromium, as each user meets CareDesk, with
what each must see asserted at every step (and a screenshot of it under
test-artifacts/screenshots/story-*.png for a person to look at):

1. the clinician: a patient in the EHR -> the sidebar -> a ticket -> a call queued and
   logged (voicemail, then reached), each step confirmed in place, the patient named on
   every page;
2. the scheduler: the board (a launch without a patient) -> a flagged patient -> back to
   the board with its filter kept;
3. the patient: a text lands on a ticket; after a visit the survey link from the outbox,
   answered on a 360 px phone; the answer in the sidebar.
(The integrator's story, docs/integration.md run from nothing, is
tests/plugin/test_integration_guide.py.)"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from sqlalchemy import select

from helpdesk.db import get_store
from helpdesk.models import CareTask, EhrRegistration, SurveyResponse
from sandbox.testing import running_sandbox
from tests.browser.pages import assert_accessible, frame_url, open_in_ehr, shoot_widths
from tests.ehr import connect
from tests.live import serve
from tests.messaging.conftest import CONFIG, SCOPES, drain, post_sms, sms_form, tickets

CLIENT_ID = "caredesk-stories"
CLINICIAN = "prac-clinician-lee"
SCHEDULER = "prac-scheduler-ortiz"
IN_FRAME = {"fromFrames": ["#app-frame"]}
NAME = "Okonkwo"


@pytest.fixture
def clinic(make_app) -> Iterator[tuple[Any, str, Any]]:  # type: ignore[no-untyped-def]
    """CareDesk on loopback registered with the sandbox EHR (launches, and Backend
    Services for the jobs that run after the user has gone)."""
    # Whatever the hour the test runs at, the survey goes at once (no quiet hours).
    app = make_app(**CONFIG, SURVEY_QUIET_HOURS="", SURVEY_DELAY_MINUTES=0)
    with running_sandbox() as sb, serve(app) as url:
        app.config["PUBLIC_URL"] = url  # where the patient's survey link points
        connect(
            app, sb, url, client_id=CLIENT_ID, client_type="confidential-asymmetric", slug="clinic"
        )
        with app.app_context(), get_store(app).session() as session:
            reg = session.scalar(select(EhrRegistration))
            reg.backend_client_id = f"{CLIENT_ID}-backend"
            reg.backend_scopes = SCOPES
            public = dict(reg.signing_keys[0].public_jwk)
        sb.register_client(
            {
                "client_id": f"{CLIENT_ID}-backend",
                "type": "confidential-asymmetric",
                "jwks": {"keys": [public]},
                "backend": True,
            }
        )
        yield app, url, sb


def _inner(frame_el: Any) -> Any:
    return frame_el.element_handle().content_frame()


def _submit(frame_el: Any, button: Any) -> None:
    with _inner(frame_el).expect_navigation():
        button.click()


def _named(frame: Any) -> None:
    """Whichever sidebar page the user is on, it says whose it is."""
    assert NAME in frame.get_by_test_id("patient-name").inner_text()


def _sidebar(chromium: Any, sb: Any, user: str = CLINICIAN) -> tuple[Any, Any, Any]:
    page, frame, frame_el = open_in_ehr(
        chromium, sb.base_url, user=user, patient="pat-001", client=CLIENT_ID
    )
    frame.get_by_test_id("coverage-state").wait_for(timeout=20_000)
    _named(frame)
    return page, frame, frame_el


def test_clinician_opens_a_ticket_queues_a_call_and_logs_its_outcomes(
    clinic, chromium, screenshots
) -> None:
    app, _, sb = clinic

    def shot(name: str) -> None:
        frame_el.screenshot(path=str(screenshots / f"story-clinician-{name}-400px.png"))

    page, frame, frame_el = _sidebar(chromium, sb)
    box = frame_el.bounding_box()
    assert box and 380 <= box["width"] <= 420
    shot("1-sidebar")
    frame.locator("#act-ticket > summary").click()
    frame.locator("#tk-subject").fill("Inhaler refill question")
    _submit(frame_el, frame.locator("#act-ticket button[type=submit]"))
    assert re.match(r"✓ Ticket #\d+ opened", frame.get_by_test_id("confirmation").inner_text())
    _named(frame)
    shot("2-ticket-opened")

    frame.locator("#act-followup > summary").click()
    frame.locator("#fu-reason").fill("Call back about the refill")
    frame.locator("#fu-due").fill("asap")
    _submit(frame_el, frame.locator("#act-followup button[type=submit]"))
    queued = frame.get_by_test_id("confirmation").inner_text()
    assert "Call queued" in queued, queued
    _named(frame)
    shot("3-call-queued")

    _submit(frame_el, frame.get_by_test_id("log-call-link"))
    _named(frame)
    call = frame.get_by_test_id("call").first
    assert "attempt 1 of 3" in call.get_by_test_id("call-sentence").inner_text()
    assert "How did call 1 of 3 go?" in call.inner_text()
    shot("4-call-list")
    call.locator("input[value=voicemail]").check()
    call.locator("input[name=next_due]").fill("tmrw 9am")
    _submit(frame_el, call.get_by_test_id("log-call"))
    said = frame.get_by_test_id("confirmation").inner_text()
    assert "Call 1 logged: left voicemail. Next attempt tomorrow 9:00 AM C" in said, said
    _named(frame)
    call = frame.get_by_test_id("call").first
    assert "Call 1: Left voicemail" in call.inner_text()
    shot("5-voicemail-logged")
    assert_accessible(page, "the call list after a voicemail", context=IN_FRAME)
    # The same list in a tab, at a phone's width and a desktop's, then back in the EHR.
    ehr_url = page.url
    shoot_widths(page, frame_url(frame_el).split("?")[0], "story-clinician-calls", screenshots)
    assert NAME in page.get_by_test_id("patient-name").inner_text()
    page.set_viewport_size({"width": 320, "height": 900})
    # Each phone number on one line, to be read and dialled as one.
    assert page.evaluate(
        "[...document.querySelectorAll('a[href^=\"tel:\"]')]"
        ".every(a => a.getClientRects().length === 1)"
    )
    page.set_viewport_size({"width": 1280, "height": 900})
    page.goto(ehr_url)
    frame.get_by_test_id("coverage-state").wait_for(timeout=20_000)
    _submit(frame_el, frame.get_by_test_id("log-call-link"))
    call = frame.get_by_test_id("call").first

    call.locator("input[value=reached]").check()
    _submit(frame_el, call.get_by_test_id("log-call"))
    said = frame.get_by_test_id("confirmation").inner_text()
    assert re.search(r"Call 2 logged: reached\. Task #\d+ is done\.", said), said
    assert frame.get_by_test_id("no-calls").is_visible()
    _named(frame)
    shot("6-reached")
    [task] = [t for t in _rows(app, CareTask) if t.kind == "follow-up"]
    assert task.status == "done"
    # Back on the patient: the call is no longer open.
    frame.get_by_role("link", name="Back to the patient").click()
    frame.get_by_test_id("coverage-state").wait_for(timeout=20_000)
    _named(frame)
    page.close()


def _rows(app: Any, model: Any) -> list[Any]:
    with get_store(app).session() as session:
        found = list(session.scalars(select(model).order_by(model.id)))
        for row in found:
            session.expunge(row)
        return found


def test_scheduler_goes_from_the_board_to_a_flagged_patient_and_back(
    clinic, chromium, screenshots
) -> None:
    _, _, sb = clinic
    page, frame, frame_el = open_in_ehr(
        chromium, sb.base_url, user=SCHEDULER, mode="board", client=CLIENT_ID
    )
    frame.get_by_test_id("board").wait_for(timeout=20_000)
    inner = _inner(frame_el)
    # A launch without a patient: the board says what day and zone it shows.
    frame_el.screenshot(path=str(screenshots / "story-scheduler-1-board-400px.png"))
    assert_accessible(page, "the board in the EHR panel", context=IN_FRAME)
    frame.locator("#bd-flag").select_option("needs-call")
    inner.wait_for_url(re.compile(r"flag=needs-call"))
    frame.get_by_test_id("board").wait_for()
    flagged = frame.locator("[data-row][data-needs-call]")
    assert flagged.count() == frame.locator("[data-row]").count() > 0
    before = inner.url.split("#")[0]
    row = flagged.first
    row_id = row.get_attribute("id")
    who = row.locator("[data-patient-link]").inner_text().strip()
    frame_el.screenshot(path=str(screenshots / "story-scheduler-2-flagged-400px.png"))
    row.locator("[data-patient-link]").click()
    inner.wait_for_url(re.compile(r"/patient/Patient/"))
    frame.get_by_test_id("coverage-state").wait_for(timeout=20_000)
    # The patient opened is the one clicked, by name, with the reason for the flag.
    family = who.split(",")[0].split()[-1]
    assert family in frame.get_by_test_id("patient-name").inner_text(), (who, family)
    assert "needs a call" in frame.get_by_test_id("alerts").inner_text()
    frame_el.screenshot(path=str(screenshots / "story-scheduler-3-patient-400px.png"))
    frame.get_by_role("link", name=re.compile(r"board", re.I)).first.click()
    inner.wait_for_url(re.compile(r"/board\?"))
    frame.get_by_test_id("board").wait_for()
    assert parse_qs(urlsplit(inner.url).query) == parse_qs(urlsplit(before).query)
    assert inner.url.split("#", 1)[1] == row_id
    assert frame.locator("#bd-flag").input_value() == "needs-call"
    assert inner.evaluate("document.activeElement && document.activeElement.id") == row_id
    frame_el.screenshot(path=str(screenshots / "story-scheduler-4-back-400px.png"))
    shoot_widths(page, before, "story-scheduler-board", screenshots)
    page.close()


def test_patient_texts_then_answers_the_survey_on_a_phone(clinic, chromium, screenshots) -> None:
    app, url, sb = clinic
    # A text from the patient's mobile arrives (the provider's signed webhook) ...
    assert post_sms(url, sms_form("+1 312-555-0104", "Can I get my refill early?")).ok
    drain(app)
    [ticket] = tickets(app)
    page, frame, frame_el = _sidebar(chromium, sb)
    # ... and the clinician sees it on the patient's open requests, then on its ticket.
    requests_ = frame.locator("#cd-requests, [data-testid=tickets]").first
    assert "Can I get my refill early?" in frame.locator("body").inner_text() or (
        str(ticket.id) in requests_.inner_text()
    )
    launch = _inner(frame_el).url.split("/l/", 1)[1].split("/", 1)[0]
    _inner(frame_el).goto(f"{url}/l/{launch}/tickets/{ticket.id}")
    entry = frame.get_by_test_id("thread-entry").first
    entry.wait_for()
    assert "From the patient" in entry.inner_text() and "Text" in entry.inner_text()
    assert "Can I get my refill early?" in entry.inner_text()
    assert NAME in frame.get_by_test_id("ticket-patient").inner_text()
    # The number masked as the sidebar masks it (the ticket once said ***04).
    assert "Reply by text to ···0104" in frame.locator("label[for=rp-body]").inner_text()
    frame_el.screenshot(path=str(screenshots / "story-patient-1-text-on-ticket-400px.png"))

    # After the visit the clinician sends the survey from the sidebar.
    frame.get_by_role("link", name=re.compile("patient", re.I)).first.click()
    frame.get_by_test_id("coverage-state").wait_for(timeout=20_000)
    frame.locator("#act-survey > summary").click()
    _submit(frame_el, frame.get_by_test_id("send-survey").first)
    assert "by SMS to ···0104" in frame.get_by_test_id("confirmation").inner_text()
    drain(app)
    # The demo outbox holds the text the patient's phone received, with its link.
    _inner(frame_el).goto(f"{url}/l/{launch}/jobs/outbox")
    links = frame.locator("[data-channel=sms] a[href*='/s/']")
    assert links.count() == 1, frame.locator("main").inner_text()
    link = links.first.get_attribute("href")
    assert link and "/s/" in link
    frame_el.screenshot(path=str(screenshots / "story-patient-2-outbox-400px.png"))
    page.close()

    # The patient, on a phone: nothing to log into.
    phone = chromium.new_context(viewport={"width": 360, "height": 740}, is_mobile=True)
    mobile = phone.new_page()
    mobile.goto(link)
    assert mobile.get_by_role("heading").first.is_visible()
    # Each question reads inside its card (a wrapped legend once straddled the border).
    assert mobile.evaluate(
        "[...document.querySelectorAll('fieldset')].every(f =>"
        " f.querySelector('legend').getBoundingClientRect().top"
        " > f.getBoundingClientRect().top)"
    )
    mobile.screenshot(path=str(screenshots / "story-patient-3-survey-360px.png"), full_page=True)
    assert_accessible(mobile, "the survey on a phone")
    assert mobile.evaluate(
        "document.documentElement.scrollWidth <= document.documentElement.clientWidth"
    )
    mobile.locator("input[name=csat][value='4']").check(force=True)
    mobile.locator("input[name=nps][value='9']").check(force=True)
    mobile.locator("textarea[name=comment]").fill("Quick and kind. Parking was hard.")
    mobile.get_by_role("button").last.click()
    mobile.get_by_text("Thank you").first.wait_for()
    mobile.screenshot(path=str(screenshots / "story-patient-4-thanks-360px.png"), full_page=True)
    assert_accessible(mobile, "the survey's thank-you")
    phone.close()
    drain(app)
    [answer] = _rows(app, SurveyResponse)
    assert (answer.csat, answer.nps) == (4, 9)

    # The answer, in the sidebar the next time the patient is opened.
    page, frame, frame_el = _sidebar(chromium, sb)
    last = frame.locator("section[aria-labelledby=h-survey]")
    last.wait_for(timeout=20_000)
    text = last.inner_text()
    assert "Satisfaction 4/5" in text and "Would recommend 9/10" in text, text
    assert "Parking was hard." in text
    frame.locator("#act-survey > summary").click()
    assert "Answered" in frame.locator("#cd-survey-act").inner_text()
    last.scroll_into_view_if_needed()
    frame_el.screenshot(path=str(screenshots / "story-patient-5-answer-in-sidebar-400px.png"))
    assert_accessible(page, "the sidebar with the survey answer", context=IN_FRAME)
    page.close()
