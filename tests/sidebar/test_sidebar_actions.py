"""The sidebar's actions, as a browser without JavaScript sends them: forms with the
launch's CSRF token that queue work (row first, then job) and come back to the sidebar."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import timedelta
from zoneinfo import ZoneInfo

import pytest
import requests
from rq.job import Job
from sqlalchemy import select

from helpdesk.db import get_store
from helpdesk.models import CallAttempt, CareTask
from helpdesk.timeutil import as_utc, utcnow
from jobs.queue import get_queue_state
from sandbox.testing import running_sandbox
from tests.ehr import connect
from tests.live import serve

CLIENT_ID = "caredesk-actions"


@pytest.fixture
def sidebar(make_app) -> Iterator[tuple]:  # type: ignore[type-arg]
    app = make_app()
    with serve(app) as url, running_sandbox() as sb:
        connect(app, sb, url, client_id=CLIENT_ID)
        browser = requests.Session()
        page = browser.get(sb.launch(CLIENT_ID, patient="pat-001")["url"], timeout=30)
        assert page.status_code == 200
        yield app, browser, page


def _csrf(html: str) -> str:
    return re.search(r'name="csrf_token" value="([^"]+)"', html).group(1)  # type: ignore[union-attr]


def _tasks(app) -> list[CareTask]:  # type: ignore[no-untyped-def]
    with get_store(app).session() as session:
        return list(session.scalars(select(CareTask).order_by(CareTask.id)))


def test_follow_up_form_queues_a_task_and_shows_it_in_the_sidebar(sidebar) -> None:
    app, browser, page = sidebar
    action = page.url + "actions/task"
    response = browser.post(
        action,
        data={
            "csrf_token": _csrf(page.text),
            "next": re.sub(r"^https?://[^/]+", "", page.url),
            "kind": "follow-up",
            "reason": "Check the new inhaler works",
            "due": "in 2 days, morning",
            "channel": "phone",
            "assignee": "Practitioner/prac-clinician-lee",
            "patient": "Patient/pat-001",
        },
        timeout=30,
    )
    assert response.status_code == 200 and response.url.startswith(page.url + "?ok=task:")
    assert "Check the new inhaler works" in response.text
    assert "Call queued for" in response.text
    [task] = _tasks(app)
    assert task.kind == "follow-up" and task.patient_ref == "Patient/pat-001"
    assert task.status == "scheduled" and task.due_at is not None
    assert timedelta(days=1) < task.due_at - utcnow() < timedelta(days=3)
    # The job carries the row id only.
    job = Job.fetch(task.job_id, connection=get_queue_state(app).connection)
    assert job.args == (task.id,)


def _post(browser: requests.Session, url: str, form_page: str, **fields: str) -> requests.Response:
    """A form post as the page's form sends it: with the CSRF token of ``form_page``."""
    return browser.post(url, data={"csrf_token": _csrf(form_page), **fields}, timeout=30)


def test_due_times_given_by_choice_or_date_control_are_read_by_their_field_names(sidebar) -> None:
    """The follow-up form and the call list each post a due time in three fields
    (plugin.forms.due_fields); a quick choice and the date-time control alone are enough."""
    app, browser, page = sidebar
    fields = {"kind": "follow-up", "reason": "Check the inhaler", "due_choice": "tomorrow morning"}
    assert _post(browser, page.url + "actions/task", page.text, **fields).status_code == 200
    [task] = _tasks(app)
    assert task.due_at is not None and task.due_at > utcnow()
    calls = browser.get(page.url + "calls", timeout=30)
    assert 'name="next_due_choice"' in calls.text and 'name="next_due_at_local"' in calls.text
    next_at = (utcnow() + timedelta(days=2)).astimezone(ZoneInfo("America/Chicago"))
    local = next_at.strftime("%Y-%m-%dT%H:%M")
    log_url = page.url + f"calls/{task.id}/log"
    logged = _post(browser, log_url, calls.text, outcome="voicemail", next_due_at_local=local)
    assert logged.status_code == 200, logged.text
    with get_store(app).session() as session:
        [attempt] = session.scalars(select(CallAttempt))
        assert attempt.next_due_at is not None
        assert abs(as_utc(attempt.next_due_at) - next_at) < timedelta(minutes=1)


