"""Appointment -> Visit: what, when (in the right time zone), with whom, where, and whether
someone has to act on it."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple
from zoneinfo import ZoneInfo

from fhir_mappers import issues
from fhir_mappers.fhirutil import (
    Ref,
    ResourceIndex,
    concept_text,
    get_dict,
    get_int,
    get_list,
    get_str,
    in_zone,
    patient_key,
    read_datetime,
    reference_of,
    require_aware,
    resource_zone,
    zone,
)
from fhir_mappers.issues import DataWarning, field_words, zone_words
from fhir_mappers.names import Included, resolve, resource_name
from fhir_mappers.records import quick_init

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


@quick_init
@dataclass(frozen=True)
class Visit:
    appointment_id: str | None
    status: str | None  # the FHIR code
    status_text: str  # plain words for the UI
    start: dt.datetime | None  # in the viewer's zone
    end: dt.datetime | None  # in the viewer's zone
    time_zone: (
        str  # where the visit happens: the location's zone when it has one, else the viewer's
    )
    # past (it has ended, even earlier today) | today (later today, or going on now) |
    # upcoming (a later day) | unknown (no readable start). Days are the viewer's.
    timing: str
    is_today: bool  # starts on the viewer's calendar day (ended or not)
    tz_abbr: str | None  # the viewer zone's abbreviation at the start, e.g. CST
    # Set only when the location's clock reads differently from the viewer's: the zone
    # name, the times on that clock and its abbreviation ("2:00 PM MST at Denver clinic").
    location_tz: str | None
    location_start: dt.datetime | None
    location_end: dt.datetime | None
    location_tz_abbr: str | None
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


def _abbr(moment: dt.datetime | None) -> str | None:
    """`CST`, `MDT`: the zone's abbreviation at that moment (None for a bare offset)."""
    if moment is None:
        return None
    name = moment.tzname()
    return name if name and not name.startswith(("+", "-", "UTC+", "UTC-")) else None


# Statuses after which the visit is over once it has started, whatever `end` says.
_OVER_ONCE_STARTED = {"fulfilled", "noshow"}
_MAX_MINUTES = 7 * 24 * 60


def _ended_at(
    start: dt.datetime | None, end: dt.datetime | None, status: str | None, minutes: int | None
) -> dt.datetime | None:
    """When the visit is (or was) over: its `end`, else start + `minutesDuration`, else its
    start; a fulfilled visit or a no-show is over once it has started."""
    if start is None:
        return end
    if status in _OVER_ONCE_STARTED:
        return start
    if end is not None and end >= start:
        return end
    if minutes is not None and 0 < minutes <= _MAX_MINUTES:
        try:
            return start + dt.timedelta(minutes=minutes)
        except OverflowError:
            return start
    return start


class _Actor(NamedTuple):
    kind: str  # resource type (from the reference, the target, or a guess)
    name: str | None  # None for a Patient: the context's own patient is not named here
    ref: str | None
    target: Mapping[str, Any] | None
    status: str | None  # the participant's status


class _Resolved(NamedTuple):
    """What a reference string leads to: the same on every visit of a page."""

    ref: Ref | None  # None: not a FHIR reference
    target: Mapping[str, Any] | None  # the contained or included resource, if any
    kind: str | None  # the target's type, else the reference's
    name: str | None  # the target's own name (not the reference's display)


def _resolve_actor(
    actor: Mapping[str, Any],
    resource: Mapping[str, Any],
    included: Included,
    memo: dict[tuple[str, str], Any] | None,
) -> _Resolved:
    """Parse, look up and name the target of an actor that has a reference; with a page's
    memo, kept under ("actor", the reference as sent) for `_actors` to find next time (a
    contained `#id` belongs to its appointment and is resolved each time)."""
    sent = actor.get("reference")
    key = ("actor", sent) if memo is not None and type(sent) is str else None
    ref = reference_of(actor)
    if ref is None:
        return _NOTHING
    target = resolve(ref, included, container=resource)
    kind = get_str(target, "resourceType") or ref.type
    name = resource_name(target, included) if target is not None and kind != "Patient" else None
    found = _Resolved(ref, target, kind, name)
    if key is not None and memo is not None and not ref.contained:
        memo[key] = found
    return found


