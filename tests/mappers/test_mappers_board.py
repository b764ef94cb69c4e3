"""fhir_mappers.board: one row per appointment, the flags a scheduler calls about."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from fhir_mappers.board import board_rows, coverages_by_patient, patient_of, sort_by_flags

CHICAGO = dt.timezone(dt.timedelta(hours=-6))
NOW = dt.datetime(2026, 11, 27, 9, 30, tzinfo=CHICAGO)


def appointment(
    aid: str,
    patient: str = "p1",
    *,
    status: str = "booked",
    hour: int = 10,
    actor_status: str = "accepted",
) -> dict[str, Any]:
    return {
        "resourceType": "Appointment",
        "id": aid,
        "status": status,
        "start": f"2026-11-27T{hour:02d}:00:00-06:00",
        "end": f"2026-11-27T{hour:02d}:30:00-06:00",
        "participant": [{"actor": {"reference": f"Patient/{patient}"}, "status": actor_status}],
    }


def patient(pid: str = "p1", *, telecom: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return {
        "resourceType": "Patient",
        "id": pid,
        "name": [{"given": ["Ana"], "family": "Diaz"}, {"use": "nickname", "given": ["Annie"]}],
        "telecom": [{"system": "phone", "use": "mobile", "value": "+1 312 555 0100"}]
        if telecom is None
        else telecom,
    }


def coverage(
    pid: str = "p1", *, end: str | None = "2027-12-31", status: str = "active"
) -> dict[str, Any]:
    period = {"start": "2026-01-01"} | ({"end": end} if end else {})
    return {
        "resourceType": "Coverage",
        "id": f"cov-{pid}",
        "status": status,
        "beneficiary": {"reference": f"Patient/{pid}"},
        "payor": [{"display": "Acme Health"}],
        "period": period,
    }


def rows(
    *,
    appts=None,
    patients=None,
    coverages=None,
    tickets=frozenset(),  # type: ignore[no-untyped-def]
    failed=frozenset(),
):
    appts = appts if appts is not None else [appointment("a1")]
    pats = {f"Patient/{p['id']}": p for p in (patients if patients is not None else [patient()])}
    covs = coverages_by_patient(coverages if coverages is not None else [coverage()])
    return board_rows(
        appointments=appts,
        included={},
        patients=pats,
        coverages=covs,
        open_ticket_patients=frozenset(tickets),
        failed_reminder_appointments=frozenset(failed),
        now=NOW,
        viewer_tz="America/Chicago",
    )


@pytest.mark.parametrize(
    ("case", "kwargs", "expected"),
    [
        ("clean", {}, ()),
        ("no coverage", {"coverages": []}, ("no-coverage",)),
        (
            "lapsed but still active",
            {"coverages": [coverage(end="2026-10-31")]},
            ("coverage-expired",),
        ),
        (
            "ends within 30 days",
            {"coverages": [coverage(end="2026-12-10")]},
            ("coverage-expiring",),
        ),
        ("not confirmed", {"appts": [appointment("a1", status="pending")]}, ("unconfirmed",)),
        ("nothing to reach", {"patients": [patient(telecom=[])]}, ("unreachable",)),
        ("reminder failed", {"failed": {"Appointment/a1"}}, ("reminder-failed",)),
        ("open ticket", {"tickets": {"Patient/p1"}}, ("open-ticket",)),
    ],
)
def test_flags(case: str, kwargs: dict[str, Any], expected: tuple[str, ...]) -> None:
    [row] = rows(**kwargs)
    assert row.flags == expected, case


def test_row_names_the_patient_and_keeps_the_preferred_name() -> None:
    [row] = rows()
    assert (row.patient_ref, row.patient_name, row.preferred_name) == (
        "Patient/p1",
        "Ana Diaz",
        "Annie",
    )
    assert row.to_json()["flags"] == []


def test_rows_are_in_time_order_and_flag_sort_puts_problems_first() -> None:
    appts = [appointment("late", "p1", hour=15), appointment("early", "p2", hour=8)]
    board = rows(appts=appts, patients=[patient("p1"), patient("p2")], coverages=[coverage("p1")])
    assert [r.appointment_id for r in board] == ["early", "late"]
    assert [r.appointment_id for r in sort_by_flags(board)] == ["early", "late"]
    board = rows(appts=appts, patients=[patient("p1"), patient("p2")], coverages=[coverage("p2")])
    assert [r.appointment_id for r in sort_by_flags(board)] == ["late", "early"]


@pytest.mark.parametrize(
    ("reference", "expected"),
    [
        ("Patient/p1", "Patient/p1"),
        ("https://ehr.example/fhir/Patient/p1", "Patient/p1"),
        ("Patient/p1/_history/3", "Patient/p1"),
        ("Practitioner/d1", None),
    ],
)
def test_patient_of_reads_every_reference_form(reference: str, expected: str | None) -> None:
    appt = {"participant": [{"actor": {"reference": reference}}, {"actor": {"display": "x"}}]}
    assert patient_of(appt) == expected


def test_messy_input_does_not_raise() -> None:
    odd = {"resourceType": "Appointment", "participant": "not-a-list", "start": "garbage"}
    [row] = rows(appts=[odd], patients=[], coverages=[])
    assert row.patient_ref is None and row.start is None
