"""Appointment -> Visit."""

from __future__ import annotations

import datetime as dt
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from fhir_mappers.appointment import to_visit

CHI = ZoneInfo("America/Chicago")
NOW = dt.datetime(2026, 11, 27, 9, 30, tzinfo=CHI)
TZ_EXT = "http://hl7.org/fhir/StructureDefinition/timezone"
INCLUDED: dict[str, dict[str, Any]] = {
    "Practitioner/lee": {
        "resourceType": "Practitioner",
        "id": "lee",
        "name": [{"family": "Lee", "given": ["Ana"], "prefix": ["Dr."]}],
    },
    "Location/den": {
        "resourceType": "Location",
        "id": "den",
        "name": "Denver clinic",
        "extension": [{"url": TZ_EXT, "valueCode": "America/Denver"}],
    },
    "Location/chi": {
        "resourceType": "Location",
        "id": "chi",
        "name": "Chicago clinic",
        "extension": [{"url": TZ_EXT, "valueCode": "America/Chicago"}],
    },
    "Location/nozone": {
        "resourceType": "Location",
        "id": "nozone",
        "name": "Somewhere",
        "extension": [{"url": TZ_EXT, "valueCode": "Not/AZone"}],
    },
    "PractitionerRole/r1": {
        "resourceType": "PractitionerRole",
        "id": "r1",
        "practitioner": {"reference": "Practitioner/lee"},
    },
}


def appt(
    start: str | None = "2026-11-27T11:00:00-06:00",
    *,
    status: str = "booked",
    location: str = "Location/chi",
    patient_status: str = "accepted",
    **fields: Any,
) -> dict[str, Any]:
    res: dict[str, Any] = {
        "resourceType": "Appointment",
        "id": "a1",
        "status": status,
        "participant": [
            {"actor": {"reference": "Patient/p1", "display": "Pat"}, "status": patient_status},
            {
                "actor": {"reference": "Practitioner/lee", "display": "Lee (display)"},
                "status": "accepted",
            },
            {"actor": {"reference": location}, "status": "accepted"},
        ],
    }
    if start is not None:
        res["start"] = start
        res["end"] = start.replace("T11:00", "T11:30") if "T11:00" in start else start
    res.update(fields)
    return res


def visit(
    resource: dict[str, Any], viewer_tz: str = "America/Chicago", now: dt.datetime = NOW
) -> Any:
    return to_visit(resource, now=now, viewer_tz=viewer_tz, included=INCLUDED)


def codes(v: Any) -> list[tuple[str, str]]:
    return [(w.field, w.code) for w in v.warnings]


@pytest.mark.parametrize(
    ("start", "timing"),
    [
        ("2026-11-27T08:00:00-06:00", "past"),  # ended this morning: over, not upcoming
        ("2026-11-27T09:30:00-06:00", "past"),  # starts (and ends) right now
        ("2026-11-27T23:30:00-06:00", "today"),
        ("2026-11-28T00:15:00-06:00", "upcoming"),
        ("2026-11-26T23:59:00-06:00", "past"),
        # 04:00Z on the 28th is 22:00 on the 27th in Chicago: today for the viewer
        ("2026-11-28T04:00:00Z", "today"),
        ("2026-12-01T10:00:00-06:00", "upcoming"),
        ("2025-01-01T10:00:00-06:00", "past"),
        (None, "unknown"),
        ("next tuesday", "unknown"),
    ],
)
def test_timing_is_relative_to_the_viewers_day(start: str | None, timing: str) -> None:
    assert visit(appt(start)).timing == timing


def test_times_are_in_the_viewers_zone_with_the_locations_beside_them() -> None:
    v = visit(appt("2026-11-27T11:00:00-06:00", location="Location/den"))
    assert v.time_zone == "America/Denver"
    assert v.start is not None and v.start.isoformat() == "2026-11-27T11:00:00-06:00"
    assert (v.tz_abbr, v.location_tz, v.location_tz_abbr) == ("CST", "America/Denver", "MST")
    assert v.location_start is not None
    assert v.location_start.isoformat() == "2026-11-27T10:00:00-07:00"
    assert v.location == "Denver clinic" and v.location_ref == "Location/den"


def test_times_fall_back_to_the_viewers_zone() -> None:
    for location in ("Location/nozone", "Location/not-included"):
        v = visit(appt("2026-11-27T17:00:00Z", location=location), viewer_tz="America/New_York")
        assert v.time_zone == "America/New_York"
        assert v.start is not None and v.start.isoformat() == "2026-11-27T12:00:00-05:00"