def _actors(
    resource: Mapping[str, Any],
    included: Included,
    warn: Callable[..., None],
) -> list[_Actor]:
    """Resolve each participant's actor: contained or included resource, else display.

    A page of visits names the same patient, practitioners and places again and again: with
    a ResourceIndex, each reference is parsed, looked up and named once per page.
    """
    out: list[_Actor] = []
    memo = included.memo if isinstance(included, ResourceIndex) else None
    for i, part in enumerate(get_list(resource, "participant")):
        actor = get_dict(part, "actor")
        if actor is None:
            continue
        sent = actor.get("reference")
        cached = memo.get(("actor", sent)) if memo is not None and type(sent) is str else None
        if isinstance(cached, _Resolved):
            # Seen on this page: parsed, so `sent` is a non-blank reference string.
            raw: str | None = sent
            found = cached
        else:
            raw = get_str(actor, "reference")
            found = _NOTHING if raw is None else _resolve_actor(actor, resource, included, memo)
        ref, target = found.ref, found.target
        if raw is not None and ref is None:
            warn(
                f"participant[{i}].actor",
                "reference is not a FHIR reference",
                issues.BAD_REFERENCE,
            )
        kind = found.kind or get_str(actor, "type") or "Unknown"
        key = ref.key if ref is not None and not ref.contained else None
        if kind == "Patient":
            # The context's own patient: known by reference, its name is not needed here.
            out.append(_Actor(kind, None, key, target, get_str(part, "status")))
            continue
        name = found.name or get_str(actor, "display")
        if name is None:
            warn(
                f"participant[{i}].actor",
                "actor has neither a resolvable reference nor a display",
                issues.UNRESOLVED_REFERENCE,
                "A participant of the appointment has no name: its reference has no display "
                "and the practitioner or location it points at was not read.",
            )
        elif raw is None and kind in ("Practitioner", "Location", "Unknown"):
            warn(
                f"participant[{i}].actor",
                "actor has a display but no reference",
                issues.DISPLAY_ONLY_REFERENCE,
            )
        out.append(_Actor(kind, name, key, target, get_str(part, "status")))
    return out


_NOTHING = _Resolved(None, None, None, None)
_MISSING = object()


def location_zone(location: Mapping[str, Any] | None) -> ZoneInfo | None:
    """The zone of a Location (see `fhirutil.resource_zone`, the one reading of it)."""
    return resource_zone(location)


def patient_of(appointment: object) -> str | None:
    """`Patient/<id>` of the first participant that is a patient, whatever the reference's
    form (relative, absolute, versioned); None when there is none or the shape is odd.

    The one reading of "whose appointment is this" for the board, reminders and surveys.
    """
    keys = patients_of(appointment)
    return keys[0] if keys else None


def patients_of(appointment: object) -> list[str]:
    """Every `Patient/<id>` among the participants, in order, once each (a group visit has
    several)."""
    found: list[str] = []
    for part in get_list(appointment, "participant"):
        key = patient_key(part.get("actor"))
        if key is not None and key not in found:
            found.append(key)
    return found


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
    viewer = _viewer_zone(now, viewer_tz)
    return _visit(
        resource, now=now, viewer=viewer, today=now.astimezone(viewer).date(), included=included
    )


def to_visits(
    appointments: Iterable[Mapping[str, Any]],
    *,
    now: dt.datetime,
    viewer_tz: str,
    included: Mapping[str, Mapping[str, Any]],
) -> list[Visit]:
    """`to_visit` for each of a page of appointments, in order; `now` and `viewer_tz` are
    checked, and the viewer's day worked out, once for the page."""
    viewer = _viewer_zone(now, viewer_tz)
    today = now.astimezone(viewer).date()
    return [
        _visit(resource, now=now, viewer=viewer, today=today, included=included)
        for resource in appointments
    ]


def _viewer_zone(now: dt.datetime, viewer_tz: str) -> ZoneInfo:
    require_aware(now)
    viewer = zone(viewer_tz)
    if viewer is None:
        raise ValueError("viewer_tz is not a known time zone")
    return viewer


