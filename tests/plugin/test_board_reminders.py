"""Reminders queued from the board for many visits at once: the rule on the store's rows
(helpdesk.reminders), and the board's "all unconfirmed tomorrow" run twice over HTTP: the
second run queues nothing and says why for each visit."""

from __future__ import annotations

import datetime as dt
import html
import re
from collections.abc import Iterator
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import requests
import time_machine
from sqlalchemy import select

from helpdesk import reminders
from helpdesk.db import get_store
from helpdesk.models import CareTask
from helpdesk.tasks import new_task
from sandbox.testing import running_sandbox
from tests.ehr import connect
from tests.live import serve
from tests.survey.conftest import add_registration

CHICAGO = ZoneInfo("America/Chicago")
NOW = dt.datetime(2026, 11, 30, 16, 30, tzinfo=CHICAGO)  # a Monday afternoon, CST
TOMORROW_10 = dt.datetime(2026, 12, 1, 10, 0, tzinfo=CHICAGO)


def visit(n: int, **changes: Any) -> reminders.Visit:
    base: dict[str, Any] = {
        "appointment_ref": f"Appointment/a{n}",
        "patient_ref": f"Patient/p{n}",
        "status": "booked",
        "start": TOMORROW_10,
        "reachable": True,
    }
    base.update(changes)
    return reminders.Visit(**base)


@pytest.fixture
def store(make_app) -> Iterator[tuple[Any, int]]:  # type: ignore[no-untyped-def]
    app = make_app()
    reg = add_registration(app, "https://ehr.example/fhir")
    with app.app_context():
        yield app, reg


def _run(app: Any, reg: int, visits: list[reminders.Visit]) -> reminders.Outcome:
    with get_store(app).session() as session:
        outcome = reminders.queue(
            session,
            "message",
            registration_id=reg,
            visits=visits,
            now=NOW,
            today=NOW.date().isoformat(),
            requested_by="Practitioner/prac-scheduler-ortiz",
        )
        session.expunge_all()
    return outcome


@time_machine.travel(NOW, tick=False)
def test_each_visit_gets_one_reminder_or_a_reason(store: tuple[Any, int]) -> None:
    app, reg = store
    visits = [
        visit(1),
        visit(2, patient_ref=None),
        visit(3, status="cancelled"),
        visit(4, start=NOW - dt.timedelta(minutes=5)),
        visit(5, reachable=False),
        visit(6, deceased=True),
        visit(1),  # the same row twice
    ]
    outcome = _run(app, reg, visits)
    assert [v.appointment_ref for v, _ in outcome.queued] == ["Appointment/a1"]
    assert {s.visit.appointment_ref: s.reason for s in outcome.skipped} == {
        "Appointment/a2": reminders.NO_PATIENT,
        "Appointment/a3": reminders.NOT_BOOKED,
        "Appointment/a4": reminders.STARTED,
        "Appointment/a5": reminders.UNREACHABLE,
        "Appointment/a6": reminders.DECEASED,
    }
    with get_store(app).session() as session:
        [task] = session.scalars(select(CareTask)).all()
        assert (task.kind, task.status, task.patient_ref) == ("reminder", "queued", "Patient/p1")
        assert task.payload["appointment_ref"] == "Appointment/a1"
        assert task.dedupe_key == f"reminder:{reg}:Appointment/a1:board:2026-11-30"


@time_machine.travel(NOW, tick=False)
def test_reminders_already_on_their_way_or_just_sent_are_not_repeated(
    store: tuple[Any, int],
) -> None:
    app, reg = store
    with get_store(app).session() as session:
        # The cron sweep's 24 h reminder, still waiting to go out.
        cron = new_task(
            session,
            registration_id=reg,
            kind="reminder",
            patient_ref="Patient/p1",
            payload={"appointment_ref": "Appointment/a1", "offset_hours": 24},
            dedupe_key=f"reminder:{reg}:Appointment/a1:24h",
        )
        # One sent two hours ago, and one sent three days ago (old enough to send again).
        recent = new_task(
            session,
            registration_id=reg,
            kind="reminder",
            patient_ref="Patient/p2",
            payload={"appointment_ref": "Appointment/a2"},
        )
        old = new_task(
            session,
            registration_id=reg,
            kind="reminder",
            patient_ref="Patient/p3",
            payload={"appointment_ref": "Appointment/a3"},
        )
        assert cron and recent and old
        for task, ago in ((recent, 2), (old, 72)):
            task.status = "done"
            task.finished_at = NOW - dt.timedelta(hours=ago)
            task.fhir_refs = {"reminder_sent": True}
        session.flush()
        ids = {"cron": cron.id, "recent": recent.id}
    first = _run(app, reg, [visit(1), visit(2), visit(3)])
    assert [v.appointment_ref for v, _ in first.queued] == ["Appointment/a3"]
    assert [(s.visit.appointment_ref, s.reason, s.task_id) for s in first.skipped] == [
        ("Appointment/a1", reminders.ALREADY_QUEUED, ids["cron"]),
        ("Appointment/a2", reminders.RECENTLY_SENT, ids["recent"]),
    ]
    second = _run(app, reg, [visit(1), visit(2), visit(3)])
    assert second.queued == []
    assert [s.reason for s in second.skipped] == [
        reminders.ALREADY_QUEUED,
        reminders.RECENTLY_SENT,
        reminders.ALREADY_QUEUED,
    ]
    # The board's request of today is itself the reason once its task has run.
    with get_store(app).session() as session:
        task = session.get(CareTask, first.task_ids()[0])
        assert task is not None
        task.status, task.finished_at = "done", NOW
        task.status_note = "Not sent: the patient cannot be reached."
    third = _run(app, reg, [visit(3)])
    assert [(s.reason, s.task_id) for s in third.skipped] == [
        (reminders.ASKED_TODAY, first.task_ids()[0])
    ]


