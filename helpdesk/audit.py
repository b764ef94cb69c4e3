"""Audit trail: who (fhirUser) read or changed what about which patient. Never the data."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, TypedDict, Unpack, cast

from sqlalchemy import Table, insert
from sqlalchemy.orm import Session

from helpdesk.db import get_db
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
    event = AuditEvent(**columns(action, row))
    session.add(event)
    return event


def columns(action: str, row: Audited) -> dict[str, Any]:
    """The audit row's columns, by name, for ``action`` and what ``row`` says."""
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
    audit_many(action, [row])


def audit_many(action: str, rows: Sequence[Audited]) -> None:
    """``audit`` for a list that showed several patients (a row each): one INSERT and one
    commit for all of them, not one per patient (a board of 300 patients was 300)."""
    if not rows:
        return
    db = get_db()
    db.execute(_INSERT, [columns(action, row) for row in rows])
    db.commit()


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
    audit_many(
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