def _visit(
    resource: Mapping[str, Any],
    *,
    now: dt.datetime,
    viewer: ZoneInfo,
    today: dt.date,
    included: Mapping[str, Mapping[str, Any]],
) -> Visit:
    """`to_visit` once `now` and the viewer's zone are known good; `today` is the viewer's."""
    warn = issues.Warnings("Appointment", resource, once=True)
    resource = warn.readable(resource)

    # A display-only actor has no type. Only when no actor is known to be a clinician is
    # such an actor taken as the clinician: locations and patients are rarely display-only.
    practitioner = location = unknown = None
    patient_statuses: list[str | None] = []
    for actor in _actors(resource, included, warn):
        kind = actor.kind
        if kind == "Patient":
            patient_statuses.append(actor.status)
        elif kind in ("Practitioner", "PractitionerRole"):
            practitioner = practitioner or actor
        elif kind in ("Location", "HealthcareService"):
            location = location or actor
        elif kind == "Unknown":
            unknown = unknown or actor
    practitioner = practitioner or unknown

    happens_in = viewer
    if location is not None and location.target is not None:
        memo = included.memo if isinstance(included, ResourceIndex) else None
        if memo is not None and location.ref is not None:
            found = memo.get(("zone", location.ref), _MISSING)
            if found is _MISSING:
                found = memo[("zone", location.ref)] = location_zone(location.target)
        else:
            found = location_zone(location.target)
        happens_in = found or viewer
    zone_name = happens_in.key

    def when(field: str) -> tuple[dt.datetime | None, dt.datetime | None]:
        """The instant in `field` on the viewer's clock and on the location's; a value
        without an offset is read in the zone the visit happens in."""
        raw = resource.get(field)
        if raw is None:
            return None, None
        parsed, assumed = read_datetime(raw, happens_in)
        if parsed is None:
            warn(field, "not a readable dateTime", issues.BAD_VALUE)
            return None, None
        if assumed:
            # Wall-clock time from an interface that dropped the offset: the location's
            # zone is the best guess, and it is only a guess.
            warn(
                field,
                f"time has no timezone offset; taken as {zone_name}",
                issues.NO_TIMEZONE,
                f"The appointment's {field_words(field)} has no time zone; read as "
                f"{zone_words(zone_name)} time.",
            )
        shown = in_zone(parsed, viewer)
        local = shown if happens_in is viewer else in_zone(parsed, happens_in)
        if shown is None or local is None:
            warn(
                field,
                "dateTime is outside the years a calendar can show",
                issues.BAD_VALUE,
                f"The appointment's {field_words(field)} is outside the years a calendar can "
                "show (near year 1 or 9999); it is left out.",
            )
            return None, None
        return shown, local

    (start, local_start), (end, local_end) = when("start"), when("end")
    status = get_str(resource, "status")
    if status is None:
        warn("status", "no status", issues.MISSING)
    if start is None and status not in _NO_TIME_NEEDED and "start" not in resource:
        warn("start", "no start time", issues.MISSING)

    # Name the location's zone only where its clock reads differently from the viewer's.
    elsewhere = (
        zone_name != viewer.key
        and start is not None
        and local_start is not None
        and start.utcoffset() != local_start.utcoffset()
    )
    over = _ended_at(start, end, status, get_int(resource, "minutesDuration"))
    is_today = start is not None and start.date() == today
    if start is None:
        timing = "unknown"
    elif (over is not None and over <= now) or status in _OVER_ONCE_STARTED:
        # A visit that ended this morning is over: timing follows its end, not its date.
        # One the EHR already calls fulfilled or a no-show is over even if its start reads
        # later than now (a clock or data-entry slip): it is never offered as upcoming.
        timing = "past"
    elif is_today:
        timing = "today"
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
        appointment_id=warn.resource_id,
        status=status,
        status_text=STATUS_TEXT.get(
            status or "", f"Status {status}" if status else "Status unknown"
        ),
        start=start,
        end=end,
        time_zone=zone_name,
        timing=timing,
        is_today=is_today,
        tz_abbr=_abbr(start),
        location_tz=zone_name if elsewhere else None,
        location_start=local_start if elsewhere else None,
        location_end=local_end if elsewhere else None,
        location_tz_abbr=_abbr(local_start) if elsewhere else None,
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
        warnings=tuple(warn.found),
    )
