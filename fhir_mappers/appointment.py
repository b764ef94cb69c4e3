"""Appointment -> Visit: what, when (in the right time zone), with whom, where, and whether
someone has to act on it."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from zoneinfo import ZoneInfo

from fhir_mappers import issues
from fhir_mappers.fhirutil import (
    Ref,
    ResourceIndex,
    concept_text,
    get_int,
    get_list,
    get_str,
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


# What a reference string leads to, the same on every visit of a page: (the parsed
# reference, None when it is not a FHIR reference; the contained or included target, if
# any; the target's type, else the reference's; the target's own name, not the
# reference's display; `Type/id` of a reference that is not contained). A plain tuple:
# each participant of each visit unpacks one.
_Resolved = tuple[Ref | None, Mapping[str, Any] | None, str | None, str | None, str | None]
_NOTHING: _Resolved = (None, None, None, None, None)

# The practitioner or the location of a visit: (name, `Type/id` of a reference that is not
# contained, the target resource when it was found).
_Role = tuple[str | None, str | None, Mapping[str, Any] | None]


def _resolve_actor(
    actor: Mapping[str, Any],
    resource: Mapping[str, Any],
    included: Included,
    memo: dict[tuple[str, str], Any] | None,
) -> _Resolved:
    """Parse, look up and name the target of an actor that has a reference; with a page's
    memo, kept under ("actor", the reference as sent) for `_cast` to find next time (a
    contained `#id` belongs to its appointment and is resolved each time)."""
    sent = actor.get("reference")
    ref = reference_of(actor)
    if ref is None:
        return _NOTHING
    target = resolve(ref, included, container=resource)
    kind = get_str(target, "resourceType") or ref.type
    name = resource_name(target, included) if target is not None and kind != "Patient" else None
    if ref.contained:
        return ref, target, kind, name, None
    found = ref, target, kind, name, ref.key
    if memo is not None and type(sent) is str:
        memo["actor", sent] = found
    return found


def _cast(
    resource: Mapping[str, Any], included: Included, warn: issues.Warnings
) -> tuple[_Role | None, _Role | None, bool]:
    """Who and where, in one pass over the participants: the practitioner, the location,
    and whether a patient participant still has to answer (`needs-action`).

    Each actor is its contained or included resource, else its display. A display-only
    actor has no type: only when no actor is known to be a clinician is such an actor
    taken as the clinician (locations and patients are rarely display-only). The first
    actor of each kind counts. A page of visits names the same patient, practitioners and
    places again and again: with a ResourceIndex, each reference is parsed, looked up and
    named once per page.
    """
    memo = included.memo if isinstance(included, ResourceIndex) else None
    practitioner: _Role | None = None
    location: _Role | None = None
    unknown: _Role | None = None
    needs_action = False
    for i, part in enumerate(get_list(resource, "participant")):
        # Each `.get` in a `type(x) is dict` branch of its own: see fhirutil's getters.
        actor = part.get("actor") if type(part) is dict else part.get("actor")
        if type(actor) is dict:
            sent = actor.get("reference")
        elif isinstance(actor, Mapping):
            sent = actor.get("reference")
        else:
            continue
        found = memo.get(("actor", sent)) if memo is not None and type(sent) is str else None
        if found is not None:
            # Seen on this page: parsed, so `sent` is a non-blank reference string.
            raw: str | None = sent
        else:
            raw = get_str(actor, "reference")
            found = _NOTHING if raw is None else _resolve_actor(actor, resource, included, memo)
        ref, target, kind, name, key = found
        if raw is not None and ref is None:
            warn(
                f"participant[{i}].actor",
                "reference is not a FHIR reference",
                issues.BAD_REFERENCE,
            )
        kind = kind or get_str(actor, "type") or "Unknown"
        if kind == "Patient":
            # The context's own patient: known by reference, its name is not needed here.
            if not needs_action:
                status = part.get("status")
                needs_action = isinstance(status, str) and status.strip() == "needs-action"
            continue
        name = name or get_str(actor, "display")
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
        if kind in ("Practitioner", "PractitionerRole"):
            if practitioner is None:
                practitioner = (name, key, target)
        elif kind in ("Location", "HealthcareService"):
            if location is None:
                location = (name, key, target)
        elif kind == "Unknown" and unknown is None:
            unknown = (name, key, target)
    return practitioner or unknown, location, needs_action


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
    [visit] = to_visits((resource,), now=now, viewer_tz=viewer_tz, included=included)
    return visit


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
    return read_visits(
        appointments, now=now, viewer=viewer, today=now.astimezone(viewer).date(), included=included
    )


def read_visits(
    appointments: Iterable[Mapping[str, Any]],
    *,
    now: dt.datetime,
    viewer: ZoneInfo,
    today: dt.date,
    included: Mapping[str, Mapping[str, Any]],
) -> list[Visit]:
    """`to_visits` for a caller that has checked `now` (aware) and the viewer's zone
    already, and knows the viewer's day (`today`)."""
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
    """`to_visit` once `now` and the viewer's zone are known good; `today` is the viewer's.

    Read in one pass, without a call per field where the JSON has the usual shape: a
    page maps every appointment of a patient or of a day (issue 16 §2).
    """
    warn = issues.Warnings("Appointment", resource, once=True)
    resource = warn.readable(resource)
    get = resource.get

    clinician, place, needs_action = _cast(resource, included, warn)

    happens_in = viewer
    if place is not None and place[2] is not None:
        memo = included.memo if isinstance(included, ResourceIndex) else None
        if memo is not None and place[1] is not None:
            found = memo.get(("zone", place[1]), _MISSING)
            if found is _MISSING:
                found = memo[("zone", place[1])] = location_zone(place[2])
        else:
            found = location_zone(place[2])
        happens_in = found or viewer
    time_zone = happens_in.key

    start = local_start = end = local_end = None
    if (raw := get("start")) is not None:
        start, local_start = _when(raw, "start", viewer, happens_in, warn)
    if (raw := get("end")) is not None:
        end, local_end = _when(raw, "end", viewer, happens_in, warn)
    status = get("status")
    status = (status.strip() or None) if isinstance(status, str) else None
    if status is None:
        warn("status", "no status", issues.MISSING)
    if start is None and status not in _NO_TIME_NEEDED and "start" not in resource:
        warn("start", "no start time", issues.MISSING)

    is_today = start is not None and start.date() == today
    if start is None:
        timing = "unknown"
    elif status in _OVER_ONCE_STARTED:
        # One the EHR already calls fulfilled or a no-show is over even if its start reads
        # later than now (a clock or data-entry slip): it is never offered as upcoming.
        timing = "past"
    else:
        # A visit that ended this morning is over: timing follows its end, not its date.
        over = end
        if over is None or over < start:  # no usable end: the duration's, else the start
            over = _ended_at(start, None, status, get_int(resource, "minutesDuration")) or start
        if over <= now:
            timing = "past"
        elif is_today:
            timing = "today"
        else:
            timing = "upcoming"
    needs_confirmation = (
        timing != "past"
        and status not in _SETTLED
        and (status in ("proposed", "pending") or needs_action)
    )

    # Name the location's zone only where its clock reads differently from the viewer's.
    location_tz = location_tz_abbr = location_start = location_end = None
    if (
        time_zone != viewer.key
        and start is not None
        and local_start is not None
        and start.utcoffset() != local_start.utcoffset()
    ):
        location_tz, location_tz_abbr = time_zone, _abbr(local_start)
        location_start, location_end = local_start, local_end

    service = None
    for concept in get_list(resource, "serviceType"):
        service = concept_text(concept)
        if service is not None:
            break
    else:
        categories = get_list(resource, "serviceCategory")
        service = concept_text(categories[0]) if categories else None
    description = get("description")
    description = (description.strip() or None) if isinstance(description, str) else None
    practitioner, practitioner_ref = (clinician[0], clinician[1]) if clinician else (None, None)
    location, location_ref = (place[0], place[1]) if place else (None, None)
    cancellation_reason = concept_text(get("cancelationReason")) if status == "cancelled" else None
    appointment_id = warn.resource_id
    status_text = (STATUS_TEXT.get(status) or f"Status {status}") if status else "Status unknown"
    tz_abbr = _abbr(start)
    appointment_type = concept_text(get("appointmentType"))
    warnings = tuple(warn.found)
    # Positional, each argument the local of its field's name (a test checks the order):
    # keyword arguments cost a microsecond more per record, on every visit of a page.
    return Visit(
        appointment_id,
        status,
        status_text,
        start,
        end,
        time_zone,
        timing,
        is_today,
        tz_abbr,
        location_tz,
        location_start,
        location_end,
        location_tz_abbr,
        needs_confirmation,
        service,
        appointment_type,
        description,
        practitioner,
        practitioner_ref,
        location,
        location_ref,
        cancellation_reason,
        warnings,
    )


