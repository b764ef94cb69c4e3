"""Inputs at the edges, found by schemathesis (tests/api/test_schemathesis.py) and kept
here as fixed regressions, on PostgreSQL (where they failed): numbers past the store's
integer, text it cannot hold, methods a URL does not take, bodies of the wrong JSON type."""

from __future__ import annotations

import pytest

from helpdesk.models import CareTask
from helpdesk.tasks import new_task


@pytest.fixture
def db_url(pg_url: str) -> str:
    return pg_url


def _error(response):  # type: ignore[no-untyped-def]
    error = response.json()["error"]
    assert error["request_id"] and error["message"]
    return error


def test_ids_and_pages_past_the_integer_range_are_404_and_422(env, a) -> None:
    for ticket_id in (2**31, 10**20):
        assert a.get(f"/tickets/{ticket_id}").status_code == 404
        changed = a.patch(f"/tickets/{ticket_id}", {"priority": "high"})
        assert _error(changed)["code"] == "not_found"
        assert a.post(f"/tickets/{ticket_id}/notes", {"body": "b"}).status_code == 404
        assert a.page(f"/tickets/{ticket_id}").status_code == 404
        finished = a.http.post(
            a.url(f"/tasks/{ticket_id}/complete", api_path=False),
            headers={"X-CSRF-Token": a.csrf},
            timeout=10,
        )
        assert finished.status_code == 404
    assert a.get(f"/tickets/{2**31 - 1}").status_code == 404  # in range: simply not there
    too_far = a.get("/tickets", params={"page": 2**31})
    assert too_far.status_code == 422
    assert set(_error(too_far)["fields"]) == {"page"}
    last = a.get("/tickets", params={"page": 2**31 - 1})
    assert last.status_code == 200
    assert last.json()["items"] == []


def test_text_that_cannot_be_stored_is_refused_with_422(a) -> None:
    ticket = a.post("/tickets", {"subject": "Refund 😀", "category": "billing"})
    assert ticket.status_code == 201  # astral characters are fine
    path = f"/tickets/{ticket.json()['id']}"
    # A JSON escape of a lone surrogate decodes to a str UTF-8 cannot encode.
    surrogate = a.send(
        "POST",
        f"{path}/notes",
        data='{"body": "called back \\ud800"}',
        headers={"Content-Type": "application/json"},
    )
    assert surrogate.status_code == 422
    assert "surrogate" in _error(surrogate)["fields"]["body"][0]
    nul = a.patch(path, {"subject": "a\u0000b", "assignee": "kim\u0000"})
    assert nul.status_code == 422
    assert set(_error(nul)["fields"]) == {"subject", "assignee"}
    task = a.post("/tasks", {"kind": "follow-up", "reason": "call \udfff back"})
    assert task.status_code == 422
    assert set(_error(task)["fields"]) == {"reason"}
    assert a.get(path).json()["notes"] == []


def test_a_method_the_url_does_not_take_is_405_with_allow(a) -> None:
    response = a.send("DELETE", "/tickets")
    assert response.status_code == 405
    assert _error(response)["code"] == "method_not_allowed"
    assert set(response.headers["Allow"].replace(" ", "").split(",")) >= {"GET", "POST"}


def test_completing_a_task_with_a_json_array_body_is_not_a_server_error(env, a) -> None:
    with env.db() as db:
        task = new_task(
            db,
            registration_id=env.registrations["A"],
            kind="follow-up",
            patient_ref="Patient/p1",
            payload={"reason": "call back"},
        )
        assert task is not None
        task.status = "waiting"
        db.commit()
        task_id = task.id
    url = a.url(f"/tasks/{task_id}/complete", api_path=False)
    response = a.http.post(url, json=[1, 2], headers={"X-CSRF-Token": a.csrf}, timeout=10)
    assert response.status_code == 200, response.text
    with env.db() as db:
        assert db.get(CareTask, task_id).status_note == "Completed."
