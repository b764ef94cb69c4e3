"""fhir_mappers.referral: which appointment schedules a referral (table-driven)."""

from __future__ import annotations

import datetime as dt
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from fhir_mappers.referral import ReferralTarget, booked_at, scheduling_of

CHICAGO = ZoneInfo("America/Chicago")
MADE = dt.datetime(2026, 11, 20, 9, 0, tzinfo=CHICAGO)
TARGET = ReferralTarget(
    patient="Patient/p1",
    made_at=MADE,
    service_request="ServiceRequest/sr1",
    practitioner="Practitioner/okafor",
    specialty="Cardiology",
)


def appt(aid: str = "a1", **fields: Any) -> dict[str, Any]:
    resource: dict[str, Any] = {
        "resourceType": "Appointment",
        "id": aid,
        "status": "booked",
        "start": "2026-12-24T10:00:00-06:00",
        "participant": [
            {"actor": {"reference": "Patient/p1"}},
            {"actor": {"reference": "Practitioner/okafor"}},
        ],
    }
    resource.update(fields)
    return resource


@pytest.mark.parametrize(
    ("appointments", "expected"),
    [
        # Booked from the order: scheduled whatever its booking time or participants.
        (
            [
                appt(
                    basedOn=[{"reference": "ServiceRequest/sr1"}],
                    participant=[
                        {"actor": {"reference": "Patient/p1"}},
                        {"actor": {"reference": "Practitioner/someone-else"}},
                    ],
                )
            ],
            ("Appointment/a1", "based-on"),
        ),
        (
            [appt(basedOn=[{"reference": "https://ehr.example/fhir/ServiceRequest/sr1"}])],
            ("Appointment/a1", "based-on"),
        ),
        # Booked after the referral with the practitioner (created, or lastUpdated).
        ([appt(created="2026-11-21T08:00:00-06:00")], ("Appointment/a1", "booked-after")),
        ([appt(meta={"lastUpdated": "2026-11-20T15:30:00Z"})], ("Appointment/a1", "booked-after")),
        # Booked before it: the visit's date after the referral does not count.
        ([appt(created="2026-11-01T08:00:00-06:00")], None),
        # No booking time at all: it cannot be said to come after.
        ([appt()], None),
        # A created later than the server's own last update is not believed.
        (
            [appt(created="2026-12-05T08:00:00-06:00", meta={"lastUpdated": "2026-11-10T00:00Z"})],
            None,
        ),
        # Not going ahead, another patient, another practitioner.
        ([appt(status="cancelled", created="2026-11-21T08:00:00-06:00")], None),
        ([appt(status="proposed", basedOn=[{"reference": "ServiceRequest/sr1"}])], None),
        (
            [
                appt(
                    created="2026-11-21T08:00:00-06:00",
                    participant=[
                        {"actor": {"reference": "Patient/p2"}},
                        {"actor": {"reference": "Practitioner/okafor"}},
                    ],
                )
            ],
            None,
        ),
        (
            [
                appt(
                    created="2026-11-21T08:00:00-06:00",
                    participant=[
                        {"actor": {"reference": "Patient/p1"}},
                        {"actor": {"reference": "Practitioner/lee"}},
                    ],
                )
            ],
            None,
        ),
        # The referred service, by specialty or service type words.
        (
            [
                appt(
                    created="2026-11-21T08:00:00-06:00",
                    participant=[
                        {"actor": {"reference": "Patient/p1"}},
                    ],
                    serviceType=[{"coding": [{"display": "Cardiology consult"}]}],
                )
            ],
            ("Appointment/a1", "booked-after"),
        ),
        # basedOn wins over an earlier-listed booked-after match; the earliest booking
        # wins among booked-after ones.
        (
            [
                appt("a1", created="2026-11-21T08:00:00-06:00"),
                appt("a2", basedOn=[{"reference": "ServiceRequest/sr1"}]),
            ],
            ("Appointment/a2", "based-on"),
        ),
        (
            [
                appt("a1", created="2026-11-25T08:00:00-06:00"),
                appt("a2", created="2026-11-22T08:00:00-06:00"),
            ],
            ("Appointment/a2", "booked-after"),
        ),
        # Whatever else a search returns is skipped, never an error.
        ([{"resourceType": "OperationOutcome"}, "junk", None, appt(id=None)], None),
    ],
)
def test_scheduling_of(appointments: list[Any], expected: tuple[str, str] | None) -> None:
    found = scheduling_of(appointments, TARGET, default_tz=CHICAGO)
    assert (None if found is None else (found.appointment, found.how)) == expected


def test_without_a_written_service_request_only_booked_after_counts() -> None:
    target = ReferralTarget(patient="Patient/p1", made_at=MADE, practitioner="Practitioner/okafor")
    based = appt(basedOn=[{"reference": "ServiceRequest/sr1"}])
    assert scheduling_of([based], target, default_tz=CHICAGO) is None


def test_a_booking_time_without_offset_is_read_in_the_clinic_zone() -> None:
    # No offset: 08:30 at the clinic, half an hour before the referral (not 08:30 UTC).
    assert booked_at(appt(created="2026-11-20T08:30:00"), CHICAGO) == dt.datetime(
        2026, 11, 20, 8, 30, tzinfo=CHICAGO
    )
    assert scheduling_of([appt(created="2026-11-20T08:30:00")], TARGET, default_tz=CHICAGO) is None
    assert scheduling_of([appt(created="2026-11-20T09:30:00")], TARGET, default_tz=CHICAGO)


def test_a_naive_referral_time_is_refused() -> None:
    naive = ReferralTarget(patient="Patient/p1", made_at=dt.datetime(2026, 11, 20, 9, 0))
    with pytest.raises(ValueError, match="timezone-aware"):
        scheduling_of([], naive, default_tz=CHICAGO)
