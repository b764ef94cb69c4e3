"""One flag vocabulary for the board and the sidebar (fhir_mappers.flags): the same words,
the same "needs a call", the same patient flags from the same data."""

from __future__ import annotations

import datetime as dt
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from fhir_mappers import flags
from fhir_mappers.board import board_rows, coverages_by_patient, sort_by_flags
from fhir_mappers.context import build_context

NOW = dt.datetime(2026, 11, 30, 9, 30, tzinfo=ZoneInfo("America/Chicago"))
RESTRICTION = "https://caredesk.example/fhir/StructureDefinition/contact-restriction"


def appointment(
    aid: str = "a1", pid: str = "p1", status: str = "booked", hour: int = 14
) -> dict[str, Any]:
    return {
        "resourceType": "Appointment",
        "id": aid,
        "status": status,
        "start": f"2026-11-30T{hour:02d}:00:00-06:00",
        "end": f"2026-11-30T{hour:02d}:30:00-06:00",
        "participant": [{"actor": {"reference": f"Patient/{pid}"}, "status": "accepted"}],
    }


def patient(pid: str = "p1", **fields: Any) -> dict[str, Any]:
    base = {
        "resourceType": "Patient",
        "id": pid,
        "name": [{"given": ["Ana"], "family": "Diaz"}],
        "telecom": [{"system": "phone", "use": "mobile", "value": "+1 312 555 0100"}],
    }
    return base | fields


def coverage(pid: str = "p1", end: str = "2027-12-31", status: str = "active") -> dict[str, Any]:
    return {
        "resourceType": "Coverage",
        "id": f"cov-{pid}",
        "status": status,
        "beneficiary": {"reference": f"Patient/{pid}"},
        "payor": [{"display": "Acme Health"}],
        "period": {"start": "2026-01-01", "end": end},
    }


def board(
    appts: list[dict[str, Any]],
    patients: list[dict[str, Any]],
    coverages: Any,
    **kwargs: Any,
) -> list[Any]:
    args: dict[str, Any] = {
        "appointments": appts,
        "included": {},
        "patients": {f"Patient/{p['id']}": p for p in patients},
        "coverages": coverages,
        "open_ticket_patients": frozenset(),
        "failed_reminder_appointments": frozenset(),
        "now": NOW,
        "viewer_tz": "America/Chicago",
    }
    return board_rows(**(args | kwargs))


def test_needs_a_call_is_exactly_the_documented_list() -> None:
    assert flags.NEEDS_CALL == {
        "unconfirmed",
        "coverage-expired",
        "coverage-expiring",
        "coverage-unknown",
        "unreachable",
        "no-show",
        "reminder-failed",
    }
    assert len(set(flags.ORDER)) == len(flags.ORDER)
    assert all(f.text and f.text[0].isupper() for f in flags.FLAGS)


# What belongs to the patient: the board row and the sidebar must say the same.
PATIENT_CASES = [
    ("clean", patient(), [coverage()], ()),
    ("no coverage on file", patient(), [], ("no-coverage",)),
    ("coverage refused", patient(), None, ("coverage-unknown",)),
    ("expired", patient(), [coverage(end="2026-10-31")], ("coverage-expired",)),
    ("expiring", patient(), [coverage(end="2026-12-15")], ("coverage-expiring",)),
    ("cancelled policy", patient(), [coverage(status="cancelled")], ("coverage-cancelled",)),
    (
        "no phone",
        patient(telecom=[{"system": "email", "value": "a@x.org"}]),
        [coverage()],
        ("unreachable",),
    ),
    (
        "do not text",
        patient(extension=[{"url": RESTRICTION, "valueCode": "no-sms"}]),
        [coverage()],
        ("do-not-text",),
    ),
    (
        "no contact at all",
        patient(extension=[{"url": RESTRICTION, "valueCoding": {"code": "no-contact"}}]),
        [coverage()],
        ("unreachable", "do-not-text"),
    ),
    (
        "interpreter",
        patient(communication=[{"language": {"coding": [{"code": "es-MX"}]}, "preferred": True}]),
        [coverage()],
        ("interpreter-needed",),
    ),
    ("deceased", patient(deceasedBoolean=True), [coverage()], ("deceased",)),
]