@time_machine.travel(NOW, tick=False)
def test_reminder_calls_go_on_the_call_list_once_per_visit(store: tuple[Any, int]) -> None:
    app, reg = store
    with get_store(app).session() as session:
        # A call about visit 2 is already waiting for a person; visit 3's was made.
        waiting = new_task(
            session,
            registration_id=reg,
            kind="follow-up",
            patient_ref="Patient/p2",
            payload={"channel": "phone", "appointment_ref": "Appointment/a2"},
        )
        made = new_task(
            session,
            registration_id=reg,
            kind="follow-up",
            patient_ref="Patient/p3",
            payload={"channel": "phone", "appointment_ref": "Appointment/a3"},
        )
        assert waiting and made
        waiting.status = "waiting"
        made.status, made.finished_at = "done", NOW - dt.timedelta(days=2)
        session.flush()
        waiting_id = waiting.id

    def run() -> reminders.Outcome:
        with get_store(app).session() as session:
            outcome = reminders.queue(
                session,
                "call",
                registration_id=reg,
                visits=[
                    visit(1, callable=True, reachable=False),  # a call reaches who a text cannot
                    visit(2, callable=True),
                    visit(3, callable=True),
                    visit(4, callable=False),
                    visit(5, callable=True, status="cancelled"),
                ],
                now=NOW,
                today=NOW.date().isoformat(),
            )
            session.expunge_all()
        return outcome

    first = run()
    assert [v.appointment_ref for v, _ in first.queued] == ["Appointment/a1", "Appointment/a3"]
    assert [(s.visit.appointment_ref, s.reason, s.task_id) for s in first.skipped] == [
        ("Appointment/a2", reminders.CALL_OPEN, waiting_id),
        ("Appointment/a4", reminders.NO_PHONE, None),
        ("Appointment/a5", reminders.NOT_BOOKED, None),
    ]
    with get_store(app).session() as session:
        task = session.get(CareTask, first.task_ids()[0])
        assert task is not None
        assert (task.kind, task.status, task.assignee) == ("follow-up", "queued", None)
        assert task.payload["channel"] == "phone"
        assert task.payload["appointment_ref"] == "Appointment/a1"
    # Run again: the calls just queued are open, so nothing is queued twice.
    second = run()
    assert second.queued == []
    assert {s.visit.appointment_ref: s.reason for s in second.skipped} == {
        "Appointment/a1": reminders.CALL_OPEN,
        "Appointment/a2": reminders.CALL_OPEN,
        "Appointment/a3": reminders.CALL_OPEN,
        "Appointment/a4": reminders.NO_PHONE,
        "Appointment/a5": reminders.NOT_BOOKED,
    }


# --- the board, over HTTP ------------------------------------------------------------------

CLIENT_ID = "caredesk-board"


def _appointment(aid: str, patient: str, start: dt.datetime, status: str) -> dict[str, Any]:
    confirmed = status not in ("proposed", "pending")
    return {
        "resourceType": "Appointment",
        "id": aid,
        "status": status,
        "start": start.isoformat(),
        "end": (start + dt.timedelta(minutes=20)).isoformat(),
        "participant": [
            {
                "actor": {"reference": f"Patient/{patient}"},
                "status": "accepted" if confirmed else "needs-action",
            },
            {"actor": {"reference": "Practitioner/prac-clinician-lee"}, "status": "accepted"},
            {"actor": {"reference": "Location/loc-chicago-main"}, "status": "accepted"},
        ],
    }


