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
from fhir_mappers.appointment import Visit, patients_of, read_visits
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


def _visit_flags(visits: Sequence[Visit]) -> list[str]:
    """The flags a patient's visits raise, in one pass over them (sorted by start):
    unconfirmed, visit today, and a no-show to rebook (the latest visit that has taken
    place was a no-show, and nothing is booked since). Cancelled visits count for none."""
    found: list[str] = []
    unconfirmed = today = booked = False
    last_past: Visit | None = None
    for visit in visits:
        if visit.status in flags.NOT_A_VISIT:
            continue
        timing = visit.timing  # "unknown" exactly when there is no start
        unconfirmed = unconfirmed or visit.needs_confirmation
        if timing == "today":
            today = booked = True
        elif timing == "upcoming":
            booked = True
        elif timing == "past":
            last_past = visit
    if unconfirmed:
        found.append(flags.UNCONFIRMED)
    if not booked and last_past is not None and last_past.status == "noshow":
        found.append(flags.NO_SHOW)
    if today:
        found.append(flags.VISIT_TODAY)
    return found


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
    found += _visit_flags(visits)
    if tasks:
        if any(t.get("kind") == "reminder" and t.get("status") == "failed" for t in tasks):
            found.append(flags.REMINDER_FAILED)
        if any(_overdue_call(t, now) for t in tasks):
            found.append(flags.OVERDUE_CALL)
    if tickets:
        open_tickets = [t for t in tickets if _open(t)]
        if any(str(t.get("priority", "")).lower() in flags.HIGH_PRIORITIES for t in open_tickets):
            found.append(flags.HIGH_PRIORITY_TICKET)
        elif open_tickets:
            found.append(flags.OPEN_TICKET)
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

    contact: Contact | None = None
    if patient is not None:
        contact = to_contact(patient, now=now_local)
    elif "patient" not in missing:
        missing["patient"] = "no Patient resource"

    included_by_key = index_resources(included)
    by_start = read_visits(
        appointments, now=now, viewer=viewer, today=now_local.date(), included=included_by_key
    )
    # By start, unknown times last; the instants are compared, not the clock readings (an
    # hour repeats when the clocks go back). Each visit's key is worked out once, and only
    # when there are two visits to put in order.
    keyed = [(False, 0.0, "", 0, v) for v in by_start]
    if len(by_start) > 1:
        keyed = [
            (v.start is None, v.start.timestamp() if v.start else 0.0, v.appointment_id or "", i, v)
            for i, v in enumerate(by_start)
        ]
        keyed.sort()  # the position settles a tie: two visits are never compared
        by_start = [k[4] for k in keyed]  # not `*_, v`: a list per visit for the `*_`

    if coverages is None:
        missing.setdefault("coverage", "not fetched")
        insurance = to_insurance([], now=now_local, expiring_days=expiring_days)
        insurance = dataclasses.replace(insurance, state="unknown")
    else:
        insurance = to_insurance(
            coverages, now=now_local, expiring_days=expiring_days, included=included_by_key
        )

    # The mappers and the validator often see the same problem; keep the first (the
    # mapper's, whose message says what was assumed).
    found: list[Sequence[DataWarning]] = [contact.warnings] if contact is not None else []
    found += [visit.warnings for visit in by_start if visit.warnings]
    found += [policy.warnings for policy in insurance.policies if policy.warnings]
    if validate:
        checked = [patient] if patient is not None else []
        checked += [*appointments, *(coverages or ()), *included]
        found += [validation_warnings(res) for res in checked]
    kept: list[DataWarning] = []
    seen: set[tuple[str, str | None, str, str]] = set()
    for some in found:
        for warning in some:
            key = (warning.resource_type, warning.resource_id, warning.field, warning.code)
            if key not in seen:
                seen.add(key)
                kept.append(warning)

    ticket_rows = _store_rows(tickets) if tickets else ()
    task_rows = _store_rows(tasks) if tasks else ()
    codes = _flags(contact, by_start, insurance, ticket_rows, task_rows, now, clinic_languages)
    shown: list[Visit] = []
    past: list[tuple[float, str, Visit]] = []
    for _, stamp, appointment_id, _, v in keyed:
        if v.status == "entered-in-error":
            continue
        if v.timing in ("today", "upcoming"):
            shown.append(v)
        elif v.timing == "past":
            past.append((stamp, appointment_id, v))
    if len(past) > 1:
        # Newest first; visits that tie keep their order by start (the sort is stable).
        past.sort(key=lambda r: (r[0], r[1]), reverse=True)

    patient_id = contact.patient_id if contact else None
    generated_at = now
    viewer_tz = viewer.key
    visits = tuple(by_start)
    upcoming = tuple(shown)
    recent = tuple([r[2] for r in past])
    tickets = ticket_rows
    tasks = task_rows
    surveys = _store_rows(surveys) if surveys else ()
    alerts = flags.describe(codes)
    needs_call = flags.needs_call(codes)
    unavailable = dict(sorted(missing.items())) if missing else {}
    warnings = tuple(kept)
    # Positional, each argument the local of its field's name, `codes` for `flags` (a test
    # checks the order): keyword arguments cost a microsecond more per context.
    return HelpdeskContext(
        patient_id,
        generated_at,
        viewer_tz,
        contact,
        visits,
        upcoming,
        recent,
        insurance,
        tickets,
        tasks,
        surveys,
        codes,
        alerts,
        needs_call,
        unavailable,
        warnings,
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
