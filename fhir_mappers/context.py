"""HelpdeskContext: one patient's contact, visits, insurance and help-desk work, with the
warnings about what in the FHIR data was missing or odd."""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from fhir_mappers.appointment import Visit, patients_of, to_visit
from fhir_mappers.coverage import Insurance, beneficiary_of, to_insurance
from fhir_mappers.fhirutil import index_resources, require_aware, resource_type, zone
from fhir_mappers.issues import DataWarning
from fhir_mappers.patient import Contact, to_contact
from fhir_mappers.validation import validation_warnings

# Ticket statuses that mean "nothing left to do" (the store's vocabulary).
_CLOSED_TICKET = {"closed", "resolved", "cancelled", "done"}


@dataclass(frozen=True)
class HelpdeskContext:
    patient_id: str | None
    generated_at: dt.datetime
    viewer_tz: str
    contact: Contact | None
    visits: tuple[Visit, ...]  # by start time; unknown times last
    insurance: Insurance
    tickets: tuple[Mapping[str, Any], ...]
    tasks: tuple[Mapping[str, Any], ...]
    surveys: tuple[Mapping[str, Any], ...]
    flags: tuple[str, ...]  # short codes for the day board and the sidebar header
    unavailable: Mapping[str, str]  # part -> why it could not be fetched
    warnings: tuple[DataWarning, ...]

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict: fixed key order, datetimes ISO 8601 with their offset.

        Warnings appear once, at the top level, not inside contact/visits/policies.
        """
        out = _jsonable(self)
        assert isinstance(out, dict)
        return out


def _jsonable(value: Any, *, top: bool = True) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {
            f.name: _jsonable(getattr(value, f.name), top=False)
            for f in dataclasses.fields(value)
            if top or f.name != "warnings" or isinstance(value, DataWarning)
        }
    if isinstance(value, dt.datetime | dt.date):
        return value.isoformat()
    if isinstance(value, enum.Enum):
        return _jsonable(value.value, top=False)
    if isinstance(value, Mapping):
        return {str(k): _jsonable(value[k], top=False) for k in sorted(value, key=str)}
    if isinstance(value, list | tuple | set | frozenset):
        items = [_jsonable(v, top=False) for v in value]
        return sorted(items, key=str) if isinstance(value, set | frozenset) else items
    if value is None or isinstance(value, str | int | float | bool):
        return value
    return str(value)


def _store_rows(rows: Sequence[Mapping[str, Any]]) -> tuple[Mapping[str, Any], ...]:
    """Store rows become plain JSON-ready dicts, so the context stays serializable."""
    converted: list[Mapping[str, Any]] = []
    for row in rows:
        data = _jsonable(row, top=False)
        if isinstance(data, dict):
            converted.append(data)
    return tuple(converted)


def _flags(
    contact: Contact | None,
    visits: Sequence[Visit],
    insurance: Insurance,
    tickets: Sequence[Mapping[str, Any]],
    unavailable: Mapping[str, str],
) -> tuple[str, ...]:
    flags: list[str] = []
    if "coverage" not in unavailable:
        state_flag = {
            "none": "no-coverage",
            "expired": "coverage-expired",
            "expiring": "coverage-expiring",
            "cancelled": "coverage-cancelled",
            "unknown": "coverage-unknown",
        }.get(insurance.state)
        if state_flag:
            flags.append(state_flag)
    if any(v.needs_confirmation for v in visits):
        flags.append("needs-confirmation")
    if any(v.timing == "today" for v in visits):
        flags.append("visit-today")
    if contact is not None:
        if contact.deceased:
            flags.append("deceased")
        if not contact.phones and not contact.emails:
            flags.append("no-contact-method")
        elif contact.preferred_channel is None:
            flags.append("no-allowed-channel")
    if any(str(t.get("status", "open")).lower() not in _CLOSED_TICKET for t in tickets):
        flags.append("open-ticket")
    return tuple(flags)


def build_context(
    *,
    patient: Mapping[str, Any] | None,
    appointments: Sequence[Mapping[str, Any]],
    included: Sequence[Mapping[str, Any]],
    coverages: Sequence[Mapping[str, Any]] | None,
    now: dt.datetime,
    viewer_tz: str,
    tickets: Sequence[Mapping[str, Any]] = (),
    tasks: Sequence[Mapping[str, Any]] = (),
    surveys: Sequence[Mapping[str, Any]] = (),
    unavailable: Mapping[str, str] | None = None,
    validate: bool = True,
    expiring_days: int = 30,
) -> HelpdeskContext:
    """Assemble one patient's help-desk context.

    `coverages=None` means coverage was not fetched (say why in `unavailable`, e.g.
    `{"coverage": "scope not granted"}`); `[]` means fetched and none on file. With
    `validate`, every resource is checked against the R4B models and failures become
    warnings (about 4k resources/s: turn it off for bulk day boards).
    """
    require_aware(now)
    viewer = zone(viewer_tz)
    if viewer is None:
        raise ValueError("viewer_tz is not a known time zone")
    now_local = now.astimezone(viewer)
    missing = dict(unavailable or {})
    warnings: list[DataWarning] = []

    seen: set[tuple[str, str | None, str, str]] = set()

    def extend(found: Sequence[DataWarning]) -> None:
        # The mappers and the validator often see the same problem; keep the first (the
        # mapper's, whose message says what was assumed).
        for warning in found:
            key = (warning.resource_type, warning.resource_id, warning.field, warning.code)
            if key not in seen:
                seen.add(key)
                warnings.append(warning)

    resources: list[Mapping[str, Any]] = []
    contact: Contact | None = None
    if patient is not None:
        resources.append(patient)
        contact = to_contact(patient, now=now_local)
    elif "patient" not in missing:
        missing["patient"] = "no Patient resource"

    included_by_key = index_resources(included)
    visits: list[Visit] = []
    for appt in appointments:
        resources.append(appt)
        visits.append(to_visit(appt, now=now, viewer_tz=viewer_tz, included=included_by_key))
    visits.sort(
        key=lambda v: (
            v.start is None,
            v.start.timestamp() if v.start else 0.0,
            v.appointment_id or "",
        )
    )

    if coverages is None:
        missing.setdefault("coverage", "not fetched")
        insurance = to_insurance([], now=now_local, expiring_days=expiring_days)
        insurance = dataclasses.replace(insurance, state="unknown")
    else:
        resources.extend(coverages)
        insurance = to_insurance(
            coverages, now=now_local, expiring_days=expiring_days, included=included_by_key
        )

    if contact is not None:
        extend(contact.warnings)
    for visit in visits:
        extend(visit.warnings)
    for policy in insurance.policies:
        extend(policy.warnings)
    if validate:
        for res in [*resources, *included]:
            extend(validation_warnings(res))

    ticket_rows = _store_rows(tickets)
    return HelpdeskContext(
        patient_id=contact.patient_id if contact else None,
        generated_at=now,
        viewer_tz=viewer.key,
        contact=contact,
        visits=tuple(visits),
        insurance=insurance,
        tickets=ticket_rows,
        tasks=_store_rows(tasks),
        surveys=_store_rows(surveys),
        flags=_flags(contact, visits, insurance, ticket_rows, missing),
        unavailable=dict(sorted(missing.items())),
        warnings=tuple(warnings),
    )


def patient_refs(resource: Mapping[str, Any]) -> list[str]:
    """The `Patient/id` keys an Appointment (participants) or Coverage (beneficiary) is for."""
    rtype = resource_type(resource)
    if rtype == "Appointment":
        return patients_of(resource)
    if rtype == "Coverage":
        key = beneficiary_of(resource)
        return [key] if key else []
    return []


__all__ = ["HelpdeskContext", "build_context", "patient_refs"]
