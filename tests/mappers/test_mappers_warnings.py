"""Data problems in plain words (issue 13 §7): every DataWarning carries a sentence an
integrator can act on beside its FHIR path, and never a value from the record."""

from __future__ import annotations

import datetime as dt
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from fhir_mappers.appointment import to_visit
from fhir_mappers.coverage import to_insurance
from fhir_mappers.issues import DataWarning, plain_words, zone_words
from fhir_mappers.patient import to_contact
from fhir_mappers.validation import validation_warnings

NOW = dt.datetime(2026, 11, 30, 22, 13, tzinfo=ZoneInfo("America/Chicago"))
DENVER = {
    "resourceType": "Location",
    "id": "den",
    "name": "Denver clinic",
    "extension": [
        {"url": "http://hl7.org/fhir/StructureDefinition/timezone", "valueCode": "America/Denver"}
    ],
}


def appointment(**fields: Any) -> dict[str, Any]:
    return {
        "resourceType": "Appointment",
        "id": "a1",
        "status": "booked",
        "start": "2026-12-01T10:00:00-06:00",
        "participant": [
            {"actor": {"reference": "Patient/p1"}},
            {"actor": {"reference": "Location/den"}},
        ],
        **fields,
    }


def plain_of_visit(**fields: Any) -> list[tuple[str, str]]:
    visit = to_visit(
        appointment(**fields),
        now=NOW,
        viewer_tz="America/Chicago",
        included={"Location/den": DENVER},
    )
    return [(w.field, w.plain) for w in visit.warnings]


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        (
            {"start": "2026-12-01T10:00:00"},
            ("start", "The appointment's start time has no time zone; read as Denver time."),
        ),
        ({"start": "soon"}, ("start", "The appointment's start time could not be read.")),
        (
            {"start": "0001-01-01T00:30:00+14:00"},
            (
                "start",
                "The appointment's start time is outside the years a calendar can show "
                "(near year 1 or 9999); it is left out.",
            ),
        ),
        ({"status": None}, ("status", "The appointment's status is missing.")),
        (
            {"participant": [{"actor": {"reference": "Practitioner/x"}}]},
            (
                "participant[0].actor",
                "A participant of the appointment has no name: its reference has no display and "
                "the practitioner or location it points at was not read.",
            ),
        ),
        (
            {"participant": [{"actor": {"reference": "Practitioner x"}}]},
            (
                "participant[0].actor",
                "The appointment's participant is not a FHIR reference CareDesk can follow.",
            ),
        ),
    ],
)
def test_appointment_warnings_in_plain_words(
    fields: dict[str, Any], expected: tuple[str, str]
) -> None:
    assert expected in plain_of_visit(**fields)


@pytest.mark.parametrize(
    ("patient", "expected"),
    [
        (
            {"birthDate": "1980-07"},
            "The patient record's birth date is only partly known; the age may be off by one.",
        ),
        (
            {"birthDate": "2999-01-01"},
            "The patient record's birth date is in the future; no age is shown.",
        ),
        ({"birthDate": "July 4th"}, "The patient record's birth date could not be read."),
        ({}, "The patient record has no MRN (an identifier of type MR)."),
        ({}, "The patient record has no phone number or email."),
    ],
)
def test_patient_warnings_in_plain_words(patient: dict[str, Any], expected: str) -> None:
    contact = to_contact({"resourceType": "Patient", "id": "p1", **patient}, now=NOW)
    assert expected in [w.plain for w in contact.warnings]


@pytest.mark.parametrize(
    ("coverage", "expected"),
    [
        (
            {"period": {"start": "2027-01-01"}},
            "The coverage starts in the future; it does not cover today.",
        ),
        ({"payor": []}, "The coverage record names no payor (the insurer), which FHIR requires."),
        ({"period": {"end": "someday"}}, "The coverage record's end date could not be read."),
    ],
)
def test_coverage_warnings_in_plain_words(coverage: dict[str, Any], expected: str) -> None:
    base = {
        "resourceType": "Coverage",
        "id": "c1",
        "status": "active",
        "payor": [{"display": "Acme"}],
    }
    insurance = to_insurance([{**base, **coverage}], now=NOW)
    assert expected in [w.plain for p in insurance.policies for w in p.warnings]


@pytest.mark.parametrize(
    ("resource", "expected"),
    [
        (
            {"resourceType": "Patient", "id": "p", "telecom": [{"rank": "first"}]},
            "The patient record's element `telecom[0].rank` is not valid FHIR R4: the value "
            "should be an integer.",
        ),
        (
            {"resourceType": "Patient", "id": "p", "extension": [{"valueString": "x"}]},
            "The patient record's extension url is required by FHIR but missing.",
        ),
        (
            {
                "resourceType": "Appointment",
                "id": "a",
                "status": "booked",
                "participant": [{"status": "accepted"}],
                "start": "2026-12-01T10:00:00",
            },
            "The appointment's start time has no time zone offset, which strict FHIR requires.",
        ),
        (
            {"resourceType": "Spaceship", "id": "s"},
            "The Spaceship resource's resource type is not a FHIR R4 resource type.",
        ),
        (
            {"resourceType": "Patient", "id": "x" * 65},
            "The patient record's id is longer than FHIR's 64 characters (kept whole).",
        ),
    ],
)
def test_validation_warnings_in_plain_words(resource: dict[str, Any], expected: str) -> None:
    assert expected in [w.plain for w in validation_warnings(resource)]


def test_every_code_has_words_and_a_warning_made_without_them_gets_them() -> None:
    made = DataWarning("Encounter", "e1", "period.start", "not a readable date", "bad-value")
    assert made.plain == "The encounter's start date could not be read."
    assert (
        plain_words("Location", "(resource)", "invalid")
        == "The location record is not valid FHIR R4."
    )
    assert "has a problem" in plain_words("Patient", "x", "a-code-nobody-knows")


@pytest.mark.parametrize(
    ("zone", "words"),
    [
        ("America/Chicago", "Chicago"),
        ("America/Argentina/Buenos_Aires", "Buenos Aires"),
        ("UTC", "UTC"),
    ],
)
def test_zone_words(zone: str, words: str) -> None:
    assert zone_words(zone) == words
