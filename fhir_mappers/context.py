"""HelpdeskContext: one patient's contact, visits, insurance and help-desk work, with the
warnings about what in the FHIR data was missing or odd."""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from fhir_mappers import flags
from fhir_mappers.appointment import Visit, patients_of, to_visits
from fhir_mappers.contact import blocked_by, needs_interpreter
from fhir_mappers.coverage import Insurance, beneficiary_of, to_insurance
from fhir_mappers.fhirutil import (
    index_resources,
    parse_datetime,
    require_aware,
    resource_type,
    zone,
)
from fhir_mappers.flags import Flag
from fhir_mappers.issues import DataWarning
from fhir_mappers.patient import Contact, to_contact
from fhir_mappers.records import quick_init
from fhir_mappers.validation import validation_warnings


@quick_init
@dataclass(frozen=True)
class HelpdeskContext:
    patient_id: str | None
    generated_at: dt.datetime
    viewer_tz: str
    contact: Contact | None
    visits: tuple[Visit, ...]  # all of them, by start time; unknown times last
    upcoming: tuple[Visit, ...]  # not ended yet (today or later), soonest first
    recent: tuple[Visit, ...]  # ended (earlier today included), newest first
    insurance: Insurance
    tickets: tuple[Mapping[str, Any], ...]
    tasks: tuple[Mapping[str, Any], ...]
    surveys: tuple[Mapping[str, Any], ...]
    flags: tuple[str, ...]  # codes of fhir_mappers.flags, most urgent first
    alerts: tuple[Flag, ...]  # the same flags with their words and whether they need a call
    needs_call: bool  # any flag that means somebody should phone the patient
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


def _open(ticket: Mapping[str, Any]) -> bool:
    return str(ticket.get("status", "open")).lower() not in flags.CLOSED_TICKET


def _overdue_call(task: Mapping[str, Any], now: dt.datetime) -> bool:
    """A follow-up (it puts a call on someone's work list) still open after its due time.
    Store times without an offset are UTC."""
    if task.get("kind") != "follow-up" or task.get("status") in ("done", "cancelled", "failed"):
        return False
    return flags.call_overdue(parse_datetime(task.get("due_at"), dt.UTC), now)


def _no_show_to_rebook(visits: Sequence[Visit]) -> bool:
    """The latest visit that has taken place was a no-show, and nothing is booked since."""
    real = [v for v in visits if v.status not in flags.NOT_A_VISIT and v.start is not None]
    if any(v.timing in ("today", "upcoming") for v in real):
        return False
    past = [v for v in real if v.timing == "past"]
    return bool(past) and past[-1].status == "noshow"


def patient_flags(
    *,
    contact: Contact | None,
    insurance_state: str | None,
    clinic_languages: Sequence[str] = ("en",),
) -> list[str]:
    """The flags that belong to the patient (not to one visit), shared by board and sidebar.

    `insurance_state` None means coverage could not be read: "coverage unknown".
    """
    found: list[str] = []
    coverage = flags.coverage_flag(insurance_state)
    if coverage:
        found.append(coverage)
    if contact is not None:
        if contact.deceased:
            found.append(flags.DECEASED)
        elif not contact.phone_reachable:
            found.append(flags.UNREACHABLE)
        if "sms" in blocked_by(contact.restrictions):
            found.append(flags.DO_NOT_TEXT)
        if needs_interpreter(
            contact.preferred_language, contact.interpreter_required, clinic_languages
        ):
            found.append(flags.INTERPRETER_NEEDED)
    return found


def _flags(
    contact: Contact | None,
    visits: Sequence[Visit],
    insurance: Insurance,
    tickets: Sequence[Mapping[str, Any]],
    tasks: Sequence[Mapping[str, Any]],
    now: dt.datetime,
    clinic_languages: Sequence[str],
) -> tuple[str, ...]:
    found = patient_flags(
        contact=contact, insurance_state=insurance.state, clinic_languages=clinic_languages
    )
    live = [v for v in visits if v.status not in flags.NOT_A_VISIT]
    if any(v.needs_confirmation for v in live):
        found.append(flags.UNCONFIRMED)
    if _no_show_to_rebook(visits):
        found.append(flags.NO_SHOW)
    if any(v.timing == "today" for v in live):
        found.append(flags.VISIT_TODAY)
    if any(t.get("kind") == "reminder" and t.get("status") == "failed" for t in tasks):
        found.append(flags.REMINDER_FAILED)
    open_tickets = [t for t in tickets if _open(t)]
    if any(str(t.get("priority", "")).lower() in flags.HIGH_PRIORITIES for t in open_tickets):
        found.append(flags.HIGH_PRIORITY_TICKET)
    elif open_tickets:
        found.append(flags.OPEN_TICKET)
    if any(_overdue_call(t, now) for t in tasks):
        found.append(flags.OVERDUE_CALL)
    return flags.ordered(found)


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
    clinic_languages: Sequence[str] = ("en",),
) -> HelpdeskContext:
    """Assemble one patient's help-desk context.

    `coverages=None` means coverage was not fetched (say why in `unavailable`, e.g.
    `{"coverage": "scope not granted"}`); `[]` means fetched and none on file. With
    `validate`, every resource is checked against the R4B models and failures become
    warnings (about 4k resources/s: turn it off for bulk day boards). `clinic_languages`
    are the languages staff speak: another preferred language flags "interpreter needed".
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
    resources.extend(appointments)
    visits = to_visits(appointments, now=now, viewer_tz=viewer_tz, included=included_by_key)
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
    task_rows = _store_rows(tasks)
    codes = _flags(contact, visits, insurance, ticket_rows, task_rows, now, clinic_languages)
    shown = [v for v in visits if v.status != "entered-in-error"]
    return HelpdeskContext(
        patient_id=contact.patient_id if contact else None,
        generated_at=now,
        viewer_tz=viewer.key,
        contact=contact,
        visits=tuple(visits),
        insurance=insurance,
        tickets=ticket_rows,
        tasks=task_rows,
        surveys=_store_rows(surveys),
        flags=codes,
        alerts=flags.describe(codes),
        needs_call=flags.needs_call(codes),
        upcoming=tuple(v for v in shown if v.timing in ("today", "upcoming")),
        recent=tuple(
            sorted(
                (v for v in shown if v.timing == "past"),
                key=lambda v: (v.start.timestamp() if v.start else 0.0, v.appointment_id or ""),
                reverse=True,
            )
        ),
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


__all__ = ["HelpdeskContext", "build_context", "patient_flags", "patient_refs"]
