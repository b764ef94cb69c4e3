"""When a visit is: timing from its end (an ended visit is never upcoming), recent visits
newest first, and times in the viewer's zone with the location's beside them when its
clock differs. Time is frozen (passed as `now`) at 22:13 in Chicago, UTC-6."""

from __future__ import annotations

import datetime as dt
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from fhir_mappers.appointment import to_visit
from fhir_mappers.context import build_context

NOW = dt.datetime.fromisoformat("2026-11-30T22:13:00-06:00")
TZ_EXT = "http://hl7.org/fhir/StructureDefinition/timezone"


def location(lid: str, zone: str) -> dict[str, Any]:
    return {
        "resourceType": "Location",
        "id": lid,
        "name": f"{lid} clinic",
        "extension": [{"url": TZ_EXT, "valueCode": zone}],
    }


INCLUDED = {
    "Location/den": location("den", "America/Denver"),
    "Location/chi": location("chi", "America/Chicago"),
    "Location/wpg": location("wpg", "America/Winnipeg"),  # CST too, another name
}


def appt(
    start: Any = None,
    end: Any = None,
    *,
    status: str = "booked",
    aid: str = "a1",
    loc: str = "Location/chi",
    **fields: Any,
) -> dict[str, Any]:
    res: dict[str, Any] = {
        "resourceType": "Appointment",
        "id": aid,
        "status": status,
        "participant": [
            {"actor": {"reference": "Patient/p1"}, "status": "accepted"},
            {"actor": {"reference": loc}, "status": "accepted"},
        ],
        **fields,
    }
    if start is not None:
        res["start"] = start
    if end is not None:
        res["end"] = end
    return res


def visit(resource: dict[str, Any], viewer_tz: str = "America/Chicago") -> Any:
    return to_visit(resource, now=NOW, viewer_tz=viewer_tz, included=INCLUDED)


@pytest.mark.parametrize(
    ("case", "resource", "timing", "is_today"),
    [
        (
            "ended this morning",
            appt("2026-11-30T08:00:00-06:00", "2026-11-30T08:30:00-06:00"),
            "past",
            True,
        ),
        (
            "ended a minute ago",
            appt("2026-11-30T21:40:00-06:00", "2026-11-30T22:12:00-06:00"),
            "past",
            True,
        ),
        (
            "going on now",
            appt("2026-11-30T21:45:00-06:00", "2026-11-30T22:30:00-06:00"),
            "today",
            True,
        ),
        (
            "later tonight",
            appt("2026-11-30T23:30:00-06:00", "2026-11-30T23:50:00-06:00"),
            "today",
            True,
        ),
        ("tomorrow just after midnight", appt("2026-12-01T00:05:00-06:00"), "upcoming", False),
        ("04:30Z tomorrow is 22:30 here today", appt("2026-12-01T04:30:00Z"), "today", True),
        (
            "23:00 in Denver on the 30th is midnight here: tomorrow",
            appt("2026-11-30T23:00:00-07:00", loc="Location/den"),
            "upcoming",
            False,
        ),
        (
            "fulfilled early: over whatever its end says",
            appt("2026-11-30T21:00:00-06:00", "2026-11-30T23:00:00-06:00", status="fulfilled"),
            "past",
            True,
        ),
        (
            "fulfilled though its start reads later tonight: over, never upcoming",
            appt("2026-11-30T23:30:00-06:00", status="fulfilled"),
            "past",
            True,
        ),
        (
            "a no-show tonight is over",
            appt("2026-11-30T22:00:00-06:00", status="noshow"),
            "past",
            True,
        ),
        (
            "no end, a duration that runs on",
            appt("2026-11-30T22:00:00-06:00", minutesDuration=30),
            "today",
            True,
        ),
        ("no end, no duration, started", appt("2026-11-30T22:00:00-06:00"), "past", True),
        ("no end, not started", appt("2026-11-30T22:30:00-06:00"), "today", True),
        (
            "an end before the start is ignored",
            appt("2026-11-30T22:30:00-06:00", "2026-11-30T08:00:00-06:00"),
            "today",
            True,
        ),
        (
            "yesterday",
            appt("2026-11-29T10:00:00-06:00", "2026-11-29T10:30:00-06:00"),
            "past",
            False,
        ),
        ("a partial date", appt("2026-11"), "past", False),
        ("next year", appt("2027-01-04T09:00:00-06:00"), "upcoming", False),
        ("no start", appt(None), "unknown", False),
        ("garbage start", appt("next tuesday"), "unknown", False),
        ("a start of the wrong type", appt(20261130), "unknown", False),
        ("year 1 at +14:00", appt("0001-01-01T00:30:00+14:00"), "unknown", False),
        ("year 9999 at -12:00", appt("9999-12-31T23:30:00-12:00"), "unknown", False),
    ],
)
def test_timing_follows_the_end_of_the_visit(
    case: str, resource: dict[str, Any], timing: str, is_today: bool
) -> None:
    found = visit(resource)
    assert (found.timing, found.is_today) == (timing, is_today), case


