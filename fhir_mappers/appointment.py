"""Appointment -> Visit: what, when (in the right time zone), with whom, where, and whether
someone has to act on it."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from zoneinfo import ZoneInfo

from fhir_mappers import issues
from fhir_mappers.fhirutil import (
    Ref,
    concept_text,
    get_dict,
    get_list,
    get_str,
    human_name,
    lacks_timezone,
    parse_datetime,
    parse_reference,
    require_aware,
    zone,
)
from fhir_mappers.issues import DataWarning

TIMEZONE_EXT = "http://hl7.org/fhir/StructureDefinition/timezone"

STATUS_TEXT = {
    "proposed": "Proposed, time not agreed yet",
    "pending": "Waiting for confirmation",
    "booked": "Booked",
    "arrived": "Arrived",
    "checked-in": "Checked in",
    "fulfilled": "Completed",
    "cancelled": "Cancelled",
    "noshow": "No-show",
    "entered-in-error": "Entered in error",
    "waitlist": "On the waitlist",
}
# Statuses after which nobody needs to confirm anything.
_SETTLED = {"arrived", "checked-in", "fulfilled", "cancelled", "noshow", "entered-in-error"}
# Statuses for which a missing start is normal, not a data problem.
_NO_TIME_NEEDED = {"proposed", "cancelled", "waitlist", "entered-in-error"}


@dataclass(frozen=True)
class Visit:
    appointment_id: str | None
    status: str | None  # the FHIR code
    status_text: str  # plain words for the UI
    start: dt.datetime | None  # in `time_zone`
    end: dt.datetime | None
    time_zone: str  # the location's zone when it has one, else the viewer's
    timing: str  # past | today | upcoming | unknown (today = the viewer's calendar day)
    needs_confirmation: bool
    service: str | None
    appointment_type: str | None
    description: str | None
    practitioner: str | None
    practitioner_ref: str | None  # `Practitioner/id` when the actor had a reference
    location: str | None
    location_ref: str | None
    cancellation_reason: str | None
    warnings: tuple[DataWarning, ...]


def _contained(resource: Mapping[str, Any], ref: Ref) -> Mapping[str, Any] | None:
    for item in get_list(resource, "contained"):
        if get_str(item, "id") == ref.id:
            return item
    return None


def _target_name(
    target: Mapping[str, Any], included: Mapping[str, Mapping[str, Any]]
) -> str | None:
    rtype = get_str(target, "resourceType")
    if rtype in ("Practitioner", "Patient", "RelatedPerson"):
        return human_name(target.get("name"))
    if rtype == "PractitionerRole":
        # A role names no one itself; its practitioner does (often _included alongside).
        practitioner = get_dict(target, "practitioner")
        ref = _parse(practitioner)
        if ref is not None and ref.key in included:
            name = human_name(included[ref.key].get("name"))
            if name:
                return name
        return get_str(practitioner, "display") or concept_text(
            next(iter(get_list(target, "code")), None)
        )
    return get_str(target, "name") or get_str(target, "alias")


def _parse(reference: Mapping[str, Any] | None) -> Ref | None:
    raw = get_str(reference, "reference")
    if raw is None:
        return None
    try:
        return parse_reference(raw)
    except ValueError:
        return None


@dataclass(frozen=True)
class _Actor:
    kind: str  # resource type (from the reference, the target, or a guess)
    name: str | None
    ref: str | None
    target: Mapping[str, Any] | None


def _actors(
    resource: Mapping[str, Any],
    included: Mapping[str, Mapping[str, Any]],
    warn: Callable[[str, str, str], None],
) -> list[tuple[_Actor, str | None]]:
    """Resolve each participant's actor: included resource, contained, else display."""
    out: list[tuple[_Actor, str | None]] = []
    for i, part in enumerate(get_list(resource, "participant")):
        actor = get_dict(part, "actor")
        if actor is None:
            continue
        field = f"participant[{i}].actor"
        display = get_str(actor, "display")
        raw = get_str(actor, "reference")
        ref: Ref | None = None
        if raw is not None:
            try:
                ref = parse_reference(raw)
            except ValueError:
                warn(field, "reference is not a FHIR reference", issues.BAD_REFERENCE)
        target: Mapping[str, Any] | None = None
        if ref is not None:
            target = _contained(resource, ref) if ref.contained else included.get(ref.key)
        kind = (
            get_str(target, "resourceType")
            or (ref.type if ref else None)
            or get_str(actor, "type")
            or "Unknown"
        )
        name = (_target_name(target, included) if target else None) or display
        if kind == "Patient":
            pass  # the context's own patient: known by reference, its name is not needed here
        elif name is None:
            warn(
                field,
                "actor has neither a resolvable reference nor a display",
                issues.UNRESOLVED_REFERENCE,
            )
        elif raw is None and kind in ("Practitioner", "Location", "Unknown"):
            warn(field, "actor has a display but no reference", issues.DISPLAY_ONLY_REFERENCE)
        out.append(
            (
                _Actor(kind, name, ref.key if ref and not ref.contained else None, target),
                get_str(part, "status"),
            )
        )
    return out


