"""The jobs page: the EHR's tasks filterable by state and kind with their reason and
attempts, Retry only where it can succeed (and with its CSRF token), the queue in words,
and nothing of another EHR or, for a chart's launch, of another patient."""

from __future__ import annotations

import html
import re
from typing import Any

import pytest

from helpdesk.models import CareTask
from helpdesk.tasks import GAVE_UP


def _task(env: Any, ehr: str = "A", **fields: Any) -> int:
    row: dict[str, Any] = {
        "registration_id": env.registrations[ehr],
        "kind": "reminder",
        "status": "queued",
        "patient_ref": "Patient/p1",
        "payload": {},
        "attempts": 0,
        "max_attempts": 5,
    }
    row.update(fields)
    with env.db() as db:
        task = CareTask(**row)
        db.add(task)
        db.flush()
        return int(task.id)


def _rows(page: str) -> dict[int, str]:
    return {
        int(task): body
        for task, body in re.findall(r'<tr data-task="(\d+)"[^>]*>(.*?)</tr>', page, re.S)
    }


@pytest.fixture
def tasks(env: Any) -> dict[str, int]:
    return {
        "temporary": _task(
            env,
            kind="follow-up",
            status="failed",
            attempts=5,
            last_error=f"{GAVE_UP} 5 attempts: the EHR answered 503",
        ),
        "lasting": _task(
            env,
            kind="reminder",
            status="failed",
            attempts=1,
            last_error="The patient cannot be reached by SMS or email.",
        ),
        "auth": _task(env, kind="referral", status="needs-authorization", attempts=1),
        "queued": _task(env, kind="survey-invite", status="queued"),
        "done": _task(env, kind="reminder", status="done", status_note="Reminder sent by sms."),
        "other-patient": _task(env, kind="reminder", status="queued", patient_ref="Patient/p2"),
        "other-ehr": _task(env, "B", kind="reminder", status="failed", last_error="B's own"),
    }


def test_task_list_with_reason_attempts_and_retry_only_where_it_can_succeed(
    env: Any, tasks: dict[str, int]
) -> None:
    board = env.launch("A", patient=None)
    page = board.page("/jobs")
    assert page.status_code == 200
    rows = _rows(page.text)
    assert set(rows) == set(tasks.values()) - {tasks["other-ehr"]}
    temporary = rows[tasks["temporary"]]
    assert "5 of 5" in temporary and "the EHR answered 503" in temporary
    assert 'data-testid="retry"' in temporary
    assert f'name="csrf_token" value="{board.csrf}"' in temporary
    lasting = html.unescape(rows[tasks["lasting"]])
    assert "cannot be reached by SMS or email" in lasting
    # Why not, and what to do instead, where the button would have been.
    assert "A retry would fail the same way. Call the patient instead" in lasting
    assert 'data-testid="retry"' not in lasting
    assert 'data-testid="retry"' in rows[tasks["auth"]]
    for quiet in ("queued", "done"):
        assert 'data-testid="retry"' not in rows[tasks[quiet]]
    assert "Reminder sent by sms." in rows[tasks["done"]]


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ({"state": "failed"}, {"temporary", "lasting"}),
        ({"state": "unfinished"}, {"auth", "queued", "other-patient"}),
        ({"kind": "reminder"}, {"lasting", "done", "other-patient"}),
        ({"state": "failed", "kind": "follow-up"}, {"temporary"}),
    ],
)
def test_filters_by_state_and_kind(
    env: Any, tasks: dict[str, int], query: dict[str, str], expected: set[str]
) -> None:
    board = env.launch("A", patient=None)
    path = "/jobs?" + "&".join(f"{k}={v}" for k, v in query.items())
    assert set(_rows(board.page(path).text)) == {tasks[name] for name in expected}


def test_retry_from_the_page_queues_the_task_again_and_says_so(
    env: Any, tasks: dict[str, int]
) -> None:
    board = env.launch("A", patient=None)
    page = board.page("/jobs?state=failed").text
    form = re.search(
        rf'action="([^"]*/tasks/{tasks["temporary"]}/retry)".*?name="next" value="([^"]+)"',
        page,
        re.S,
    )
    assert form
    answer = board.http.post(
        board.base + form[1],
        data={"csrf_token": board.csrf, "next": html.unescape(form[2])},
        timeout=10,
        allow_redirects=False,
    )
    assert answer.status_code == 303
    landed = board.http.get(board.base + answer.headers["Location"], timeout=10).text
    assert f"Task #{tasks['temporary']} (follow-up) is queued again" in landed
    # The old failure is still there to read, as what the last attempt said.
    every = board.page("/jobs").text
    assert "Last attempt: gave up after 5 attempts" in _rows(every)[tasks["temporary"]]
    assert "state=failed" in answer.headers["Location"]  # back where the user was
    with env.db() as db:
        assert db.get(CareTask, tasks["temporary"]).status == "queued"
    # Without the page's token, nothing happens (the 403 the old form had, now refused
    # only to a forger).
    forged = board.http.post(
        board.base + form[1], data={"next": "/"}, timeout=10, allow_redirects=False
    )
    assert forged.status_code == 403


