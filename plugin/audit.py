"""Audit trail: who (fhirUser) read or changed what about which patient. Never the data."""

from __future__ import annotations

from typing import Any

from flask import has_request_context

from plugin.db import get_db
from plugin.logs import current_request_id
from plugin.models import AuditEvent, LaunchSession


def audit(
    action: str,
    *,
    launch: LaunchSession | None = None,
    patient_ref: str | None = None,
    entity: str | None = None,
    outcome: str = "success",
    detail: dict[str, Any] | None = None,
) -> None:
    db = get_db()
    db.add(
        AuditEvent(
            action=action,
            registration_id=launch.registration_id if launch else None,
            actor=launch.fhir_user if launch else None,
            patient_ref=patient_ref or (launch.patient_ref if launch else None),
            entity=entity,
            outcome=outcome,
            request_id=current_request_id() if has_request_context() else None,
            detail=detail or {},
        )
    )
    db.commit()