def location_zone(location: Mapping[str, Any] | None) -> ZoneInfo | None:
    for ext in get_list(location, "extension"):
        if get_str(ext, "url") == TIMEZONE_EXT:
            found = zone(get_str(ext, "valueCode"))
            if found is not None:
                return found
    return None


def to_visit(
    resource: Mapping[str, Any],
    *,
    now: dt.datetime,
    viewer_tz: str,
    included: Mapping[str, Mapping[str, Any]],
) -> Visit:
    """Map an Appointment. `included` maps `Type/id` to resources fetched with `_include`.

    `viewer_tz` must be a valid IANA zone name (it is CareDesk configuration, not EHR
    data): ValueError otherwise.
    """
    require_aware(now)
    viewer = zone(viewer_tz)
    if viewer is None:
        raise ValueError("viewer_tz is not a known time zone")
    rid = get_str(resource, "id")
    warnings: list[DataWarning] = []

    def warn(field: str, message: str, code: str) -> None:
        warning = DataWarning("Appointment", rid, field, message, code)
        if warning not in warnings:
            warnings.append(warning)

    actors = _actors(resource, included, warn)
    # A display-only actor has no type. Only when no actor is known to be a clinician is
    # such an actor taken as the clinician: locations and patients are rarely display-only.
    practitioner = next(
        (a for a, _ in actors if a.kind in ("Practitioner", "PractitionerRole")),
        next((a for a, _ in actors if a.kind == "Unknown"), None),
    )
    location = next((a for a, _ in actors if a.kind in ("Location", "HealthcareService")), None)
    patient_statuses = [status for a, status in actors if a.kind == "Patient"]

    shown_in = location_zone(location.target if location else None) or viewer
    zone_name = shown_in.key

    def when(field: str) -> dt.datetime | None:
        raw = resource.get(field)
        if raw is None:
            return None
        parsed = parse_datetime(raw, shown_in)
        if parsed is None:
            warn(field, "not a readable dateTime", issues.BAD_VALUE)
            return None
        if lacks_timezone(raw):
            # Wall-clock time from an interface that dropped the offset: the location's
            # zone is the best guess, and it is only a guess.
            warn(field, f"time has no timezone offset; taken as {zone_name}", issues.NO_TIMEZONE)
        return parsed.astimezone(shown_in)

    start, end = when("start"), when("end")
    status = get_str(resource, "status")
    if status is None:
        warn("status", "no status", issues.MISSING)
    if start is None and status not in _NO_TIME_NEEDED and "start" not in resource:
        warn("start", "no start time", issues.MISSING)

    now_viewer = now.astimezone(viewer)
    if start is None:
        timing = "unknown"
    elif start.astimezone(viewer).date() == now_viewer.date():
        timing = "today"
    elif (end or start) < now:
        timing = "past"
    else:
        timing = "upcoming"

    needs_confirmation = (
        timing != "past"
        and status not in _SETTLED
        and (status in ("proposed", "pending") or "needs-action" in patient_statuses)
    )
    service = next(
        (t for c in get_list(resource, "serviceType") if (t := concept_text(c))), None
    ) or concept_text(next(iter(get_list(resource, "serviceCategory")), None))
    return Visit(
        appointment_id=rid,
        status=status,
        status_text=STATUS_TEXT.get(
            status or "", f"Status {status}" if status else "Status unknown"
        ),
        start=start,
        end=end,
        time_zone=zone_name,
        timing=timing,
        needs_confirmation=needs_confirmation,
        service=service,
        appointment_type=concept_text(get_dict(resource, "appointmentType")),
        description=get_str(resource, "description"),
        practitioner=practitioner.name if practitioner else None,
        practitioner_ref=practitioner.ref if practitioner else None,
        location=location.name if location else None,
        location_ref=location.ref if location else None,
        cancellation_reason=concept_text(get_dict(resource, "cancelationReason"))
        if status == "cancelled"
        else None,
        warnings=tuple(warnings),
    )
