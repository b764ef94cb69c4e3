"""Audit trail: who (fhirUser) read or changed what about which patient. Never the data."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from sqlalchemy.orm import Session

from helpdesk.db import get_db
from helpdesk.logctx import current_request_id
from helpdesk.models import AuditEvent, LaunchSession


def record(
    session: Session,
    action: str,
    *,
    launch: LaunchSession | None = None,
    registration_id: int | None = None,
    actor: str | None = None,
    patient_ref: str | None = None,
    entity: str | None = None,
    outcome: str = "success",
    detail: dict[str, Any] | None = None,
) -> AuditEvent:
    """Add an audit row to ``session`` (the caller commits with the change it records).

    The actor is the launch's user, or ``actor`` for work no person did (a job, a survey
    answer)."""
    request_id = current_request_id()
    event = AuditEvent(
        action=action,
        registration_id=launch.registration_id if launch else registration_id,
        actor=launch.fhir_user if launch else actor,
        patient_ref=patient_ref or (launch.patient_ref if launch else None),
        entity=entity,
        outcome=outcome,
        request_id=None if request_id == "-" else request_id,
        detail=detail or {},
    )
    session.add(event)
    return event


def audit(
    action: str,
    *,
    launch: LaunchSession | None = None,
    patient_ref: str | None = None,
    entity: str | None = None,
    outcome: str = "success",
    detail: dict[str, Any] | None = None,
) -> None:
    """Record and commit at once, in the request's session (the web edge's form)."""
    db = get_db()
    record(
        db,
        action,
        launch=launch,
        patient_ref=patient_ref,
        entity=entity,
        outcome=outcome,
        detail=detail,
    )
    db.commit()


class _Shown(Protocol):
    @property
    def id(self) -> int: ...

    @property
    def patient_ref(self) -> str | None: ...


def audit_shown(action: str, *, launch: LaunchSession, entity: str, rows: Sequence[_Shown]) -> None:
    """A list was shown: one audit row per patient in it, naming the rows of that patient,
    so "who looked at patient X" is one indexed query."""
    for ref in sorted({r.patient_ref for r in rows if r.patient_ref}):
        audit(
            action,
            launch=launch,
            patient_ref=ref,
            entity=entity,
            detail={"ids": [r.id for r in rows if r.patient_ref == ref]},
        )