def test_referral_form_stores_the_target_the_job_reads(sidebar) -> None:
    app, browser, page = sidebar
    response = browser.post(
        page.url + "actions/task",
        data={
            "csrf_token": _csrf(page.text),
            "kind": "referral",
            "reason": "Knee pain",
            "specialty": "orthopedics",
            "urgency": "urgent",
        },
        timeout=30,
    )
    assert response.status_code == 200
    [task] = _tasks(app)
    assert task.payload["target"]["specialty"] == "orthopedics"
    assert task.payload["urgency"] == "urgent"


def test_action_without_csrf_token_is_refused_and_queues_nothing(sidebar) -> None:
    app, browser, page = sidebar
    response = browser.post(
        page.url + "actions/task",
        data={"kind": "follow-up", "reason": "x"},
        timeout=30,
        headers={"Accept": "text/html"},
    )
    assert response.status_code == 403
    assert _tasks(app) == []


def test_invalid_follow_up_says_why_and_queues_nothing(sidebar) -> None:
    app, browser, page = sidebar
    response = browser.post(
        page.url + "actions/task",
        data={
            "csrf_token": _csrf(page.text),
            "kind": "follow-up",
            "reason": "x",
            "due": "whenever you like",
        },
        timeout=30,
        headers={"Accept": "text/html"},
    )
    assert response.status_code == 422
    assert "is not understood" in response.text and 'data-testid="patient-name"' in response.text
    assert _tasks(app) == []


def test_send_survey_queues_one_invitation_per_visit(sidebar) -> None:
    app, browser, page = sidebar
    data = {
        "csrf_token": _csrf(page.text),
        "appointment": "Appointment/appt-pat-001-past",
        "patient": "Patient/pat-001",
    }
    first = browser.post(page.url + "actions/survey", data=data, timeout=30)
    assert first.status_code == 200 and "by SMS to ···0104" in first.text
    again = browser.post(page.url + "actions/survey", data=data, timeout=30)
    assert again.status_code == 422 and "Already invited about that visit" in again.text
    [task] = _tasks(app)
    assert task.kind == "survey-invite"
    assert task.payload == {"appointment_ref": "Appointment/appt-pat-001-past"}


def test_failed_task_shows_its_reason_and_can_be_retried(sidebar) -> None:
    app, browser, page = sidebar
    browser.post(
        page.url + "actions/task",
        data={
            "csrf_token": _csrf(page.text),
            "kind": "referral",
            "reason": "Knee pain",
            "specialty": "orthopedics",
        },
        timeout=30,
    )
    [task] = _tasks(app)
    with get_store(app).session() as session:
        row = session.get(CareTask, task.id)
        row.status, row.last_error = "failed", "ServiceRequest.subject: patient not found"
    sidebar_page = browser.get(page.url, timeout=30)
    assert "ServiceRequest.subject: patient not found" in sidebar_page.text
    # A failure the EHR will repeat: no Retry is offered for it.
    assert 'data-testid="retry"' not in sidebar_page.text
    with get_store(app).session() as session:
        row = session.get(CareTask, task.id)
        row.last_error = "gave up after 5 attempts: the EHR answered 503"
    sidebar_page = browser.get(page.url, timeout=30)
    assert 'data-testid="retry"' in sidebar_page.text
    retry = browser.post(
        f"{page.url}tasks/{task.id}/retry", data={"csrf_token": _csrf(page.text)}, timeout=30
    )
    assert retry.status_code == 200 and retry.url.startswith(page.url)
    [again] = _tasks(app)
    assert again.status == "queued"


def test_jobs_admin_page_and_work_list(sidebar) -> None:
    app, browser, page = sidebar
    admin = browser.get(page.url + "jobs", timeout=30)
    assert admin.status_code == 200
    status = browser.get(page.url + "jobs/status", timeout=30).json()
    assert isinstance(status, dict)
    worklist = browser.get(page.url + "worklist", timeout=30).json()
    assert worklist["tasks"] == []