def test_start_without_offset_is_location_wall_clock_with_a_warning() -> None:
    v = visit(appt("2026-11-27T11:00:00", location="Location/den"))
    assert v.location_start is not None
    assert v.location_start.isoformat() == "2026-11-27T11:00:00-07:00"
    assert v.start is not None and v.start.isoformat() == "2026-11-27T12:00:00-06:00"
    assert ("start", "no-timezone") in codes(v) and ("end", "no-timezone") in codes(v)
    assert "America/Denver" in v.warnings[0].message


@pytest.mark.parametrize(
    ("status", "patient_status", "start", "needs"),
    [
        ("pending", "needs-action", "2026-11-27T11:00:00-06:00", True),
        ("proposed", "needs-action", "2026-12-02T11:00:00-06:00", True),
        ("proposed", "accepted", None, True),  # a proposal with no time yet
        ("booked", "needs-action", "2026-11-30T11:00:00-06:00", True),
        ("booked", "accepted", "2026-11-30T11:00:00-06:00", False),
        ("booked", "tentative", "2026-11-30T11:00:00-06:00", False),
        ("pending", "needs-action", "2026-11-20T11:00:00-06:00", False),  # past: too late
        ("cancelled", "needs-action", "2026-11-30T11:00:00-06:00", False),
        ("arrived", "needs-action", "2026-11-27T09:00:00-06:00", False),
    ],
)
def test_needs_confirmation(
    status: str, patient_status: str, start: str | None, needs: bool
) -> None:
    assert (
        visit(appt(start, status=status, patient_status=patient_status)).needs_confirmation is needs
    )


@pytest.mark.parametrize(
    ("status", "text"),
    [
        ("booked", "Booked"),
        ("fulfilled", "Completed"),
        ("noshow", "No-show"),
        ("pending", "Waiting for confirmation"),
        ("cancelled", "Cancelled"),
        ("checked-in", "Checked in"),
        ("made-up", "Status made-up"),
    ],
)
def test_status_in_plain_words(status: str, text: str) -> None:
    assert visit(appt(status=status)).status_text == text


def test_missing_status_and_start_are_warned() -> None:
    res = appt(None)
    del res["status"]
    v = visit(res)
    assert v.status_text == "Status unknown"
    assert codes(v) == [("status", "missing"), ("start", "missing")]


def _with_practitioner(actor: dict[str, Any], **fields: Any) -> Any:
    res = appt(**fields)
    res["participant"][1]["actor"] = actor
    return visit(res)


@pytest.mark.parametrize(
    ("actor", "extra", "name", "ref", "warning"),
    [
        (
            {"reference": "Practitioner/lee", "display": "stale"},
            {},
            "Dr. Ana Lee",
            "Practitioner/lee",
            None,
        ),
        (
            {"reference": "https://ehr/fhir/Practitioner/lee"},
            {},
            "Dr. Ana Lee",
            "Practitioner/lee",
            None,
        ),
        ({"reference": "Practitioner/lee/_history/7"}, {}, "Dr. Ana Lee", "Practitioner/lee", None),
        (
            {"reference": "Practitioner/gone", "display": "Dr. Gone"},
            {},
            "Dr. Gone",
            "Practitioner/gone",
            None,
        ),
        ({"reference": "PractitionerRole/r1"}, {}, "Dr. Ana Lee", "PractitionerRole/r1", None),
        (
            {"reference": "#c1"},
            {
                "contained": [
                    {
                        "resourceType": "Practitioner",
                        "id": "c1",
                        "name": [{"text": "Dr. Contained"}],
                    }
                ]
            },
            "Dr. Contained",
            None,
            None,
        ),
        ({"display": "Outside clinic"}, {}, "Outside clinic", None, "display-only-reference"),
        ({"reference": "Practitioner/gone"}, {}, None, "Practitioner/gone", "unresolved-reference"),
        ({"reference": "not a ref", "display": "Dr. Typo"}, {}, "Dr. Typo", None, "bad-reference"),
    ],
)
def test_practitioner_is_resolved_from_includes_contained_or_display(
    actor: dict[str, Any],
    extra: dict[str, Any],
    name: str | None,
    ref: str | None,
    warning: str | None,
) -> None:
    v = _with_practitioner(actor, **extra)
    assert (v.practitioner, v.practitioner_ref) == (name, ref)
    assert [c for _, c in codes(v)] == ([warning] if warning else [])


def test_service_type_cancellation_reason_and_type() -> None:
    v = visit(
        appt(
            status="cancelled",
            serviceType=[{"coding": [{"code": "x", "display": "Flu shot"}]}],
            appointmentType={"coding": [{"code": "FOLLOWUP"}]},
            cancelationReason={"text": "Patient cancelled"},
        )
    )
    assert (v.service, v.appointment_type, v.cancellation_reason) == (
        "Flu shot",
        "FOLLOWUP",
        "Patient cancelled",
    )


def test_unknown_viewer_zone_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="viewer_tz"):
        visit(appt(), viewer_tz="Mars/Olympus")
