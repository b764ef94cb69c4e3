"""/context and /board hand over to plugin.context and plugin.board_data (stood in for
here: their FHIR side is tested with the sandbox in tests/plugin) and audit what was shown."""

from __future__ import annotations

import types
from datetime import UTC, date, datetime

import pytest
import time_machine
from sqlalchemy import event

from helpdesk.db import get_store
from plugin import board_data
from plugin import context as ctx
from smart_launch.errors import FatalFhirError


@pytest.fixture
def fake_context(monkeypatch):  # type: ignore[no-untyped-def]
    calls: list[tuple[str, object, dict]] = []
    module = types.SimpleNamespace()

    def fetch_context(launch, **kw):  # type: ignore[no-untyped-def]
        calls.append(("context", launch.id, kw))
        return {
            "patient_id": launch.patient_ref.split("/")[1],
            "flags": ["no-phone"],
            "unavailable": {},
        }

    def fetch_board(launch, *, day, location=None, practitioner=None, **kw):  # type: ignore[no-untyped-def]
        calls.append(
            (
                "board",
                launch.id,
                {"day": day, "location": location, "practitioner": practitioner, **kw},
            )
        )
        return {
            "date": day.isoformat(),
            "rows": [
                {"patient_ref": "Patient/p1"},
                {"patient_ref": "Patient/p2"},
                {"patient_ref": None},
            ],
        }

    module.fetch_context = fetch_context  # type: ignore[attr-defined]
    module.fetch_board = fetch_board  # type: ignore[attr-defined]
    # The views call through the module at request time; a test may swap the stand-ins.
    monkeypatch.setattr(ctx, "fetch_context", lambda *a, **k: module.fetch_context(*a, **k))
    monkeypatch.setattr(board_data, "fetch_board", lambda *a, **k: module.fetch_board(*a, **k))
    return module, calls


def test_context_returns_the_lead_builder_output_and_audits_the_read(env, a, fake_context) -> None:
    _, calls = fake_context
    response = a.get("/context")
    assert response.status_code == 200
    assert response.json() == {"patient_id": "p1", "flags": ["no-phone"], "unavailable": {}}
    assert calls == [("context", a.launch_id, {})]
    [event] = env.audit_events("context.read")
    assert (event.actor, event.patient_ref, event.entity) == (
        "Practitioner/dr-a",
        "Patient/p1",
        "Patient/p1",
    )


def test_context_without_patient_is_409(env, fake_context) -> None:
    queue = env.launch("A", patient=None)
    response = queue.get("/context")
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "no_patient"
    assert fake_context[1] == []


def test_ehr_failure_is_a_502_in_the_error_shape(env, a, fake_context) -> None:
    module, _ = fake_context

    def broken(launch):  # type: ignore[no-untyped-def]
        raise FatalFhirError("The EHR refused the search (HTTP 400).", status=400)

    module.fetch_context = broken
    response = a.get("/context")
    assert response.status_code == 502
    error = response.json()["error"]
    assert error["message"] == "The EHR refused the search (HTTP 400)."
    assert error["request_id"]
    assert env.audit_events("context.read") == []


def test_board_passes_filters_and_defaults_to_the_viewer_today(env, a, fake_context) -> None:
    _, calls = fake_context
    response = a.get(
        "/board",
        params={
            "date": "2026-05-04",
            "location": "Location/l1",
            "practitioner": "Practitioner/x",
            "sort": "flags",
        },
    )
    assert response.status_code == 200
    assert response.json()["date"] == "2026-05-04"
    assert calls[-1][2] == {
        "day": date(2026, 5, 4),
        "location": "Location/l1",
        "practitioner": "Practitioner/x",
        "sort": "flags",
    }
    # 03:00 UTC on the 7th is still the 6th in Chicago.
    with time_machine.travel(datetime(2026, 3, 7, 3, 0, tzinfo=UTC), tick=False):
        assert a.get("/board").status_code == 200
    assert calls[-1][2] == {"day": date(2026, 3, 6), "location": None, "practitioner": None}
    events = env.audit_events("board.read")
    assert sorted({e.patient_ref for e in events}) == ["Patient/p1", "Patient/p2"]


def test_board_with_bad_date_is_422(a, fake_context) -> None:
    response = a.get("/board", params={"date": "06/03/2026"})
    assert response.status_code == 422
    assert "date" in response.json()["error"]["fields"]
    assert fake_context[1] == []


def test_context_refresh_bypasses_the_cache(env, a, fake_context) -> None:
    _, calls = fake_context
    assert a.get("/context").status_code == 200
    assert a.get("/context?refresh=true").status_code == 200
    assert [c[2] for c in calls] == [{}, {"use_cache": False}]
    assert a.get("/context?refresh=maybe").status_code == 422


def test_a_board_of_many_patients_audits_them_in_one_insert_and_one_commit(
    env, a, fake_context
) -> None:
    """A row per patient, written together: one statement and one commit, not one each
    (300 patients were 300 INSERTs and 300 commits)."""
    module, _ = fake_context
    rows = [{"patient_ref": f"Patient/p{n}"} for n in range(300)]
    module.fetch_board = lambda launch, **kw: {"date": "2026-05-04", "rows": rows}
    engine = get_store(env.app).engine
    seen: list[str] = []

    def note(_conn, _cursor, statement, *_rest) -> None:  # type: ignore[no-untyped-def]
        if statement.startswith("INSERT INTO audit_event"):
            seen.append("insert")

    def committed(_conn) -> None:  # type: ignore[no-untyped-def]
        seen.append("commit")

    event.listen(engine, "before_cursor_execute", note)
    event.listen(engine, "commit", committed)
    try:
        assert a.get("/board", params={"date": "2026-05-04"}).status_code == 200
    finally:
        event.remove(engine, "before_cursor_execute", note)
        event.remove(engine, "commit", committed)
    assert seen.count("insert") == 1
    assert seen[seen.index("insert") + 1] == "commit"
    assert len(env.audit_events("board.read")) == 300
