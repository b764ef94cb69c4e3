"""Tickets and notes over the JSON API: SLA due times, filters, transitions, 422s, scoping
between EHR registrations, audit of reads."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest
from sqlalchemy import select

from helpdesk.models import Ticket, TicketNote

TICKET = {"subject": "Bill looks wrong", "category": "billing"}


@pytest.fixture
def db_url(store_url: str) -> str:
    """These tests run on SQLite and on the real PostgreSQL (ordering, NULLs, counts)."""
    return store_url


def _open(browser, **fields) -> dict:  # type: ignore[no-untyped-def]
    response = browser.post("/tickets", {**TICKET, **fields})
    assert response.status_code == 201, response.text
    return response.json()


def _when(value: str) -> datetime:
    return datetime.fromisoformat(value)


def test_create_ticket_is_due_after_its_category_sla(env, a) -> None:
    response = a.post(
        "/tickets",
        {"subject": "Is it safe to double the dose?", "category": "clinical-question"},
    )
    assert response.status_code == 201
    body = response.json()
    assert response.headers["Location"].endswith(f"/api/l/{a.launch_id}/tickets/{body['id']}")
    assert body["status"] == "open"
    assert body["priority"] == "normal"
    assert body["patient_ref"] == "Patient/p1"
    assert body["created_by"] == "Practitioner/dr-a"
    assert body["allowed_transitions"] == ["pending", "resolved", "closed"]
    assert body["notes"] == []
    assert _when(body["due_at"]) - _when(body["created_at"]) == timedelta(hours=4)
    billing = _open(a)
    assert _when(billing["due_at"]) - _when(billing["created_at"]) == timedelta(hours=72)
    with env.db() as db:
        row = db.get(Ticket, body["id"])
        assert row.registration_id == env.registrations["A"]


@pytest.mark.parametrize("app_config", [{"TICKET_SLA_HOURS": '{"billing": 2}'}])
def test_sla_table_is_overridden_by_config(env, a) -> None:
    billing = _open(a)
    scheduling = _open(a, category="scheduling")
    assert _when(billing["due_at"]) - _when(billing["created_at"]) == timedelta(hours=2)
    assert _when(scheduling["due_at"]) - _when(scheduling["created_at"]) == timedelta(hours=24)


def test_list_filters_by_status_category_assignee_patient_and_pages(env) -> None:
    queue = env.launch("A", patient=None, user="Practitioner/agent")
    made = [
        _open(queue, patient="Patient/p1", category="billing", assignee="sam"),
        _open(queue, patient="Patient/p1", category="insurance"),
        _open(queue, patient="Patient/p2", category="billing", assignee="sam"),
        _open(queue, patient="Patient/p2", category="scheduling", assignee="kim"),
    ]
    assert queue.patch(f"/tickets/{made[1]['id']}", {"status": "pending"}).status_code == 200
    assert queue.patch(f"/tickets/{made[3]['id']}", {"status": "resolved"}).status_code == 200

    def ids(**params: str) -> list[int]:
        response = queue.get("/tickets", params=params)
        assert response.status_code == 200, response.text
        return sorted(t["id"] for t in response.json()["items"])

    assert ids() == sorted(t["id"] for t in made)
    assert ids(status="open") == [made[0]["id"], made[2]["id"]]
    assert ids(status="open,pending") == [made[0]["id"], made[1]["id"], made[2]["id"]]
    assert ids(category="billing") == [made[0]["id"], made[2]["id"]]
    assert ids(assignee="kim") == [made[3]["id"]]
    assert ids(patient="Patient/p2") == [made[2]["id"], made[3]["id"]]
    assert ids(patient="Patient/p2", assignee="sam") == [made[2]["id"]]

    first = queue.get("/tickets", params={"per_page": "3"}).json()
    second = queue.get("/tickets", params={"per_page": "3", "page": "2"}).json()
    assert (first["total"], first["page"], first["per_page"]) == (4, 1, 3)
    assert len(first["items"]) == 3 and len(second["items"]) == 1
    assert {t["id"] for t in first["items"] + second["items"]} == {t["id"] for t in made}
    # Soonest due first: insurance (48 h) before billing (72 h).
    assert first["items"][0]["category"] in ("scheduling", "insurance")


def test_list_query_errors_are_422(a) -> None:
    response = a.get("/tickets", params={"status": "open,bogus", "per_page": "1000"})
    assert response.status_code == 422
    fields = response.json()["error"]["fields"]
    assert set(fields) == {"status", "per_page"}


def test_status_follows_allowed_transitions(a) -> None:
    ticket = _open(a)
    path = f"/tickets/{ticket['id']}"
    for status in ("pending", "open", "resolved", "open", "resolved", "closed"):
        response = a.patch(path, {"status": status})
        assert response.status_code == 200, (status, response.text)
        assert response.json()["status"] == status
    refused = a.patch(path, {"status": "open"})
    assert refused.status_code == 409
    error = refused.json()["error"]
    assert error["code"] == "invalid_transition"
    assert "final" in error["message"]
    assert error["request_id"]
    assert a.get(path).json()["status"] == "closed"


def test_priority_assignee_and_category_change_moves_due_time(a) -> None:
    ticket = _open(a)
    response = a.patch(
        f"/tickets/{ticket['id']}",
        {"priority": "urgent", "assignee": "kim", "category": "clinical-question"},
    )
    assert response.status_code == 200
    body = response.json()
    assert (body["priority"], body["assignee"], body["category"]) == (
        "urgent",
        "kim",
        "clinical-question",
    )
    assert _when(body["due_at"]) - _when(body["created_at"]) == timedelta(hours=4)
    explicit = "2030-01-02T03:04:05+05:30"
    body = a.patch(f"/tickets/{ticket['id']}", {"category": "billing", "due_at": explicit}).json()
    assert _when(body["due_at"]) == _when(explicit)
    body = a.patch(f"/tickets/{ticket['id']}", {"assignee": None}).json()
    assert body["assignee"] is None


def test_invalid_input_is_422_with_messages_per_field(a) -> None:
    response = a.post(
        "/tickets",
        {"subject": "", "category": "astrology", "priority": "meh", "colour": "red"},
    )
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["code"] == "validation_failed"
    assert error["request_id"]
    assert error["request_id"] == response.headers.get("X-Request-Id", error["request_id"])
    assert set(error["fields"]) == {"subject", "category", "priority", "colour"}
    assert all(isinstance(m, list) and m for m in error["fields"].values())

    ticket = _open(a)
    naive = a.patch(f"/tickets/{ticket['id']}", {"due_at": "2030-01-02T03:04:05"})
    assert naive.status_code == 422
    assert "due_at" in naive.json()["error"]["fields"]
    empty = a.patch(f"/tickets/{ticket['id']}", {})
    assert empty.status_code == 422
    assert "_schema" in empty.json()["error"]["fields"]
    not_object = a.post("/tickets", ["subject"])
    assert not_object.status_code == 422


def test_body_that_is_not_json_is_refused(a) -> None:
    form = a.http.post(a.url("/tickets"), data=TICKET, headers={"X-CSRF-Token": a.csrf}, timeout=10)
    assert form.status_code == 415
    assert form.json()["error"]["code"] == "unsupported_media_type"
    broken = a.http.post(
        a.url("/tickets"),
        data="{not json",
        headers={"X-CSRF-Token": a.csrf, "Content-Type": "application/json"},
        timeout=10,
    )
    assert broken.status_code == 400
    assert broken.json()["error"]["code"] == "invalid_json"


def test_notes_record_channel_and_direction(env, a) -> None:
    ticket = _open(a)
    path = f"/tickets/{ticket['id']}/notes"
    call = a.post(
        path, {"body": "Called back, left voicemail", "channel": "phone", "direction": "outbound"}
    )
    assert call.status_code == 201, call.text
    assert call.json()["author"] == "Practitioner/dr-a"
    internal = a.post(path, {"body": "Check with billing office"})
    assert internal.status_code == 201
    assert (internal.json()["channel"], internal.json()["direction"]) == ("internal", "internal")

    no_direction = a.post(path, {"body": "Patient emailed", "channel": "email"})
    assert no_direction.status_code == 422
    assert "direction" in no_direction.json()["error"]["fields"]
    mixed = a.post(path, {"body": "x", "channel": "internal", "direction": "inbound"})
    assert mixed.status_code == 422
    bad = a.post(path, {"body": "x", "channel": "pigeon", "direction": "inbound"})
    assert "channel" in bad.json()["error"]["fields"]

    detail = a.get(f"/tickets/{ticket['id']}").json()
    assert [(n["channel"], n["direction"]) for n in detail["notes"]] == [
        ("phone", "outbound"),
        ("internal", "internal"),
    ]


def test_closed_ticket_takes_no_notes(a) -> None:
    ticket = _open(a)
    assert a.patch(f"/tickets/{ticket['id']}", {"status": "closed"}).status_code == 200
    response = a.post(f"/tickets/{ticket['id']}/notes", {"body": "late"})
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "invalid_transition"


def test_registration_a_cannot_see_read_change_or_note_b_tickets(env, a, b) -> None:
    theirs = _open(b)
    mine = _open(a)
    path = f"/tickets/{theirs['id']}"
    missing = a.get("/tickets/999999")
    for response in (
        a.get(path),
        a.patch(path, {"status": "closed"}),
        a.post(f"{path}/notes", {"body": "hello"}),
    ):
        # Exactly what an id that does not exist gets: nothing to probe.
        assert response.status_code == 404
        error = response.json()["error"]
        assert (error["code"], error["message"]) == (
            missing.json()["error"]["code"],
            missing.json()["error"]["message"],
        )
    listed = a.get("/tickets").json()
    assert [t["id"] for t in listed["items"]] == [mine["id"]]
    assert listed["total"] == 1
    with env.db() as db:
        row = db.get(Ticket, theirs["id"])
        assert row.status == "open"
        assert db.scalars(select(TicketNote).where(TicketNote.ticket_id == row.id)).all() == []
    # And the other way round.
    assert b.get(f"/tickets/{mine['id']}").status_code == 404


def test_patient_launch_opens_tickets_for_its_patient_only(env, a) -> None:
    other = a.post("/tickets", {**TICKET, "patient": "Patient/p2"})
    assert other.status_code == 403
    assert other.json()["error"]["code"] == "other_patient"
    same = a.post("/tickets", {**TICKET, "patient": "Patient/p1"})
    assert same.status_code == 201
    queue = env.launch("A", patient=None)
    unnamed = queue.post("/tickets", TICKET)
    assert unnamed.status_code == 422
    assert unnamed.json()["error"]["code"] == "no_patient"
    bad_ref = queue.post("/tickets", {**TICKET, "patient": "Practitioner/x"})
    assert "patient" in bad_ref.json()["error"]["fields"]
    named = queue.post("/tickets", {**TICKET, "patient": "Patient/p9"})
    assert named.json()["patient_ref"] == "Patient/p9"


def test_requests_without_an_active_launch_of_this_browser_are_401(env, a) -> None:
    _open(a)
    stranger = env.launch("A")
    stranger.http.headers["Cookie"] = "caredesk_browser=" + "x" * 43  # another browser
    ended = env.launch("A", status="ended")
    for browser in (stranger, ended):
        response = browser.get("/tickets")
        assert response.status_code == 401
        assert response.json()["error"]["code"] == "no_session"
    no_cookie = a.http.get(a.url("/tickets"), headers={"Cookie": ""}, timeout=10)
    assert no_cookie.status_code == 401


def test_reads_write_audit_events_naming_who_and_which_patient(env, a) -> None:
    queue = env.launch("A", patient=None, user="Practitioner/agent")
    t1 = _open(queue, patient="Patient/p1")
    t2 = _open(queue, patient="Patient/p2")
    before = len(env.audit_events())

    assert a.get(f"/tickets/{t1['id']}").status_code == 200
    reads = env.audit_events("ticket.read")
    assert [(e.actor, e.patient_ref, e.entity, e.registration_id) for e in reads] == [
        ("Practitioner/dr-a", "Patient/p1", f"Ticket/{t1['id']}", env.registrations["A"])
    ]
    assert reads[0].request_id

    assert queue.get("/tickets").status_code == 200
    listed = env.audit_events("ticket.list")
    assert sorted((e.patient_ref, tuple(e.detail["ids"])) for e in listed) == [
        ("Patient/p1", (t1["id"],)),
        ("Patient/p2", (t2["id"],)),
    ]
    assert {e.actor for e in listed} == {"Practitioner/agent"}
    assert len(env.audit_events()) == before + 3

    a.patch(f"/tickets/{t1['id']}", {"status": "pending", "subject": "secret words"})
    update = env.audit_events("ticket.update")[-1]
    assert update.detail["changes"]["status"] == ["open", "pending"]
    # Free text is recorded by name only: a subject may hold PHI.
    assert update.detail["changes"]["subject"] is True
    assert "secret words" not in str(update.detail)