@pytest.mark.parametrize("start", ["0001-01-01T00:30:00+14:00", "9999-12-31T23:30:00-12:00"])
def test_a_time_python_cannot_show_is_a_warning_not_an_error(start: str) -> None:
    found = visit(appt(start, start))
    assert found.start is None and found.end is None
    assert [(w.field, w.code) for w in found.warnings] == [
        ("start", "bad-value"),
        ("end", "bad-value"),
    ]


@pytest.mark.parametrize(
    ("viewer", "start", "loc", "shown", "abbr", "location_tz", "location_start", "location_abbr"),
    [
        (
            "America/Chicago",
            "2026-11-30T15:00:00-06:00",
            "Location/den",
            "2026-11-30T15:00:00-06:00",
            "CST",
            "America/Denver",
            "2026-11-30T14:00:00-07:00",
            "MST",
        ),
        (
            "America/Denver",
            "2026-11-30T15:00:00-06:00",
            "Location/chi",
            "2026-11-30T14:00:00-07:00",
            "MST",
            "America/Chicago",
            "2026-11-30T15:00:00-06:00",
            "CST",
        ),
        (
            "America/Chicago",
            "2026-07-01T15:00:00-05:00",
            "Location/den",
            "2026-07-01T15:00:00-05:00",
            "CDT",
            "America/Denver",
            "2026-07-01T14:00:00-06:00",
            "MDT",
        ),
        # Same clock under another name: nothing to add.
        (
            "America/Chicago",
            "2026-11-30T15:00:00-06:00",
            "Location/wpg",
            "2026-11-30T15:00:00-06:00",
            "CST",
            None,
            None,
            None,
        ),
        (
            "America/Chicago",
            "2026-11-30T15:00:00-06:00",
            "Location/chi",
            "2026-11-30T15:00:00-06:00",
            "CST",
            None,
            None,
            None,
        ),
        # A location without a zone: the viewer's.
        (
            "America/Chicago",
            "2026-11-30T21:00:00Z",
            "Location/none",
            "2026-11-30T15:00:00-06:00",
            "CST",
            None,
            None,
            None,
        ),
    ],
)
def test_times_are_the_viewers_with_the_locations_named_when_its_clock_differs(
    viewer: str,
    start: str,
    loc: str,
    shown: str,
    abbr: str,
    location_tz: str | None,
    location_start: str | None,
    location_abbr: str | None,
) -> None:
    found = visit(appt(start, loc=loc), viewer_tz=viewer)
    assert found.start is not None and found.start.isoformat() == shown
    assert (found.tz_abbr, found.location_tz, found.location_tz_abbr) == (
        abbr,
        location_tz,
        location_abbr,
    )
    assert (found.location_start.isoformat() if found.location_start else None) == location_start


def test_a_time_without_offset_is_read_on_the_locations_clock_and_shown_on_the_viewers() -> None:
    found = visit(appt("2026-11-30T14:00:00", loc="Location/den"))
    assert found.start is not None and found.start.isoformat() == "2026-11-30T15:00:00-06:00"
    assert found.location_start is not None
    assert found.location_start.isoformat() == "2026-11-30T14:00:00-07:00"


def test_recent_visits_are_newest_first_and_upcoming_soonest_first() -> None:
    visits = [
        appt("2026-10-01T09:00:00-05:00", aid="october", status="fulfilled"),
        appt("2026-11-30T08:00:00-06:00", "2026-11-30T08:30:00-06:00", aid="this-morning"),
        appt("2026-12-15T09:00:00-06:00", aid="december"),
        appt("2026-11-29T09:00:00-06:00", aid="yesterday", status="fulfilled"),
        appt("2026-11-30T23:00:00-06:00", aid="tonight"),
        appt("2025-06-01T09:00:00-05:00", aid="last-year", status="noshow"),
        appt("2026-11-15T09:00:00-06:00", aid="error", status="entered-in-error"),
        appt(None, aid="no-time", status="proposed"),
    ]
    context = build_context(
        patient=None,
        appointments=visits,
        included=list(INCLUDED.values()),
        coverages=[],
        now=NOW,
        viewer_tz="America/Chicago",
        validate=False,
    )
    assert [v.appointment_id for v in context.recent] == [
        "this-morning",
        "yesterday",
        "october",
        "last-year",
    ]
    assert [v.appointment_id for v in context.upcoming] == ["tonight", "december"]
    assert [v.appointment_id for v in context.visits][-1] == "no-time"
    assert len(context.visits) == len(visits)
    data = context.to_json()
    assert [v["appointment_id"] for v in data["recent"]][:1] == ["this-morning"]
    assert "visit-today" in context.flags  # tonight's, not this morning's


def test_a_visit_that_ended_this_morning_is_no_longer_unconfirmed() -> None:
    pending = appt("2026-11-30T08:00:00-06:00", "2026-11-30T08:30:00-06:00", status="pending")
    assert visit(pending).needs_confirmation is False
    later = appt("2026-11-30T23:00:00-06:00", status="pending")
    assert visit(later).needs_confirmation is True


def test_now_is_taken_in_any_zone() -> None:
    elsewhere = NOW.astimezone(ZoneInfo("Asia/Tokyo"))
    found = to_visit(
        appt("2026-11-30T23:30:00-06:00"),
        now=elsewhere,
        viewer_tz="America/Chicago",
        included=INCLUDED,
    )
    assert found.timing == "today"
