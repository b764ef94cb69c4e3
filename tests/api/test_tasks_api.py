"""Follow-ups and referrals: the CareTask row (the outbox) and its RQ job on real Redis."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
import time_machine
from rq.job import Job, JobStatus

from helpdesk.models import CareTask
from jobs.queue import get_queue_state

# 14:00 in Chicago, already the next day (01:30) in Kolkata; DST starts in the US on Mar 8.
NOW = datetime(2026, 3, 6, 20, 0, tzinfo=UTC)


def _job(env, task_id: int) -> Job:  # type: ignore[no-untyped-def]
    with env.db() as db:
        task = db.get(CareTask, task_id)
        job_id = task.job_id
    assert job_id
    return Job.fetch(job_id, connection=get_queue_state(env.app).connection)


@pytest.mark.parametrize(
    ("app_config", "phrase", "expected"),
    [
        ({"VIEWER_TIMEZONE": "America/Chicago"}, "tomorrow morning", "2026-03-07T15:00:00+00:00"),
        # Across the DST change: 09:00 CDT is 14:00 UTC, not 15:00.
        ({"VIEWER_TIMEZONE": "America/Chicago"}, "in 2 days, morning", "2026-03-08T14:00:00+00:00"),
        # It is already Saturday in Kolkata: "tomorrow" is Sunday there.
        ({"VIEWER_TIMEZONE": "Asia/Kolkata"}, "tomorrow morning", "2026-03-08T03:30:00+00:00"),
        ({"VIEWER_TIMEZONE": "Asia/Kolkata"}, "in 3 hours", "2026-03-06T23:00:00+00:00"),
    ],
)
def test_follow_up_due_phrase_is_read_in_the_viewer_time_zone(env, a, phrase, expected) -> None:
    with time_machine.travel(NOW, tick=False):
        response = a.post(
            "/tasks",
            {
                "kind": "follow-up",
                "reason": "Check BP after new meds",
                "due": phrase,
                "channel": "sms",
                "assignee": "nurse-kim",
            },
        )
    assert response.status_code == 201, response.text
    body = response.json()
    assert datetime.fromisoformat(body["due_at"]) == datetime.fromisoformat(expected)
    assert (body["kind"], body["status"], body["assignee"]) == (
        "follow-up",
        "scheduled",
        "nurse-kim",
    )
    assert body["payload"]["reason"] == "Check BP after new meds"
    assert body["payload"]["channel"] == "sms"
    assert body["payload"]["due_phrase"] == phrase
    assert body["patient_ref"] == "Patient/p1"
    with env.db() as db:
        row = db.get(CareTask, body["id"])
        assert row.registration_id == env.registrations["A"]
        assert row.launch_session_id == a.launch_id
        assert row.created_by == "Practitioner/dr-a"
    job = _job(env, body["id"])
    assert job.get_status() == JobStatus.SCHEDULED
    # The job carries the row id only: no reason text, no patient, in Redis.
    assert job.args == (body["id"],)


def test_follow_up_with_exact_due_at_and_default_due(env, a) -> None:
    with time_machine.travel(NOW, tick=False):
        exact = a.post(
            "/tasks",
            {"kind": "follow-up", "reason": "r", "due_at": "2026-03-10T10:30:00-05:00"},
        )
        default = a.post("/tasks", {"kind": "follow-up", "reason": "r"})
    assert exact.status_code == 201, exact.text
    assert datetime.fromisoformat(exact.json()["due_at"]) == datetime(
        2026, 3, 10, 15, 30, tzinfo=UTC
    )
    assert exact.json()["payload"]["channel"] == "phone"
    # No due given: tomorrow morning for the viewer (Chicago, CST).
    assert datetime.fromisoformat(default.json()["due_at"]) == datetime(2026, 3, 7, 15, tzinfo=UTC)


def test_follow_up_with_unreadable_or_past_due_is_422(a) -> None:
    with time_machine.travel(NOW, tick=False):
        cases = [
            ({"due": "whenever suits"}, "due"),
            ({"due": "today 9am"}, "due"),
            ({"due_at": "2026-03-01T09:00:00+00:00"}, "due_at"),
            ({"due_at": "2026-03-09T09:00:00"}, "due_at"),  # no offset
            ({"due": "tomorrow", "due_at": "2026-03-09T09:00:00+00:00"}, "due"),
            ({"channel": "fax"}, "channel"),
        ]
        for extra, field in cases:
            response = a.post("/tasks", {"kind": "follow-up", "reason": "r", **extra})
            assert response.status_code == 422, (extra, response.text)
            assert field in response.json()["error"]["fields"], (extra, response.text)
        missing = a.post("/tasks", {"kind": "follow-up"})
        assert "reason" in missing.json()["error"]["fields"]
        kind = a.post("/tasks", {"kind": "survey-invite", "reason": "r"})
        assert "kind" in kind.json()["error"]["fields"]


def test_referral_is_queued_now_with_target_urgency_and_appointment(env, a) -> None:
    response = a.post(
        "/tasks",
        {
            "kind": "referral",
            "reason": "Persistent knee pain",
            "specialty": "orthopedics",
            "practitioner": "PractitionerRole/pr-7",
            "urgency": "urgent",
            "appointment": "Appointment/ap-1",
        },
    )
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["kind"] == "referral"
    assert body["status"] == "queued"
    assert body["due_at"] is None
    # Stored in the shape the referral job reads (jobs.referral.service_request).
    assert body["payload"] == {
        "reason": "Persistent knee pain",
        "target": {
            "specialty": "orthopedics",
            "organization": None,
            "practitioner": "PractitionerRole/pr-7",
        },
        "urgency": "urgent",
        "appointment_ref": "Appointment/ap-1",
    }
    assert _job(env, body["id"]).get_status() == JobStatus.QUEUED


def test_referral_refers_out_of_the_appointment_the_ehr_launched_from(env, a) -> None:
    from helpdesk.models import LaunchSession

    with env.db() as db:
        launch = db.get(LaunchSession, a.launch_id)
        launch.context = {
            "fhir_context": [{"reference": "Encounter/e1"}, {"reference": "Appointment/ap-9"}]
        }
        db.commit()
    response = a.post("/tasks", {"kind": "referral", "reason": "r", "specialty": "cardiology"})
    assert response.status_code == 201, response.text
    assert response.json()["payload"]["appointment_ref"] == "Appointment/ap-9"
    # A named appointment wins over the launch's.
    named = a.post(
        "/tasks",
        {"kind": "referral", "reason": "r", "specialty": "x", "appointment": "Appointment/ap-1"},
    )
    assert named.json()["payload"]["appointment_ref"] == "Appointment/ap-1"


def test_referral_without_a_target_or_with_bad_urgency_is_422(a) -> None:
    none = a.post("/tasks", {"kind": "referral", "reason": "r"})
    assert none.status_code == 422
    assert "specialty" in none.json()["error"]["fields"]
    bad = a.post(
        "/tasks",
        {"kind": "referral", "reason": "r", "organization": "Clinic 5", "urgency": "soonish"},
    )
    assert set(bad.json()["error"]["fields"]) == {"organization", "urgency"}


def test_task_list_shows_job_state_of_this_patient_in_this_ehr_only(env, a) -> None:
    def add(registration: str, patient: str, **kw) -> int:  # type: ignore[no-untyped-def]
        with env.db() as db:
            task = CareTask(
                registration_id=env.registrations[registration],
                patient_ref=patient,
                kind=kw.pop("kind", "follow-up"),
                payload={"reason": "r"},
                **kw,
            )
            db.add(task)
            db.flush()
            return task.id

    mine = add("A", "Patient/p1", status="failed", attempts=5, last_error="EHR said 403")
    referral = add("A", "Patient/p1", kind="referral", status="done", attempts=1)
    add("A", "Patient/p2")
    add("B", "Patient/p1")
    response = a.get("/tasks")
    assert response.status_code == 200
    items = response.json()["items"]
    assert [t["id"] for t in items] == [referral, mine]
    failed = items[1]
    assert (failed["status"], failed["attempts"], failed["last_error"]) == (
        "failed",
        5,
        "EHR said 403",
    )
    only = a.get("/tasks", params={"kind": "referral"}).json()["items"]
    assert [t["id"] for t in only] == [referral]
    audited = env.audit_events("task.list")
    assert audited and audited[0].patient_ref == "Patient/p1"
    assert set(audited[0].detail["ids"]) == {mine, referral}


def test_state_changing_requests_need_the_csrf_token(env, a, b) -> None:
    ticket = a.post("/tickets", {"subject": "s", "category": "billing"}).json()
    attempts = [
        ("POST", "/tickets", {"subject": "s", "category": "billing"}),
        ("PATCH", f"/tickets/{ticket['id']}", {"status": "closed"}),
        ("POST", f"/tickets/{ticket['id']}/notes", {"body": "n"}),
        ("POST", "/tasks", {"kind": "follow-up", "reason": "r", "due": "tomorrow"}),
    ]
    with env.db() as db:
        counts = (db.query(CareTask).count(), len(env.audit_events()))
    for method, path, body in attempts:
        for token in (None, "0" * 64, b.csrf):  # missing, forged, another launch's
            response = a.send(method, path, body, csrf=token)
            assert response.status_code == 403, (method, path, token)
            assert response.json()["error"]["code"] == "csrf_failed"
    with env.db() as db:
        assert db.query(CareTask).count() == counts[0]
    assert a.get(f"/tickets/{ticket['id']}").json()["status"] == "open"
    assert a.get(f"/tickets/{ticket['id']}").json()["notes"] == []
    # Reads need no token.
    assert a.get("/tickets").status_code == 200