def test_retry_of_a_lasting_failure_is_refused_with_what_to_do_instead(
    env: Any, tasks: dict[str, int]
) -> None:
    """The server follows the page's rule: a stale page or a hand-made post cannot queue
    work that fails the same way again (only the form once hid the button)."""
    board = env.launch("A", patient=None)
    for name, words in (
        ("lasting", "Call the patient instead"),
        ("queued", "can be retried; this one is queued."),
        ("done", "can be retried; this one is done."),
    ):
        refused = board.form(f"/tasks/{tasks[name]}/retry", {"next": "/"})
        assert refused.status_code == 409, name
        assert words in html.unescape(refused.text), name
    with env.db() as db:
        lasting = db.get(CareTask, tasks["lasting"])
        assert (lasting.status, lasting.attempts, lasting.max_attempts) == ("failed", 1, 5)
        assert db.get(CareTask, tasks["queued"]).status == "queued"
        assert db.get(CareTask, tasks["done"]).status == "done"


def test_a_lasting_follow_up_failure_points_to_change_channel(env: Any) -> None:
    task = _task(
        env,
        kind="follow-up",
        status="failed",
        attempts=1,
        payload={"channel": "sms"},
        last_error="The patient asked not to be texted.",
    )
    board = env.launch("A", patient=None)
    row = html.unescape(_rows(board.page("/jobs").text)[task])
    assert 'data-testid="retry"' not in row
    assert "Change the channel on the patient's page" in row
    link = re.search(r'data-testid="change-channel-link"', row)
    assert link and f"/patient/Patient/p1#task-{task}" in row


def test_queue_state_is_in_words_and_names_the_oldest_unfinished_task(
    env: Any, tasks: dict[str, int]
) -> None:
    page = html.unescape(env.launch("A", patient=None).page("/jobs").text)
    queue = re.search(r'data-testid="queue-state">(.*?)</section>', page, re.S)
    assert queue
    words = re.sub(r"<[^>]+>", "", queue[1])
    assert (
        "No worker is running: queued tasks wait until one is started (the command "
        "“caredesk worker”)." in words
    )
    assert "2 waiting to start, 0 running, 0 scheduled for later" in words
    assert "1 waiting for the EHR's permission" in words
    assert f"Oldest unfinished: task #{tasks['auth']} (referral)" in words
    assert "{" not in words  # no raw dict


def test_a_charts_launch_sees_only_its_patient(env: Any, tasks: dict[str, int]) -> None:
    chart = env.launch("A", patient="Patient/p1")
    rows = _rows(chart.page("/jobs").text)
    assert tasks["other-patient"] not in rows and tasks["other-ehr"] not in rows
    assert tasks["temporary"] in rows


def test_nothing_waiting_says_so(env: Any) -> None:
    _task(env, status="done")
    page = env.launch("A", patient=None).page("/jobs").text
    assert "Nothing is waiting to run." in page


# --- the demo outbox ---------------------------------------------------------------------


def _message(env: Any, channel: str, to: str, subject: str | None, body: str) -> None:
    from helpdesk.crypto import get_vault
    from helpdesk.models import OutboundMessage

    vault = get_vault(env.app)
    with env.db() as db:
        db.add(
            OutboundMessage(
                registration_id=env.registrations["A"],
                patient_ref="Patient/p1",
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


def test_outbox_shows_texts_as_texts_and_links_as_links(env: Any) -> None:
    link = "http://127.0.0.1:8000/s/" + "x" * 60
    _message(env, "sms", "+13125550113", "How was your visit?", f"Tell us how it went: {link}.")
    _message(env, "email", "peggy@example.org", "How was your visit?", f"Hello,\n\n{link}\n")
    page = env.launch("A", patient=None).page("/jobs/outbox").text
    sms = re.search(r'data-channel="sms">(.*?)</li>', page, re.S)
    email = re.search(r'data-channel="email">(.*?)</li>', page, re.S)
    assert sms and email
    assert "Text message" in sms[1] and "Subject" not in sms[1]
    assert "How was your visit?" not in sms[1]  # a text has no subject line
    # The link is a link (without the sentence's full stop), the text around it stays text.
    assert f'<a href="{link}" rel="noreferrer">{link}</a>.' in sms[1]
    assert "Subject" in email[1] and "How was your visit?" in email[1]
    assert f'<a href="{link}" rel="noreferrer">' in email[1]


def test_outbox_makes_only_http_links_and_escapes_the_rest(env: Any) -> None:
    _message(env, "sms", "+13125550113", None, 'javascript:alert(1) <b>hi</b> "https://x.test/a"')
    page = env.launch("A", patient=None).page("/jobs/outbox").text
    assert 'href="javascript' not in page and "<b>hi</b>" not in page
    assert '<a href="https://x.test/a" rel="noreferrer">' in page
