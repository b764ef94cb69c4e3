"""Audit rows of reads (issue 16 §3: "batched or made cheaper, never lost"): on
PostgreSQL the reads of one process that record at the same moment share one INSERT and
one commit, and each caller returns only once its own row is committed."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
from flask import Flask
from sqlalchemy import event, func, select
from sqlalchemy.exc import IntegrityError

from helpdesk import audit as audit_module
from helpdesk.audit import audit_read, audit_reads
from helpdesk.db import get_store
from helpdesk.models import AuditEvent

READERS = 6


@pytest.fixture
def pg_app(make_app, pg_url: str) -> Flask:  # type: ignore[no-untyped-def]
    return make_app(DATABASE_URL=pg_url)


def _count(app: Flask) -> int:
    with get_store(app).session() as session:
        return int(session.scalar(select(func.count()).select_from(AuditEvent)) or 0)


def _inserts(app: Flask) -> list[int]:
    """Rows per INSERT into audit_event, as PostgreSQL is sent them."""
    seen: list[int] = []

    @event.listens_for(get_store(app).engine, "before_cursor_execute")
    def note(_conn, _cursor, statement, parameters, _context, executemany) -> None:  # type: ignore[no-untyped-def]
        if statement.startswith("INSERT INTO audit_event"):
            seen.append(len(parameters) if executemany else 1)

    return seen


def test_reads_recording_at_once_share_one_insert_and_each_waits_for_its_commit(
    pg_app: Flask,
) -> None:
    inserts = _inserts(pg_app)
    first_batch_may_commit = threading.Event()
    engine = get_store(pg_app).engine

    # The first batch is held inside its transaction until the other readers have
    # queued, so what is batched does not depend on the machine's speed.
    @event.listens_for(engine, "commit")
    def hold(_conn) -> None:  # type: ignore[no-untyped-def]
        first_batch_may_commit.wait(10)

    seen_committed: dict[int, int] = {}
    errors: list[BaseException] = []

    def read(n: int) -> None:
        try:
            with pg_app.test_request_context("/"):
                audit_read("context.read", actor=f"reader-{n}", patient_ref=f"Patient/{n}")
                # Returned: the row is committed, so another connection sees it.
                with get_store(pg_app).session() as other:
                    seen_committed[n] = int(
                        other.scalar(
                            select(func.count())
                            .select_from(AuditEvent)
                            .where(AuditEvent.actor == f"reader-{n}")
                        )
                        or 0
                    )
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=read, args=(n,)) for n in range(READERS)]
    threads[0].start()
    give_up = time.monotonic() + 10
    while not inserts and time.monotonic() < give_up:
        time.sleep(0.005)
    for t in threads[1:]:
        t.start()
    writer = audit_module._group_commit(get_store(pg_app))  # noqa: SLF001
    while len(writer._pending) < READERS - 1 and time.monotonic() < give_up:  # noqa: SLF001
        time.sleep(0.005)
    assert not seen_committed  # nobody returned before its row was committed
    first_batch_may_commit.set()
    for t in threads:
        t.join(20)
    assert errors == []
    assert seen_committed == dict.fromkeys(range(READERS), 1)
    # One INSERT for the first reader, one for the five that queued behind it (one row
    # each would be six INSERTs and six commits).
    assert inserts == [1, READERS - 1]
    assert _count(pg_app) == READERS


def test_a_list_of_patients_is_one_insert(pg_app: Flask) -> None:
    inserts = _inserts(pg_app)
    with pg_app.test_request_context("/"):
        audit_reads(
            "board.read",
            [{"actor": "scheduler", "patient_ref": f"Patient/{n}"} for n in range(300)],
        )
    assert inserts == [300]
    assert _count(pg_app) == 300


def test_a_row_that_cannot_be_stored_fails_its_own_read_only(pg_app: Flask) -> None:
    """A batch that fails is written caller by caller: the others' rows are committed and
    only the caller of the bad row sees the error (its request answers an error, it is
    never shown unaudited)."""
    engine = get_store(pg_app).engine
    release = threading.Event()

    @event.listens_for(engine, "commit")
    def hold(_conn) -> None:  # type: ignore[no-untyped-def]
        release.wait(10)

    outcome: dict[str, Any] = {}

    def read(name: str, **row: Any) -> None:
        try:
            with pg_app.test_request_context("/"):
                audit_read("context.read", actor=name, **row)
            outcome[name] = "ok"
        except IntegrityError:
            outcome[name] = "refused"

    first = threading.Thread(target=read, args=("first",), kwargs={"patient_ref": "Patient/1"})
    first.start()
    writer = audit_module._group_commit(get_store(pg_app))  # noqa: SLF001
    give_up = time.monotonic() + 10
    while not writer._writing and time.monotonic() < give_up:  # noqa: SLF001
        time.sleep(0.005)
    others = [
        # No such registration: the foreign key refuses the row.
        threading.Thread(target=read, args=("bad",), kwargs={"registration_id": 999_999}),
        threading.Thread(target=read, args=("good",), kwargs={"patient_ref": "Patient/2"}),
    ]
    for t in others:
        t.start()
    while len(writer._pending) < 2 and time.monotonic() < give_up:  # noqa: SLF001
        time.sleep(0.005)
    release.set()
    for t in [first, *others]:
        t.join(20)
    assert outcome == {"first": "ok", "bad": "refused", "good": "ok"}
    with get_store(pg_app).session() as session:
        actors = set(session.scalars(select(AuditEvent.actor)))
    assert actors == {"first", "good"}


def test_the_writer_thread_ends_when_there_is_nothing_to_write(
    pg_app: Flask, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(audit_module, "_WRITER_IDLE_SECONDS", 0.05)
    with pg_app.test_request_context("/"):
        audit_read("context.read", actor="one", patient_ref="Patient/1")
    give_up = time.monotonic() + 5
    while time.monotonic() < give_up and any(
        t.name == "caredesk-audit" and t.is_alive() for t in threading.enumerate()
    ):
        time.sleep(0.01)
    assert not any(t.name == "caredesk-audit" and t.is_alive() for t in threading.enumerate())
    with pg_app.test_request_context("/"):
        audit_read("context.read", actor="two", patient_ref="Patient/2")  # a new one starts
    assert _count(pg_app) == 2


def test_sqlite_writes_the_row_in_the_request(make_app, sqlite_url: str) -> None:  # type: ignore[no-untyped-def]
    """SQLite takes one writer at a time: no second connection, no thread."""
    app = make_app(DATABASE_URL=sqlite_url)
    with app.test_request_context("/"):
        audit_read("context.read", actor="one", patient_ref="Patient/1")
    assert _count(app) == 1
    assert get_store(app) not in audit_module._writers  # noqa: SLF001
