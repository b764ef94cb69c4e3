"""The scheduler board: one row per appointment of a day, with the problems to call about.

Pure: the caller fetched the day's appointments (with `_include`d actors), the patients and
their coverages in a few paged searches, and the store's open tickets, overdue calls and
failed reminders; this turns them into rows. No request per row happens anywhere. The
flags are the sidebar's (fhir_mappers.flags), computed by the same function for the
patient's part.
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

from . import flags
from .appointment import Visit, patient_of, to_visit
from .context import patient_flags
from .coverage import beneficiary_of, to_insurance
from .fhirutil import require_aware, resource_id
from .patient import Contact, to_contact

# The shared vocabulary (fhir_mappers.flags), under the names the board used first.
FLAG_ORDER = flags.ORDER
FLAG_TEXT = {f.code: f.text for f in flags.FLAGS}


# What a row shows of its visit (``Visit``'s fields of the same names; times in the
# viewer's zone, and the location's only when its clock differs).
_VISIT_FIELDS = (
    "appointment_id",
    "start",
    "status",
    "status_text",
    "practitioner",
    "location",
    "service",
    "timing",
    "tz_abbr",
    "location_tz",
    "location_start",
    "location_tz_abbr",
)


@dataclass(frozen=True)
class BoardRow:
    """One appointment of the day, and what its patient's part adds."""

    visit: Visit
    patient_ref: str | None
    patient_name: str | None
    preferred_name: str | None
    flags: tuple[str, ...]  # codes of fhir_mappers.flags, most urgent first
    needs_call: bool
    coverage_state: str  # Insurance.state; `unknown` when coverage could not be read

    @property
    def appointment_id(self) -> str | None:
        return self.visit.appointment_id

    @property
    def start(self) -> dt.datetime | None:
        return self.visit.start

    def to_json(self) -> dict[str, Any]:
        """The visit's fields the board shows and the row's own, side by side."""
        # Only scalars and tuples of strings: no deep copy (dataclasses.asdict) is needed,
        # and on a 300-row board it cost more than the rest of to_json.
        data = {name: getattr(self.visit, name) for name in _VISIT_FIELDS}
        data.update({f.name: getattr(self, f.name) for f in fields(self) if f.name != "visit"})
        for moment in ("start", "location_start"):
            data[moment] = data[moment].isoformat() if data[moment] else None
        data["flags"] = [flags.flag(f).to_json() for f in self.flags]
        return data


def coverages_by_patient(
    coverages: Iterable[object],
) -> dict[str, list[Mapping[str, Any]]]:
    """Coverages grouped by beneficiary (`Patient/id`, whatever the reference's form)."""
    grouped: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
    for coverage in coverages:
        key = beneficiary_of(coverage)
        if key is not None and isinstance(coverage, Mapping):
            grouped[key].append(coverage)
    return grouped