@pytest.mark.parametrize(("case", "pat", "covs", "expected"), PATIENT_CASES)
def test_board_and_sidebar_flag_the_patient_alike(
    case: str, pat: dict[str, Any], covs: Any, expected: tuple[str, ...]
) -> None:
    appt = appointment(hour=15)
    [row] = board([appt], [pat], None if covs is None else coverages_by_patient(covs))
    context = build_context(
        patient=pat,
        appointments=[appt],
        included=[],
        coverages=covs,
        now=NOW,
        viewer_tz="America/Chicago",
    )
    sidebar = tuple(c for c in context.flags if c != "visit-today")
    assert row.flags == expected == sidebar, case
    assert [f["text"] for f in row.to_json()["flags"]] == [
        a.text for a in context.alerts if a.code in expected
    ]
    assert row.needs_call == context.needs_call == flags.needs_call(expected)


def test_a_refused_coverage_search_is_never_no_coverage() -> None:
    rows = board(
        [appointment("a1", "p1"), appointment("a2", "p2")], [patient("p1"), patient("p2")], None
    )
    assert [(r.coverage_state, r.flags, r.needs_call) for r in rows] == [
        ("unknown", ("coverage-unknown",), True),
        ("unknown", ("coverage-unknown",), True),
    ]


def test_a_failed_chunk_leaves_only_its_patients_unknown() -> None:
    rows = board(
        [appointment("a1", "p1"), appointment("a2", "p2", hour=16)],
        [patient("p1"), patient("p2")],
        {"Patient/p1": None, "Patient/p2": []},
    )
    assert [r.flags for r in rows] == [("coverage-unknown",), ("no-coverage",)]


@pytest.mark.parametrize("status", ["cancelled", "entered-in-error"])
def test_a_cancelled_visit_needs_no_call_and_has_no_coverage_warning(status: str) -> None:
    [row] = board(
        [appointment(status=status)],
        [patient(telecom=[])],
        coverages_by_patient([coverage(end="2026-10-01")]),
        failed_reminder_appointments=frozenset({"Appointment/a1"}),
        open_ticket_patients=frozenset({"Patient/p1"}),
    )
    assert row.flags == ("open-ticket",)
    assert row.needs_call is False


@pytest.mark.parametrize(
    ("kwargs", "status", "expected"),
    [
        ({}, "noshow", ("no-show",)),
        ({}, "pending", ("unconfirmed",)),
        (
            {"failed_reminder_appointments": frozenset({"Appointment/a1"})},
            "booked",
            ("reminder-failed",),
        ),
        ({"open_ticket_patients": frozenset({"Patient/p1"})}, "booked", ("open-ticket",)),
        (
            {
                "open_ticket_patients": frozenset({"Patient/p1"}),
                "high_priority_ticket_patients": frozenset({"Patient/p1"}),
            },
            "booked",
            ("open-high-priority-ticket",),
        ),
        ({"overdue_call_patients": frozenset({"Patient/p1"})}, "booked", ("overdue-call",)),
        (
            {"clinic_languages": ("en", "es")},
            "booked",
            (),
        ),
    ],
)
def test_board_row_flags(kwargs: dict[str, Any], status: str, expected: tuple[str, ...]) -> None:
    pat = patient(communication=[{"language": {"coding": [{"code": "es"}]}}])
    if "clinic_languages" not in kwargs:
        pat = patient()
    [row] = board([appointment(status=status)], [pat], coverages_by_patient([coverage()]), **kwargs)
    assert row.flags == expected
    assert row.to_json()["needs_call"] == flags.needs_call(expected)


def test_problems_first_puts_rows_that_need_a_call_first() -> None:
    rows = board(
        [
            appointment("ticket", "p1", hour=8),
            appointment("unconfirmed", "p2", status="pending", hour=15),
            appointment("clean", "p3", hour=9),
            appointment("noshow", "p4", status="noshow", hour=16),
        ],
        [patient("p1"), patient("p2"), patient("p3"), patient("p4")],
        coverages_by_patient([coverage(p) for p in ("p1", "p2", "p3", "p4")]),
        open_ticket_patients=frozenset({"Patient/p1"}),
    )
    assert [r.appointment_id for r in sort_by_flags(rows)] == [
        "noshow",
        "unconfirmed",
        "ticket",
        "clean",
    ]


def test_board_row_json_carries_words_and_needs_call() -> None:
    [row] = board([appointment(status="pending")], [patient()], None)
    data = row.to_json()
    assert data["flags"] == [
        {"code": "unconfirmed", "text": "Not confirmed", "needs_call": True},
        {"code": "coverage-unknown", "text": "Coverage unknown", "needs_call": True},
    ]
    assert data["needs_call"] is True and data["coverage_state"] == "unknown"
