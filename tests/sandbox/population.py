"""A tiny, fully known population so protocol tests can assert exact search results."""

from __future__ import annotations

import datetime as dt
from typing import Any
from zoneinfo import ZoneInfo

TZ = "America/Chicago"
MRN = "urn:oid:1.2.3.4.5"
Q_URL = "http://example.org/Questionnaire/csat"


def today() -> dt.date:
    return dt.datetime.now(ZoneInfo(TZ)).date()


def at(day: dt.date, hour: int, minute: int = 0) -> str:
    return dt.datetime(day.year, day.month, day.day, hour, minute, tzinfo=ZoneInfo(TZ)).isoformat()


def _ref(ref: str) -> dict[str, str]:
    return {"reference": ref}


def appointment(
    aid: str,
    patient: str,
    start: str,
    *,
    status: str = "booked",
    practitioner: str = "prac-clinician-lee",
    location: str = "loc-1",
) -> dict[str, Any]:
    return {
        "resourceType": "Appointment",
        "id": aid,
        "status": status,
        "start": start,
        "participant": [
            {"actor": _ref(f"Patient/{patient}"), "status": "accepted"},
            {"actor": _ref(f"Practitioner/{practitioner}"), "status": "accepted"},
            {"actor": _ref(f"Location/{location}"), "status": "accepted"},
        ],
    }


def population() -> dict[str, list[dict[str, Any]]]:
    day = today()
    patients = [
        {
            "resourceType": "Patient",
            "id": pid,
            "gender": g,
            "birthDate": b,
            "identifier": [{"system": MRN, "value": mrn}],
            "name": [{"family": family, "given": [given]}],
        }
        for pid, mrn, family, given, g, b in [
            ("pat-a", "A1", "Alpha", "Alice", "female", "1970-01-02"),
            ("pat-b", "B2", "Beta", "Bob", "male", "1980-05-06"),
            ("pat-c", "C3", "Gamma", "Carol", "female", "1990-07-08"),
        ]
    ]
    patients.append(
        {
            "resourceType": "Patient",
            "id": "pat-xss",
            "name": [{"family": "<script>alert(1)</script>", "given": ["Eve"]}],
        }
    )
    practitioners = [
        {"resourceType": "Practitioner", "id": pid, "name": [{"family": family, "given": [given]}]}
        for pid, family, given in [
            ("prac-clinician-lee", "Lee", "Dana"),
            ("prac-scheduler-ortiz", "Ortiz", "Sam"),
            ("prac-other", "Other", "Pat"),
        ]
    ]
    appts = [appointment(f"appt-a-{h}", "pat-a", at(day, h)) for h in (8, 9, 10, 11, 12, 13)]
    appts.append(
        appointment(
            "appt-a-tomorrow", "pat-a", at(day + dt.timedelta(days=1), 9), status="cancelled"
        )
    )
    appts.append(
        appointment(
            "appt-b-yesterday",
            "pat-b",
            at(day - dt.timedelta(days=1), 15),
            practitioner="prac-other",
            location="loc-2",
        )
    )
    return {
        "Patient": patients,
        "Practitioner": practitioners,
        "Location": [
            {"resourceType": "Location", "id": "loc-1", "name": "Main"},
            {"resourceType": "Location", "id": "loc-2", "name": "North"},
        ],
        "Organization": [{"resourceType": "Organization", "id": "org-1", "name": "Payer"}],
        "Appointment": appts,
        "Coverage": [
            {
                "resourceType": "Coverage",
                "id": "cov-a",
                "status": "active",
                "beneficiary": _ref("Patient/pat-a"),
                "payor": [_ref("Organization/org-1")],
            },
            {
                "resourceType": "Coverage",
                "id": "cov-b",
                "status": "cancelled",
                "beneficiary": _ref("Patient/pat-b"),
                "payor": [_ref("Organization/org-1")],
            },
        ],
        "Encounter": [
            {
                "resourceType": "Encounter",
                "id": "enc-a",
                "status": "finished",
                "class": {"code": "AMB"},
                "subject": _ref("Patient/pat-a"),
            }
        ],
        "Questionnaire": [
            {
                "resourceType": "Questionnaire",
                "id": "q1",
                "url": Q_URL,
                "version": "1.0.0",
                "status": "active",
            },
            {
                "resourceType": "Questionnaire",
                "id": "q2",
                "url": Q_URL,
                "version": "2.0.0",
                "status": "active",
            },
        ],
    }