def board_rows(
    *,
    appointments: Sequence[Mapping[str, Any]],
    included: Mapping[str, Mapping[str, Any]],
    patients: Mapping[str, Mapping[str, Any]],
    coverages: Mapping[str, Sequence[Mapping[str, Any]] | None] | None,
    open_ticket_patients: frozenset[str],
    failed_reminder_appointments: frozenset[str],
    now: dt.datetime,
    viewer_tz: str,
    expiring_days: int = 30,
    high_priority_ticket_patients: frozenset[str] = frozenset(),
    overdue_call_patients: frozenset[str] = frozenset(),
    clinic_languages: Sequence[str] = ("en",),
    visits: Sequence[Visit] | None = None,
    contacts: Mapping[str, Contact] | None = None,
) -> list[BoardRow]:
    """Rows in time order. `patients` and `coverages` are keyed by `Patient/id`.

    `coverages=None` means the Coverage search was refused or failed: every row says
    "coverage unknown", never "no coverage on file"; a patient whose value is None (their
    chunk of the search failed) is unknown too, while a patient absent from a mapping
    that was fetched has none on file. `included` may also hold the Practitioners and
    Locations read after `fhir_mappers.names.unresolved_references`. `visits`, when the
    caller mapped the appointments already (same order, same `now` and zone), are used
    instead of mapping each appointment again; `contacts`, when the caller mapped the
    patients already (`to_contact` of each of `patients`, same `now`), likewise.
    """
    require_aware(now)
    if visits is not None and len(visits) != len(appointments):
        raise ValueError("visits must match appointments one to one")
    rows: list[BoardRow] = []
    per_patient: dict[str | None, tuple[Contact | None, str, tuple[str, ...]]] = {}
    for index, appointment in enumerate(appointments):
        visit = (
            visits[index]
            if visits is not None
            else to_visit(appointment, now=now, viewer_tz=viewer_tz, included=included)
        )
        patient_ref = patient_of(appointment)
        if patient_ref not in per_patient:
            per_patient[patient_ref] = _patient_part(
                patient_ref,
                patients,
                coverages,
                now=now,
                expiring_days=expiring_days,
                clinic_languages=clinic_languages,
                contacts=contacts,
            )
        contact, coverage_state, patient_codes = per_patient[patient_ref]
        codes = list(patient_codes)
        if visit.needs_confirmation:
            codes.append(flags.UNCONFIRMED)
        if visit.status == "noshow":
            codes.append(flags.NO_SHOW)
        if f"Appointment/{resource_id(appointment)}" in failed_reminder_appointments:
            codes.append(flags.REMINDER_FAILED)
        if patient_ref in high_priority_ticket_patients:
            codes.append(flags.HIGH_PRIORITY_TICKET)
        elif patient_ref in open_ticket_patients:
            codes.append(flags.OPEN_TICKET)
        if patient_ref in overdue_call_patients:
            codes.append(flags.OVERDUE_CALL)
        if visit.status in flags.NOT_A_VISIT:
            # Nobody calls about a cancelled visit, its coverage least of all.
            codes = [c for c in codes if c not in flags.NEEDS_CALL and c not in _COVERAGE]
        shown = flags.ordered(codes)
        rows.append(
            BoardRow(
                visit=visit,
                patient_ref=patient_ref,
                patient_name=contact.display_name if contact else None,
                preferred_name=contact.preferred_name if contact else None,
                flags=shown,
                needs_call=flags.needs_call(shown),
                coverage_state=coverage_state,
            )
        )
    far = dt.datetime.max.replace(tzinfo=dt.UTC)
    rows.sort(key=lambda r: (r.start or far, r.appointment_id or ""))
    return rows


_COVERAGE = frozenset(
    {
        flags.NO_COVERAGE,
        flags.COVERAGE_EXPIRED,
        flags.COVERAGE_EXPIRING,
        flags.COVERAGE_CANCELLED,
        flags.COVERAGE_UNKNOWN,
    }
)


def _patient_part(
    patient_ref: str | None,
    patients: Mapping[str, Mapping[str, Any]],
    coverages: Mapping[str, Sequence[Mapping[str, Any]] | None] | None,
    *,
    now: dt.datetime,
    expiring_days: int,
    clinic_languages: Sequence[str],
    contacts: Mapping[str, Contact] | None,
) -> tuple[Contact | None, str, tuple[str, ...]]:
    """What a patient's rows share: once per patient, however many visits they have."""
    patient = patients.get(patient_ref) if patient_ref else None
    if patient_ref and contacts is not None and patient_ref in contacts:
        contact: Contact | None = contacts[patient_ref]
    else:
        contact = to_contact(patient, now=now) if isinstance(patient, Mapping) else None
    if coverages is None:
        state = "unknown"
    else:
        found = coverages.get(patient_ref, ()) if patient_ref else ()
        state = (
            "unknown"
            if found is None
            else to_insurance(found, now=now, expiring_days=expiring_days).state
        )
    codes = patient_flags(contact=contact, insurance_state=state, clinic_languages=clinic_languages)
    return contact, state, tuple(codes)


def sort_by_flags(rows: Sequence[BoardRow]) -> list[BoardRow]:
    """Rows that need a call first, then by their most urgent flag, then by time."""
    rank = flags.RANK
    far = dt.datetime.max.replace(tzinfo=dt.UTC)
    return sorted(
        rows,
        key=lambda r: (
            not r.needs_call,
            min((rank.get(f, len(rank)) for f in r.flags), default=len(rank)),
            -len(r.flags),
            r.start or far,
        ),
    )


__all__ = [
    "FLAG_ORDER",
    "FLAG_TEXT",
    "BoardRow",
    "board_rows",
    "coverages_by_patient",
    "patient_of",
    "sort_by_flags",
]
