"""Two-way messaging as staff see it, in Chromium inside the sandbox EHR's iframe: a
ticket whose conversation holds the patient's text, a staff reply and the patient's
email, in order, with channel and direction; the unmatched queue and a patient pick.
Screenshots at 400 px (in the EHR), 320 px and 1440 px; axe-core WCAG 2.2 AA."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import select

from helpdesk.db import get_store
from helpdesk.models import EhrRegistration, MessageThread
from jobs.mailbox import poll
from sandbox.testing import running_sandbox
from tests.browser.pages import assert_accessible, frame_url, open_in_ehr, shoot_widths
from tests.ehr import connect
from tests.live import serve
from tests.messaging import mailbox
from tests.messaging.conftest import CONFIG, SCOPES, drain, inbound, post_sms, sms_form, tickets

CLIENT_ID = "caredesk-browser"
CLINICIAN = "prac-clinician-lee"
SCHEDULER = "prac-scheduler-ortiz"


@pytest.fixture
def ehr(make_app) -> Iterator[tuple[Any, str, Any, str]]:
    with mailbox.folder() as box, running_sandbox() as sb:
        app = make_app(**CONFIG, **mailbox.imap_config(box))
        with serve(app) as url:
            connect(
                app,
                sb,
                url,
                client_id=CLIENT_ID,
                client_type="confidential-asymmetric",
                slug="clinic",
            )
            _add_backend(app, sb)
            yield app, url, sb, box


def _add_backend(app, sb) -> None:  # type: ignore[no-untyped-def]
    """The same registration's jobs use Backend Services with the registration's key."""
    with app.app_context(), get_store(app).session() as session:
        reg = session.scalar(select(EhrRegistration).where(EhrRegistration.slug == "clinic"))
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


def test_a_ticket_shows_text_staff_reply_and_email_in_one_thread(
    ehr, chromium, screenshots
) -> None:
    app, url, sb, box = ehr
    post_sms(url, sms_form("+1 312-555-0104", "Is my prescription ready for pickup?"))
    drain(app)
    [ticket] = tickets(app)
    page, frame, frame_el = open_in_ehr(
        chromium, sb.base_url, user=CLINICIAN, patient="pat-001", client=CLIENT_ID
    )
    frame.get_by_test_id("coverage-state").wait_for(timeout=20_000)
    inner = frame_el.element_handle().content_frame()
    launch_path = inner.url.split("/l/", 1)[1].split("/", 1)[0]
    inner.goto(f"{url}/l/{launch_path}/tickets/{ticket.id}")
    frame.locator("#rp-body").fill("Yes, it is ready at the front desk until 6 pm.")
    frame.get_by_role("button", name="Send reply").click()
    # Back on the ticket with the reply in the thread (queued until its job runs).
    frame.locator('[data-testid="thread-entry"][data-direction="outbound"]').wait_for()
    drain(app)
    with get_store(app).session() as session:
        token = session.scalar(select(MessageThread.token))
    raw, _ = mailbox.mail(
        "Margaret Okonkwo <margaret.1@example.com>",
        f"Re: Test Clinic [CD-{token}]",
        "Thank you. My son will pick it up; he has my card.\n",
    )
    # The patient answers a little later (the server stamps arrival in whole seconds).
    mailbox.deliver(box, raw, arrived=dt.datetime.now(dt.UTC) + dt.timedelta(seconds=2))
    poll(app)
    drain(app)
    # Load the page again (the reply's redirect ends in #thread: drop it, or the browser
    # only scrolls).
    inner.goto(inner.url.split("#", 1)[0])
    entries = frame.get_by_test_id("thread-entry")
    entries.nth(2).wait_for()
    described = [
        (
            entries.nth(i).get_attribute("data-direction"),
            entries.nth(i).get_attribute("data-channel"),
        )
        for i in range(entries.count())
    ]
    assert described == [("inbound", "sms"), ("outbound", "sms"), ("inbound", "email")]
    texts = [entries.nth(i).inner_text() for i in range(3)]
    assert "From the patient" in texts[0] and "Text" in texts[0]
    assert "Staff reply" in texts[1] and "front desk until 6 pm" in texts[1]
    assert "Email" in texts[2] and "My son will pick it up" in texts[2]
    assert len({m.thread_id for m in inbound(app)}) == 1
    frame_el.screenshot(path=str(screenshots / "ticket-thread-400px.png"))
    assert_accessible(page, "the ticket with its conversation (in the EHR)", context=None)
    shoot_widths(page, inner.url, "ticket-thread", screenshots)
    assert_accessible(page, "the ticket with its conversation")
    page.close()


def test_the_unmatched_queue_and_a_patient_pick(ehr, chromium, screenshots) -> None:
    app, url, sb, _ = ehr
    post_sms(url, sms_form("+1 312-555-0111", "I need a note for my employer for last Tuesday."))
    drain(app)
    page, frame, frame_el = open_in_ehr(
        chromium, sb.base_url, user=SCHEDULER, mode="board", client=CLIENT_ID
    )
    frame.get_by_test_id("board").wait_for(timeout=20_000)
    frame.get_by_test_id("unmatched-link").click()
    card = frame.get_by_test_id("unmatched")
    card.wait_for()
    assert "···0111" in card.inner_text()
    choices = card.get_by_role("radio")
    assert choices.count() == 2  # both patients with this number, by name
    names = card.locator("label.cd-choice").all_inner_texts()
    assert any("Patel" in n or "Priya" in n for n in names), names
    frame_el.screenshot(path=str(screenshots / "unmatched-queue-400px.png"))
    # The same page in the full tab (this browser's cookie), at 320 and 1440 px.
    shoot_widths(page, frame_url(frame_el), "unmatched-queue", screenshots)
    assert_accessible(page, "the unmatched queue")
    # The scheduler picks the patient (in the tab, now 1440 px wide).
    page.get_by_role("radio").nth(1).check()
    page.get_by_role("button", name="This is the patient").click()
    page.get_by_test_id("picked").wait_for()
    assert page.get_by_test_id("unmatched").count() == 0
    page.screenshot(path=str(screenshots / "unmatched-picked-1440px.png"), full_page=True)
    assert_accessible(page, "the unmatched queue after a pick")
    drain(app)
    [ticket] = tickets(app)
    assert ticket.patient_ref in ("Patient/pat-012", "Patient/pat-019")
    [message] = inbound(app)
    assert message.match == "staff" and message.status == "processed"
    page.close()


def test_sidebar_and_board_show_the_confirmation_and_the_stop(ehr, chromium, screenshots) -> None:
    from zoneinfo import ZoneInfo

    from tests.messaging.conftest import appointment, queue

    app, url, sb, _ = ehr
    start = (dt.datetime.now(dt.UTC) + dt.timedelta(days=2)).replace(microsecond=0)
    appt = appointment(sb, "appt-browser", "Patient/pat-001", start)
    queue(
        app,
        kind="reminder",
        patient_ref="Patient/pat-001",
        payload={"appointment_ref": appt, "offset_hours": 72},
    )
    drain(app)
    post_sms(url, sms_form("+1 312-555-0104", "C"))
    drain(app)
    post_sms(url, sms_form("+1 312-555-0104", "STOP"))
    drain(app)
    page, frame, frame_el = open_in_ehr(
        chromium, sb.base_url, user=CLINICIAN, patient="pat-001", client=CLIENT_ID
    )
    frame.get_by_test_id("coverage-state").wait_for(timeout=20_000)
    assert frame.get_by_test_id("opt-out").inner_text().startswith("Replied STOP: no texts")
    assert (
        "Confirmed by the patient (text reply)"
        in frame.get_by_test_id("patient-reply").inner_text()
    )
    frame_el.screenshot(path=str(screenshots / "sidebar-stop-and-confirmation-400px.png"))
    sidebar_url = frame_url(frame_el)
    shoot_widths(page, sidebar_url, "sidebar-stop-and-confirmation", screenshots)
    assert_accessible(page, "the sidebar with a STOP and a confirmation")
    page.close()
    day = start.astimezone(ZoneInfo("America/Chicago")).date().isoformat()
    board_page, board_frame, board_el = open_in_ehr(
        chromium, sb.base_url, user=SCHEDULER, mode="board", client=CLIENT_ID
    )
    board_frame.get_by_test_id("board").wait_for(timeout=20_000)
    inner = board_el.element_handle().content_frame()
    inner.goto(inner.url.split("?")[0] + f"?date={day}")
    reply = board_frame.get_by_test_id("patient-reply")
    reply.first.wait_for()
    assert reply.first.inner_text() == "Confirmed by the patient (text reply)"
    reply.first.scroll_into_view_if_needed()
    board_el.screenshot(path=str(screenshots / "board-confirmation-400px.png"))
    board_page.close()
