"""HelpdeskContext assembly, JSON shape, and validation warnings."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from fhir_mappers.context import build_context
from fhir_mappers.validation import field_path, validation_warnings

CHI = ZoneInfo("America/Chicago")
NOW = dt.datetime(2026, 11, 27, 9, 30, tzinfo=CHI)
PATIENT: dict[str, Any] = {
    "resourceType": "Patient",
    "id": "p1",
    "identifier": [{"type": {"coding": [{"code": "MR"}]}, "value": "M1"}],
    "name": [{"family": "Zzyzx", "given": ["Quillon"]}],
    "telecom": [{"system": "phone", "value": "312-555-0142", "use": "mobile"}],
}


def appt(aid: str, start: str, status: str = "booked", **fields: Any) -> dict[str, Any]:
    return {
        "resourceType": "Appointment",
        "id": aid,
        "status": status,
        "start": start,
        "participant": [{"actor": {"reference": "Patient/p1"}, "status": "accepted"}],
        **fields,
    }


def ctx(**overrides: Any) -> Any:
    args: dict[str, Any] = {
        "patient": PATIENT,
        "appointments": [],
        "included": [],
        "coverages": [],
        "now": NOW,
        "viewer_tz": "America/Chicago",
    }
    args.update(overrides)
    return build_context(**args)


def test_json_is_ordered_serializable_and_uses_offsets() -> None:
    data = ctx(
        appointments=[appt("a1", "2026-11-27T15:00:00Z")],
        tickets=[
            {
                "id": 7,
                "status": "open",
                "created_at": dt.datetime(2026, 11, 26, 8, 0, tzinfo=dt.UTC),
                "due": dt.date(2026, 12, 1),
            }
        ],
    ).to_json()
    assert list(data) == [
        "patient_id",
        "generated_at",
        "viewer_tz",
        "contact",
        "visits",
        "upcoming",
        "recent",
        "insurance",
        "tickets",
        "tasks",
        "surveys",
        "flags",
        "alerts",
        "needs_call",
        "unavailable",
        "warnings",
    ]
    assert data["generated_at"] == "2026-11-27T09:30:00-06:00"
    assert data["visits"][0]["start"] == "2026-11-27T09:00:00-06:00"
    assert data["tickets"] == [
        {"created_at": "2026-11-26T08:00:00+00:00", "due": "2026-12-01", "id": 7, "status": "open"}
    ]
    assert "warnings" not in data["contact"] and "warnings" not in data["visits"][0]
    assert json.loads(json.dumps(data)) == data


def test_visits_are_sorted_by_start_with_unknown_times_last() -> None:
    data = ctx(
        appointments=[
            appt("late", "2026-12-01T10:00:00-06:00"),
            {"resourceType": "Appointment", "id": "notime", "status": "proposed"},
            appt("early", "2026-11-01T10:00:00-05:00", "fulfilled"),
        ]
    ).to_json()
    assert [v["appointment_id"] for v in data["visits"]] == ["early", "late", "notime"]


def test_coverage_not_fetched_is_unknown_and_says_why() -> None:
    data = ctx(coverages=None, unavailable={"coverage": "scope not granted"}).to_json()
    assert data["insurance"]["state"] == "unknown"
    assert data["unavailable"] == {"coverage": "scope not granted"}
    # Not fetched is not "none on file": the flag says unknown, and that needs a call.
    assert "no-coverage" not in data["flags"] and "coverage-unknown" in data["flags"]
    assert data["needs_call"] is True
    data = ctx(coverages=None).to_json()
    assert data["unavailable"] == {"coverage": "not fetched"}


def test_no_patient_resource_is_reported_as_unavailable() -> None:
    data = ctx(patient=None).to_json()
    assert data["contact"] is None and data["patient_id"] is None
    assert data["unavailable"] == {"patient": "no Patient resource"}


RESTRICTION = "https://caredesk.example/fhir/StructureDefinition/contact-restriction"


def restricted(*codes: str) -> dict[str, Any]:
    return {**PATIENT, "extension": [{"url": RESTRICTION, "valueCode": c} for c in codes]}


@pytest.mark.parametrize(
    ("overrides", "flags"),
    [
        ({}, ["no-coverage"]),
        ({"tickets": [{"status": "open"}]}, ["no-coverage", "open-ticket"]),
        ({"tickets": [{"status": "closed"}, {"status": "Resolved"}]}, ["no-coverage"]),
        (
            {"tickets": [{"status": "open", "priority": "high"}, {"status": "open"}]},
            ["open-high-priority-ticket", "no-coverage"],
        ),
        (
            {"appointments": [appt("t", "2026-11-27T13:00:00-06:00")]},
            ["no-coverage", "visit-today"],
        ),
        # ended this morning: nothing left of it today
        ({"appointments": [appt("t", "2026-11-27T08:00:00-06:00")]}, ["no-coverage"]),
        (
            {"appointments": [appt("p", "2026-11-30T13:00:00-06:00", "pending")]},
            ["unconfirmed", "no-coverage"],
        ),
        ({"appointments": [appt("p", "2026-11-30T13:00:00-06:00", "cancelled")]}, ["no-coverage"]),
        (
            {"appointments": [appt("n", "2026-11-20T13:00:00-06:00", "noshow")]},
            ["no-show", "no-coverage"],
        ),
        (
            {
                "appointments": [
                    appt("n", "2026-11-20T13:00:00-06:00", "noshow"),
                    appt("b", "2026-12-03T13:00:00-06:00"),
                ]
            },
            ["no-coverage"],  # already rebooked
        ),
        (
            {
                "appointments": [
                    appt("n", "2026-11-10T13:00:00-06:00", "noshow"),
                    appt("f", "2026-11-20T13:00:00-06:00", "fulfilled"),
                ]
            },
            ["no-coverage"],  # seen since
        ),
        (
            {
                "coverages": [
                    {
                        "resourceType": "Coverage",
                        "id": "c",
                        "status": "active",
                        "period": {"end": "2026-12-01"},
                    }
                ]
            },
            ["coverage-expiring"],
        ),
        ({"coverages": None}, ["coverage-unknown"]),
        ({"patient": {**PATIENT, "telecom": []}}, ["unreachable", "no-coverage"]),
        ({"patient": {**PATIENT, "deceasedBoolean": True}}, ["deceased", "no-coverage"]),
        ({"patient": restricted("no-sms")}, ["no-coverage", "do-not-text"]),
        (
            {"patient": restricted("no-sms", "no-call")},
            ["unreachable", "no-coverage", "do-not-text"],
        ),
        ({"patient": restricted("no-contact")}, ["unreachable", "no-coverage", "do-not-text"]),
        (
            {"patient": {**PATIENT, "communication": [{"language": {"coding": [{"code": "es"}]}}]}},
            ["no-coverage", "interpreter-needed"],
        ),
        (
            {
                "patient": {
                    **PATIENT,
                    "communication": [{"language": {"coding": [{"code": "es"}]}}],
                },
                "clinic_languages": ("en", "es"),
            },
            ["no-coverage"],
        ),
        (
            {"tasks": [{"kind": "reminder", "status": "failed"}]},
            ["reminder-failed", "no-coverage"],
        ),
        (
            {
                "tasks": [
                    {"kind": "follow-up", "status": "waiting", "due_at": "2026-11-27T15:00:00"}
                ]
            },
            ["overdue-call", "no-coverage"],  # 15:00 UTC (store time) is 09:00 in Chicago
        ),
        (
            # Due ten minutes ago (09:20 Chicago): still within CALL_GRACE, due, not late.
            {
                "tasks": [
                    {"kind": "follow-up", "status": "waiting", "due_at": "2026-11-27T15:20:00"}
                ]
            },
            ["no-coverage"],
        ),
        (
            {
                "tasks": [
                    {"kind": "follow-up", "status": "waiting", "due_at": "2026-11-27T16:00:00"}
                ]
            },
            ["no-coverage"],
        ),
        (
            {"tasks": [{"kind": "follow-up", "status": "done", "due_at": "2026-11-01T16:00:00"}]},
            ["no-coverage"],
        ),
    ],
)
def test_flags(overrides: dict[str, Any], flags: list[str]) -> None:
    context = ctx(**overrides)
    assert list(context.flags) == flags
    assert [a.code for a in context.alerts] == flags
    assert context.needs_call == any(a.needs_call for a in context.alerts)


def test_warnings_are_collected_once_and_validation_can_be_turned_off() -> None:
    odd = appt("a1", "2026-11-27T14:00:00", ehrDepartmentId="x")
    with_validation = ctx(appointments=[odd]).to_json()["warnings"]
    assert [(w["field"], w["code"]) for w in with_validation] == [
        ("start", "no-timezone"),
        ("ehrDepartmentId", "unknown-element"),
    ]
    without = ctx(appointments=[odd], validate=False).to_json()["warnings"]
    assert [(w["field"], w["code"]) for w in without] == [("start", "no-timezone")]


def test_included_resources_are_validated_too() -> None:
    loc = {"resourceType": "Location", "id": "l1", "bogus": 1}
    warnings = ctx(included=[loc]).to_json()["warnings"]
    assert {
        "resource_type": "Location",
        "resource_id": "l1",
        "field": "bogus",
        "message": "element is not defined in FHIR R4",
        "code": "unknown-element",
        "plain": "The location record's element `bogus` is not a FHIR R4 element; it was ignored.",
    } in warnings


def test_viewer_zone_must_be_real_and_now_aware() -> None:
    with pytest.raises(ValueError, match="viewer_tz"):
        ctx(viewer_tz="Nowhere/Land")
    with pytest.raises(ValueError, match="timezone-aware"):
        ctx(now=dt.datetime(2026, 11, 27, 9, 30))


def test_context_is_frozen() -> None:
    context = ctx()
    with pytest.raises(AttributeError):
        context.patient_id = "other"


# --- validation warnings -----------------------------------------------------------


@pytest.mark.parametrize(
    ("resource", "expected"),
    [
        (PATIENT, []),
        ({**PATIENT, "gender": ""}, [("gender", "invalid")]),
        ({**PATIENT, "birthDate": "1980-13-01"}, [("birthDate", "invalid")]),
        ({**PATIENT, "name": "Zzyzx"}, [("name", "invalid")]),
        (
            {**PATIENT, "telecom": [{"rank": "first", "value": "312-555-0142"}]},
            [("telecom[0].rank", "invalid")],
        ),
        ({**PATIENT, "secretFlag": True}, [("secretFlag", "unknown-element")]),
        (
            {**PATIENT, "extension": [{"valueString": "Zzyzx"}]},
            [("extension[0].url", "missing-required")],
        ),
        ({**PATIENT, "id": "x" * 65}, [("id", "id-too-long")]),
        ({"resourceType": "Patient", "id": "p 1"}, [("id", "invalid")]),
        ({"resourceType": "Spaceship", "id": "s"}, [("resourceType", "unknown-resource-type")]),
        ({"id": "no-type"}, [("resourceType", "unknown-resource-type")]),
        (
            {
                "resourceType": "Coverage",
                "id": "c",
                "status": "active",
                "beneficiary": {"reference": "Patient/1"},
            },
            [("payor", "missing-required")],
        ),
    ],
)
def test_validation_warnings_name_the_field_and_kind(
    resource: dict[str, Any], expected: list[tuple[str, str]]
) -> None:
    assert [(w.field, w.code) for w in validation_warnings(resource)] == expected


def test_validation_warnings_never_echo_values() -> None:
    odd = {
        **PATIENT,
        "birthDate": "Zzyzx-1980",
        "gender": "Quillon",
        "name": "Zzyzx",
        "telecom": [{"rank": "312-555-0142"}],
    }
    text = " ".join(str(w) for w in validation_warnings(odd))
    assert text
    for value in ("Zzyzx", "Quillon", "312-555-0142", "1980"):
        assert value not in text


def test_field_path() -> None:
    assert field_path(("extension", 0, "url")) == "extension[0].url"
    assert field_path(("resource_type",)) == "resourceType"
    assert field_path(()) == "(resource)"