def _summary(page: str) -> tuple[str, dict[str, list[str]]]:
    """The summary line and, per reason, the appointment rows skipped for it."""
    line = re.search(r'<p class="bd-outcome-line">(.*?)</p>', page, re.S)
    assert line
    reasons: dict[str, list[str]] = {}
    for reason, item in re.findall(r'<li data-reason="([^"]+)">(.*?)</li>', page, re.S):
        reasons.setdefault(reason, []).append(html.unescape(re.sub(r"<[^>]+>", "", item)))
    return html.unescape(re.sub(r"<[^>]+>", "", line[1])), reasons


def test_remind_all_unconfirmed_tomorrow_twice_queues_once_and_says_why(make_app) -> None:  # type: ignore[no-untyped-def]
    app = make_app()
    tomorrow = dt.datetime.now(CHICAGO).date() + dt.timedelta(days=1)
    at = dt.datetime.combine(tomorrow, dt.time(11, 0), CHICAGO)
    ours = {
        "bulk-okonkwo": ("pat-001", "proposed"),  # mobile phone: gets one
        "bulk-patel": ("pat-012", "pending"),  # mobile phone: gets one
        "bulk-johnson": ("pat-015", "proposed"),  # nothing on file: skipped, and why
        "bulk-obrien": ("pat-013", "booked"),  # confirmed: not part of the run
    }
    with serve(app) as url, running_sandbox() as sb:
        connect(app, sb, url, client_id=CLIENT_ID)
        for i, (aid, (patient, status)) in enumerate(ours.items()):
            sb.put_resource(_appointment(aid, patient, at + dt.timedelta(minutes=20 * i), status))
        browser = requests.Session()
        launch = sb.launch(CLIENT_ID, user="Practitioner/prac-scheduler-ortiz")
        board = browser.get(launch["url"], timeout=30)
        token = re.search(r'name="csrf_token" value="([^"]+)"', board.text)
        assert token
        post_url = board.url.split("?")[0] + "/reminders"
        form = {"csrf_token": token[1], "scope": "tomorrow", "date": tomorrow.isoformat()}

        first = browser.post(post_url, data=form, timeout=60)
        assert first.status_code == 200
        line, skipped = _summary(first.text)
        with get_store(app).session() as session:
            tasks = session.scalars(select(CareTask).where(CareTask.kind == "reminder")).all()
            queued = {t.payload["appointment_ref"] for t in tasks}
        assert {"Appointment/bulk-okonkwo", "Appointment/bulk-patel"} <= queued
        assert "Appointment/bulk-obrien" not in queued
        assert "Appointment/bulk-johnson" not in queued
        assert line.startswith(f"{len(tasks)} reminder")
        assert any("Johnson" in item for item in skipped[reminders.UNREACHABLE])
        assert "No phone or email the patient can be reached on" in html.unescape(first.text)

        second = browser.post(post_url, data=form, timeout=60)
        assert second.status_code == 200
        line, skipped = _summary(second.text)
        assert line.startswith("0 reminders queued")
        with get_store(app).session() as session:
            assert session.scalar(
                select(CareTask.id).where(CareTask.kind == "reminder").order_by(CareTask.id.desc())
            ) == max(t.id for t in tasks)
        # Every visit queued the first time is skipped now, saying a reminder is on its way.
        assert len(skipped[reminders.ALREADY_QUEUED]) == len(tasks)
        assert "A reminder is already queued" in html.unescape(second.text)
        assert any("Johnson" in item for item in skipped[reminders.UNREACHABLE])
        # A form with a stale or missing token changes nothing.
        refused = browser.post(post_url, data={**form, "csrf_token": "x"}, timeout=30)
        assert refused.status_code == 403

        # Reminder calls for the selected rows: the patient no message reaches has no
        # phone either, so says why; the call goes on the call list once.
        calls = {
            "csrf_token": token[1],
            "scope": "call-selected",
            "date": tomorrow.isoformat(),
            "appointment": ["bulk-okonkwo", "bulk-johnson"],
        }
        first_calls = browser.post(post_url, data=calls, timeout=60)
        assert first_calls.status_code == 200
        line, skipped = _summary(first_calls.text)
        assert line.startswith("1 reminder call queued")
        assert any("Johnson" in item for item in skipped[reminders.NO_PHONE])
        assert "Each is on the call list" in re.sub(r"<[^>]+>", "", first_calls.text)
        with get_store(app).session() as session:
            [call] = session.scalars(select(CareTask).where(CareTask.kind == "follow-up")).all()
            assert call.payload["appointment_ref"] == "Appointment/bulk-okonkwo"
        again = browser.post(post_url, data=calls, timeout=60)
        line, skipped = _summary(again.text)
        assert line.startswith("0 reminder calls queued")
        assert any("Okonkwo" in item for item in skipped[reminders.CALL_OPEN])
