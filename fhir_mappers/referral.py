"""Which appointment schedules a referral: the one reading of it, pure.

A referral is scheduled by

1. an appointment whose ``basedOn`` is the referral's ServiceRequest (the EHR's scheduler
   booked it from the order: the strongest evidence there is), or, failing that,
2. an appointment *booked after the referral was made* for the referred practitioner,
   organization or service (specialty).

"Booked after" reads when the appointment was made, never when it takes place: a real
server's patient already had visits with the specialist on the calendar, booked weeks
before the referral, and filtering on ``Appointment.date`` marked three referrals
scheduled by them. The booking time is ``Appointment.created``; servers that leave it
out (it is optional) are read by ``meta.lastUpdated``, which is the creation time of an
appointment nobody changed since and later otherwise, so the fallback can only err
towards an appointment edited after the referral. One with neither never counts.

Only appointments that are going ahead count (booked, arrived, checked-in, fulfilled);
a cancelled or proposed one schedules nothing.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from fhir_mappers.appointment import patients_of
from fhir_mappers.fhirutil import (
    concept_text,
    get_dict,
    get_list,
    get_str,
    parse_datetime,
    reference_of,
    require_aware,
)

GOING_AHEAD = ("booked", "arrived", "checked-in", "fulfilled")


@dataclass(frozen=True)
class ReferralTarget:
    """What was referred, as CareDesk recorded it (references are ``Type/id``)."""

    patient: str
    made_at: dt.datetime
    service_request: str | None = None
    practitioner: str | None = None
    organization: str | None = None
    specialty: str | None = None


@dataclass(frozen=True)
class Scheduling:
    appointment: str  # Appointment/<id>
    how: Literal["based-on", "booked-after"]
    booked_at: dt.datetime | None

    def describe(self) -> str:
        if self.how == "based-on":
            return f"{self.appointment}, booked from the referral's ServiceRequest"
        when = self.booked_at.isoformat(timespec="minutes") if self.booked_at else "?"
        return f"{self.appointment}, booked {when} with the referred target"


def booked_at(appointment: object, default_tz: dt.tzinfo) -> dt.datetime | None:
    """When the appointment was made: ``created``, else ``meta.lastUpdated``; None when
    neither is readable. A ``created`` later than ``meta.lastUpdated`` cannot be true (the
    server stored it before that): the server's own time is taken instead."""
    created = parse_datetime(get_str(appointment, "created"), default_tz)
    updated = parse_datetime(get_str(get_dict(appointment, "meta"), "lastUpdated"), default_tz)
    if created is not None and (updated is None or created <= updated):
        return created
    return updated


def _ref_key(value: object) -> str | None:
    ref = reference_of(value)
    return f"{ref.type}/{ref.id}" if ref is not None and ref.type else None


def _actors(appointment: object) -> set[str]:
    found: set[str] = set()
    for part in get_list(appointment, "participant"):
        key = _ref_key(part.get("actor"))
        if key is not None:
            found.add(key)
    return found


def _services(appointment: object) -> list[str]:
    words: list[str] = []
    for key in ("specialty", "serviceType", "serviceCategory"):
        for concept in get_list(appointment, key):
            text = concept_text(concept)
            if text:
                words.append(text.casefold())
            for coding in get_list(concept, "coding"):
                display = get_str(coding, "display")
                if display:
                    words.append(display.casefold())
    return words


def _for_target(appointment: Mapping[str, Any], target: ReferralTarget) -> bool:
    actors = _actors(appointment)
    if target.practitioner and target.practitioner in actors:
        return True
    if target.organization and target.organization in actors:
        return True
    if target.specialty:
        wanted = target.specialty.strip().casefold()
        return bool(wanted) and any(wanted in words for words in _services(appointment))
    return False


def _based_on(appointment: Mapping[str, Any], service_request: str) -> bool:
    return any(_ref_key(ref) == service_request for ref in get_list(appointment, "basedOn"))


def scheduling_of(
    appointments: Iterable[object], target: ReferralTarget, *, default_tz: dt.tzinfo
) -> Scheduling | None:
    """The appointment that schedules ``target`` among ``appointments`` (anything a
    search returned: other resources and other patients' appointments are skipped), or
    None. ``default_tz`` reads a booking time written without an offset."""
    made_at = require_aware(target.made_at)
    candidates = [
        a
        for a in appointments
        if isinstance(a, Mapping)
        and get_str(a, "resourceType") == "Appointment"
        and get_str(a, "id")
        and get_str(a, "status") in GOING_AHEAD
        and target.patient in patients_of(a)
    ]
    if target.service_request:
        for appt in candidates:
            if _based_on(appt, target.service_request):
                return Scheduling(
                    f"Appointment/{appt['id']}", "based-on", booked_at(appt, default_tz)
                )
    best: Scheduling | None = None
    for appt in candidates:
        when = booked_at(appt, default_tz)
        if when is None or when < made_at or not _for_target(appt, target):
            continue
        if best is None or (best.booked_at is not None and when < best.booked_at):
            best = Scheduling(f"Appointment/{appt['id']}", "booked-after", when)
    return best
