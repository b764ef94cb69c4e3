"""The scheduler board: one row per appointment of a day, with the problems to call about.

Pure: the caller fetched the day's appointments (with `_include`d actors), the patients and
their coverages in a few paged searches, and the store's open tickets and failed
reminders; this turns them into rows. No request per row happens anywhere.
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from .appointment import patient_of, to_visit
from .coverage import beneficiary_of, to_insurance
from .fhirutil import resource_id
from .patient import to_contact

FLAG_ORDER = (
    "no-coverage",
    "coverage-expired",
    "coverage-expiring",
    "unconfirmed",
    "unreachable",
    "reminder-failed",
    "open-ticket",
)
FLAG_TEXT = {
    "no-coverage": "No coverage on file",
    "coverage-expired": "Coverage expired",
    "coverage-expiring": "Coverage expiring",
    "unconfirmed": "Not confirmed",
    "unreachable": "No reachable phone or email",
    "reminder-failed": "Reminder failed",
    "open-ticket": "Open ticket",
}


@dataclass(frozen=True)
class BoardRow:
    appointment_id: str | None
    patient_ref: str | None
    patient_name: str | None
    preferred_name: str | None
    start: dt.datetime | None
    status_text: str
    practitioner: str | None
    location: str | None
    service: str | None
    flags: tuple[str, ...]
    coverage_state: str | None

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["start"] = self.start.isoformat() if self.start else None
        data["flags"] = [{"code": f, "text": FLAG_TEXT[f]} for f in self.flags]
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
    coverages: Mapping[str, Sequence[Mapping[str, Any]]],
    open_ticket_patients: frozenset[str],
    failed_reminder_appointments: frozenset[str],
    now: dt.datetime,
    viewer_tz: str,
    expiring_days: int = 30,
) -> list[BoardRow]:
    """Rows in time order. `patients` and `coverages` are keyed by `Patient/id`."""
    rows: list[BoardRow] = []
    for appointment in appointments:
        visit = to_visit(appointment, now=now, viewer_tz=viewer_tz, included=included)
        patient_ref = patient_of(appointment)
        patient = patients.get(patient_ref) if patient_ref else None
        contact = to_contact(patient, now=now) if patient is not None else None
        insurance = to_insurance(
            coverages.get(patient_ref, ()) if patient_ref else (),
            now=now,
            expiring_days=expiring_days,
        )
        flags: set[str] = set()
        if insurance.state == "none":
            flags.add("no-coverage")
        elif insurance.state == "expired":
            flags.add("coverage-expired")
        elif insurance.state == "expiring":
            flags.add("coverage-expiring")
        if visit.needs_confirmation:
            flags.add("unconfirmed")
        if contact is not None and contact.preferred_channel is None:
            flags.add("unreachable")
        appointment_ref = f"Appointment/{resource_id(appointment)}"
        if appointment_ref in failed_reminder_appointments:
            flags.add("reminder-failed")
        if patient_ref in open_ticket_patients:
            flags.add("open-ticket")
        rows.append(
            BoardRow(
                appointment_id=visit.appointment_id,
                patient_ref=patient_ref,
                patient_name=contact.display_name if contact else None,
                preferred_name=contact.preferred_name if contact else None,
                start=visit.start,
                status_text=visit.status_text,
                practitioner=visit.practitioner,
                location=visit.location,
                service=visit.service,
                flags=tuple(f for f in FLAG_ORDER if f in flags),
                coverage_state=insurance.state,
            )
        )
    far = dt.datetime.max.replace(tzinfo=dt.UTC)
    rows.sort(key=lambda r: (r.start or far, r.appointment_id or ""))
    return rows


def sort_by_flags(rows: Sequence[BoardRow]) -> list[BoardRow]:
    """Most urgent problems first (by the first flag's rank), then by time."""
    rank = {f: i for i, f in enumerate(FLAG_ORDER)}
    far = dt.datetime.max.replace(tzinfo=dt.UTC)
    return sorted(
        rows,
        key=lambda r: (
            min((rank[f] for f in r.flags), default=len(FLAG_ORDER)),
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
