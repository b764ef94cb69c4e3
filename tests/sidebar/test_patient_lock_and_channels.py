"""The sidebar's rules over real HTTP against the sandbox EHR: a chart's CareDesk works on
that chart's patient only, channels follow the patient on the server too, and names come
from the EHR even when its references carry no `display`."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest
import requests
from sqlalchemy import select

from helpdesk.db import get_store
from helpdesk.models import CareTask, SurveyInvite, Ticket
from sandbox.testing import running_sandbox
from tests.ehr import connect
from tests.live import serve

CLIENT_ID = "caredesk-lock"


def _csrf(html: str) -> str:
    return re.search(r'name="csrf_token" value="([^"]+)"', html).group(1)  # type: ignore[union-attr]


def _launch(sb: Any, patient: str) -> tuple[requests.Session, requests.Response]:
    browser = requests.Session()
    page = browser.get(sb.launch(CLIENT_ID, patient=patient)["url"], timeout=30)
    assert page.status_code == 200
    # The page may have been sent before the EHR answered; wait for the whole of it.
    page = browser.get(page.url + "?wait=1", timeout=30)
    return browser, page


@pytest.fixture
def env(connected_ehr) -> Iterator[tuple[Any, Any]]:  # type: ignore[no-untyped-def]
    yield connected_ehr(CLIENT_ID)


def _count(app: Any, model: Any) -> int:
    with get_store(app).session() as session:
        return len(list(session.scalars(select(model))))


def test_nothing_is_created_for_another_patient_under_a_chart_launch(env) -> None:
    app, sb = env
    browser, page = _launch(sb, "pat-001")
    base = page.url.split("?")[0]
    token = _csrf(page.text)
    other = "Patient/pat-002"
    posts = {
        "actions/ticket": {"subject": "Billing", "category": "billing"},
        "actions/task": {"kind": "follow-up", "reason": "Call back", "due": "tmrw 9am"},
        "actions/survey": {"appointment": "Appointment/appt-pat-002-past"},
    }
    posts_referral = {"kind": "referral", "reason": "Knee", "specialty": "orthopedics"}
    for path, data in [*posts.items(), ("actions/task", posts_referral)]:
        answer = browser.post(
            base + path, data={**data, "csrf_token": token, "patient": other}, timeout=30
        )
        assert answer.status_code == 403, (path, answer.status_code)
    api = browser.post(
        base.replace("/l/", "/api/l/") + "tasks",
        json={"kind": "follow-up", "reason": "x", "patient": other},
        headers={"X-CSRF-Token": token},
        timeout=30,
    )
    assert api.status_code == 403
    assert (_count(app, Ticket), _count(app, CareTask), _count(app, SurveyInvite)) == (0, 0, 0)
    # No page of this launch opens another patient, nor the board of every patient.
    assert browser.get(base + "patient/" + other, timeout=30).status_code == 403
    assert browser.get(base + "board", timeout=30).status_code == 403
    assert "/board" not in page.text and "pat-002" not in page.text


def test_a_channel_the_patient_cannot_receive_is_refused_by_the_server(env) -> None:
    app, sb = env
    browser, page = _launch(sb, "pat-003")  # no-sms
    base = page.url.split("?")[0]
    assert re.search(r'value="sms" disabled', page.text)
    answer = browser.post(
        base + "actions/task",
        data={
            "csrf_token": _csrf(page.text),
            "kind": "follow-up",
            "reason": "Results are in",
            "due": "tmrw 9am",
            "channel": "sms",
        },
        timeout=30,
    )
    assert answer.status_code == 422
    assert "asked not to be texted" in answer.text and "Results are in" in answer.text
    assert _count(app, CareTask) == 0
    ok = browser.post(
        base + "actions/task",
        data={
            "csrf_token": _csrf(page.text),
            "kind": "follow-up",
            "reason": "Results are in",
            "due": "tmrw 9am",
            "channel": "phone",
        },
        timeout=30,
    )
    assert ok.status_code == 200 and "Call queued for tomorrow 9:00 AM" in ok.text


def test_names_without_display_are_read_in_one_search_per_type(make_app) -> None:
    app = make_app()
    with serve(app) as url, running_sandbox(profile="thirdparty") as sb:
        connect(app, sb, url, client_id=CLIENT_ID)
        sb.set_knobs(iss_trailing_slash=False)
        browser = requests.Session()
        first = browser.get(sb.launch(CLIENT_ID, patient="pat-001")["url"], timeout=30)
        sb.clear_requests()
        page = browser.get(first.url.split("?")[0] + "?refresh=1&wait=1", timeout=30)
        assert page.status_code == 200
        # Practitioner, place and payor by name, though no reference carried a display.
        assert "Dr. Chinedu Okafor" in page.text or "Chinedu Okafor" in page.text
        assert "CareDesk Clinic - Lakeview" in page.text
        assert "Aetna" in page.text
        fhir = [r for r in sb.requests() if r["path"].startswith("/fhir/")]
        by_type: dict[str, int] = {}
        for r in fhir:
            kind = r["path"].split("/")[2]
            by_type[kind] = by_type.get(kind, 0) + 1
        # One wave for the patient, visits and coverage, then at most one `_id=` search
        # per type of name: never a request per visit.
        assert by_type.get("Practitioner", 0) <= 1 and by_type.get("Location", 0) <= 1
        assert by_type.get("Organization", 0) <= 1
        assert len(fhir) <= 6, [(r["path"], r["query"]) for r in fhir]
        for r in fhir:
            if r["path"] in ("/fhir/Practitioner", "/fhir/Location", "/fhir/Organization"):
                assert "_id=" in r["query"]


def test_referral_picks_the_practitioner_from_a_name_search(env) -> None:
    app, sb = env
    browser, page = _launch(sb, "pat-001")
    base = page.url.split("?")[0]
    found = browser.get(base + "?rf_q=okafor&wait=1", timeout=30)
    assert 'data-testid="practitioner-choices"' in found.text
    assert 'value="Practitioner/prac-clinician-okafor"' in found.text
    done = browser.post(
        base + "actions/task",
        data={
            "csrf_token": _csrf(found.text),
            "kind": "referral",
            "reason": "Second opinion",
            "practitioner": "Practitioner/prac-clinician-okafor",
        },
        timeout=30,
    )
    assert done.status_code == 200 and "Referral to Dr. Chinedu Okafor queued" in done.text
    with get_store(app).session() as session:
        [task] = session.scalars(select(CareTask)).all()
        assert task.payload["target"]["practitioner"] == "Practitioner/prac-clinician-okafor"


def test_a_stop_closes_the_text_channel_on_the_next_cached_page_and_start_reopens_it(
    env,
) -> None:
    """The page takes the closed channels from its cached context (issue 16 §3): a STOP
    committed anywhere renews the patient's change stamp, so the next page, not asked to
    refresh, already says why texting is off; lifting it opens the channel again."""
    from helpdesk.models import ContactOptOut, EhrRegistration
    from helpdesk.timeutil import utcnow

    app, sb = env
    browser, page = _launch(sb, "pat-001")
    base = page.url.split("?")[0]
    assert not re.search(r'value="sms" disabled', page.text)
    assert not re.search(r'value="sms" disabled', browser.get(base, timeout=30).text)
    with get_store(app).session() as session:
        registration = session.scalars(select(EhrRegistration)).one()
        session.add(
            ContactOptOut(
                registration_id=registration.id,
                channel="sms",
                address_key="test-address",
                patient_ref="Patient/pat-001",
                keyword="STOP",
                opted_out_at=utcnow(),
            )
        )
        session.commit()
    stopped = browser.get(base, timeout=30).text
    assert re.search(r'value="sms" disabled', stopped)
    assert "not possible: the patient replied STOP on" in stopped
    with get_store(app).session() as session:
        for row in session.scalars(select(ContactOptOut)):
            row.lifted_at = utcnow()
        session.commit()
    assert not re.search(r'value="sms" disabled', browser.get(base, timeout=30).text)


def test_a_survey_answer_shows_on_the_clinicians_next_cached_page(env) -> None:
    """The patient answers on their phone while the clinician has the chart open: the next
    page, not asked to refresh, says the survey was answered and shows the answer (the
    answer moved no change stamp, so the cached page said "Invited" for up to 30 s)."""
    from helpdesk.models import EhrRegistration
    from plugin.survey import csrf_token
    from tests.survey.conftest import make_invite

    app, sb = env
    browser, page = _launch(sb, "pat-001")
    base = page.url.split("?")[0]
    with get_store(app).session() as session:
        registration_id = session.scalars(select(EhrRegistration.id)).one()
    token, invite_id = make_invite(app, registration_id)
    invited = browser.get(base, timeout=30).text
    assert "Invited" in invited and "Last survey answer" not in invited
    assert "Invited" in browser.get(base, timeout=30).text  # cached, still true
    with app.app_context():
        csrf = csrf_token(invite_id)
    origin = base.split("/l/", 1)[0]
    answers = {"csat": "2", "nps": "6", "comment": "Long wait", "contact-ok": "yes"}
    thanks = requests.post(f"{origin}/s/{token}", data={"csrf": csrf, **answers}, timeout=30)
    assert thanks.status_code == 200 and "Thank you" in thanks.text
    answered = browser.get(base, timeout=30).text
    assert "Answered" in answered and "Invited" not in answered
    assert "Last survey answer" in answered
