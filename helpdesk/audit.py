"""Audit trail: who (fhirUser) read or changed what about which patient. Never the data."""

from __future__ import annotations

import os
import threading
import weakref
from collections.abc import Sequence
from concurrent.futures import Future
from typing import Any, NamedTuple, Protocol, TypedDict, Unpack, cast

from sqlalchemy import Table, insert
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from helpdesk.db import Store, get_db, get_store
from helpdesk.logctx import current_request_id
from helpdesk.models import AuditEvent, LaunchSession


class Audited(TypedDict, total=False):
    """What an audit row says besides its action: ``record``'s and ``audit``'s keywords."""

    launch: LaunchSession | None  # the actor, its registration and (by default) its patient
    registration_id: int | None  # without a launch: work no person did
    actor: str | None  # without a launch: a job, a survey answer
    patient_ref: str | None
    entity: str | None
    outcome: str  # "success"
    detail: dict[str, Any] | None


def record(session: Session, action: str, **row: Unpack[Audited]) -> AuditEvent:
    """Add an audit row to ``session`` (the caller commits with the change it records).

    The actor is the launch's user, or ``actor`` for work no person did (a job, a survey
    answer)."""
    event = AuditEvent(**_columns(action, row))
    session.add(event)
    return event


def _columns(action: str, row: Audited) -> dict[str, Any]:
    launch = row.get("launch")
    request_id = current_request_id()
    return {
        "action": action,
        "registration_id": launch.registration_id if launch else row.get("registration_id"),
        "actor": launch.fhir_user if launch else row.get("actor"),
        "patient_ref": row.get("patient_ref") or (launch.patient_ref if launch else None),
        "entity": row.get("entity"),
        "outcome": row.get("outcome", "success"),
        "request_id": None if request_id == "-" else request_id,
        "detail": row.get("detail") or {},
    }


# One INSERT on the table, without the ORM's unit of work: ``audit`` runs on every read
# of patient data (a cached context request is about a fifth audit row), and nothing
# reads the row back in the request.
_INSERT = insert(cast(Table, AuditEvent.__table__))


def audit(action: str, **row: Unpack[Audited]) -> None:
    """Record and commit at once, in the request's session (the web edge's form)."""
    db = get_db()
    db.execute(_INSERT, [_columns(action, row)])
    db.commit()


def audit_read(action: str, **row: Unpack[Audited]) -> None:
    """A read of patient data that changed nothing: its audit row is committed before
    this returns, as ``audit``'s is, but on PostgreSQL together with the rows of the
    reads other threads of this process are recording at the same moment: one INSERT and
    one commit (one WAL flush) for all of them instead of one each (group commit).

    Only for a request that wrote nothing: the request's own transaction ends here (a
    read-only one, which PostgreSQL commits without a flush) and the audit row is not in
    it. A change and its audit row commit together through ``audit`` or ``record``."""
    audit_reads(action, [row])


def audit_reads(action: str, rows: Sequence[Audited]) -> None:
    """``audit_read`` for several rows (a list that showed several patients): one
    INSERT, committed before this returns."""
    if not rows:
        return
    db = get_db()
    columns = [_columns(action, row) for row in rows]
    store = get_store()
    if store.backend != "postgresql":
        # SQLite has one writer at a time: a second connection would only wait for it.
        db.execute(_INSERT, columns)
        db.commit()
        return
    db.commit()
    _group_commit(store).commit(columns)


# How long a request waits for its audit row's commit before it fails (the store is then
# far slower than any page can wait for).
GROUP_COMMIT_WAIT_SECONDS = 30.0
# The writer thread ends after this long without rows (a process that serves no reads
# keeps no thread); the next read starts one.
_WRITER_IDLE_SECONDS = 1.0
# Callers per batch (a board's read is one caller with a row per patient).
_MAX_BATCH = 64


class _GroupCommit:
    """A store's audit rows of reads, committed by one thread in batches: each caller
    waits until the batch holding its rows has committed, and a batch that fails is
    written caller by caller so that only the caller of a bad row sees the error."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._ready = threading.Condition()
        self._pending: list[_Waiting] = []
        self._writing = False

    def commit(self, rows: list[dict[str, Any]]) -> None:
        waiting = _Waiting(rows, Future())
        with self._ready:
            self._pending.append(waiting)
            if self._writing:
                self._ready.notify()
            else:
                self._writing = True
                threading.Thread(target=self._write, name="caredesk-audit", daemon=True).start()
        waiting.done.result(timeout=GROUP_COMMIT_WAIT_SECONDS)

    def _write(self) -> None:
        while True:
            with self._ready:
                if not self._pending:
                    self._ready.wait(_WRITER_IDLE_SECONDS)
                if not self._pending:
                    self._writing = False
                    return
                batch = self._pending[:_MAX_BATCH]
                del self._pending[:_MAX_BATCH]
            self._insert(batch)

    def _insert(self, batch: list[_Waiting]) -> None:
        try:
            with self._engine.begin() as conn:
                conn.execute(_INSERT, [row for waiting in batch for row in waiting.rows])
        except Exception as exc:  # noqa: BLE001 - each caller's rows alone say whose it was
            if len(batch) == 1:
                batch[0].done.set_exception(exc)
                return
            for waiting in batch:
                self._insert([waiting])
            return
        for waiting in batch:
            waiting.done.set_result(None)


class _Waiting(NamedTuple):
    rows: list[dict[str, Any]]
    done: Future[None]


# Per store (a test process holds several; one that is gone takes its writer with it).
_writers: weakref.WeakKeyDictionary[Store, _GroupCommit] = weakref.WeakKeyDictionary()
_writers_lock = threading.Lock()


# A forked child (a gunicorn worker, RQ's scheduler) has none of its parent's threads:
# it starts its own writers, never waiting on a parent's batch.
os.register_at_fork(after_in_child=_writers.clear)


def _group_commit(store: Store) -> _GroupCommit:
    with _writers_lock:
        writer = _writers.get(store)
        if writer is None:
            writer = _writers[store] = _GroupCommit(store.engine)
        return writer


class _Row(Protocol):
    @property
    def id(self) -> int: ...

    @property
    def patient_ref(self) -> str | None: ...


def entity_of(row: _Row) -> str:
    """How the audit trail names one of our rows: its model and id (``Ticket/7``)."""
    return f"{type(row).__name__}/{row.id}"


def audit_row(
    session: Session, action: str, row: _Row, *, launch: LaunchSession, **detail: Any
) -> None:
    """A launch read or changed one of our rows: its audit row (about the row's patient)
    commits in ``session`` together with the change, so no change is stored unaudited."""
    session.flush()  # a row added by the caller gets its id
    record(
        session,
        action,
        launch=launch,
        patient_ref=row.patient_ref,
        entity=entity_of(row),
        detail=detail,
    )
    session.commit()


def audit_shown(action: str, *, launch: LaunchSession, entity: str, rows: Sequence[_Row]) -> None:
    """A list was shown: one audit row per patient in it, naming the rows of that patient,
    so "who looked at patient X" is one indexed query."""
    audit_reads(
        action,
        [
            {
                "launch": launch,
                "patient_ref": ref,
                "entity": entity,
                "detail": {"ids": [r.id for r in rows if r.patient_ref == ref]},
            }
            for ref in sorted({r.patient_ref for r in rows if r.patient_ref})
        ],
    )