def _when(
    raw: object, field: str, viewer: ZoneInfo, happens_in: ZoneInfo, warn: issues.Warnings
) -> tuple[dt.datetime | None, dt.datetime | None]:
    """The instant in `field` on the viewer's clock and on the location's; a value
    without an offset is read in the zone the visit happens in."""
    parsed, assumed = read_datetime(raw, happens_in)
    if parsed is None:
        warn(field, "not a readable dateTime", issues.BAD_VALUE)
        return None, None
    if assumed:
        # Wall-clock time from an interface that dropped the offset: the location's
        # zone is the best guess, and it is only a guess.
        zone_name = happens_in.key
        warn(
            field,
            f"time has no timezone offset; taken as {zone_name}",
            issues.NO_TIMEZONE,
            f"The appointment's {field_words(field)} has no time zone; read as "
            f"{zone_words(zone_name)} time.",
        )
    try:
        shown = parsed.astimezone(viewer)
        local = shown if happens_in is viewer else parsed.astimezone(happens_in)
    except (OverflowError, ValueError):
        # `0001-01-01T00:30:00+14:00` is a valid FHIR instant whose UTC time is in year
        # 0, which Python cannot represent (see `fhirutil.in_zone`).
        warn(
            field,
            "dateTime is outside the years a calendar can show",
            issues.BAD_VALUE,
            f"The appointment's {field_words(field)} is outside the years a calendar can "
            "show (near year 1 or 9999); it is left out.",
        )
        return None, None
    return shown, local
