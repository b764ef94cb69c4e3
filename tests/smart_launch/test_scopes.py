"""Registration scopes are validated (every problem at once), and each CareDesk feature's
scopes are data the CLI and the guide print."""

from __future__ import annotations

import pytest

from smart_launch.features import (
    FEATURES,
    FEATURES_BY_NAME,
    feature_table,
    scopes_for_features,
)
from smart_launch.scopes import FHIR_R4_RESOURCE_TYPES, translate, validate_scopes


@pytest.mark.parametrize(
    "scopes",
    [
        "launch openid fhirUser offline_access patient/Patient.read user/*.*",
        "launch/patient launch/encounter online_access profile patient/Patient.rs",
        "patient/Observation.rs?category=laboratory",
        "patient/Observation.rs?category=http://terminology.hl7.org/CodeSystem/observation-category|vital-signs",
        "user/Appointment.cruds user/Task.cu patient/*.r user/Practitioner.write",
    ],
)
def test_valid_user_scopes_have_no_problem(scopes: str) -> None:
    assert validate_scopes(scopes) == []


def test_valid_backend_scopes_have_no_problem() -> None:
    assert validate_scopes("system/Patient.rs system/*.read system/Task.cu", level="backend") == []


def test_every_problem_is_reported_at_once() -> None:
    problems = validate_scopes(
        "launch ... patient/Patinet.read user/Patient.sr patient/Patient.rs patient/Patient.rs "
        "patient/Observation.read?category=x patient/Observation.rs? openId "
        "clinic/Patient.read patient/Patient.rx patient/Observation.rs?=x",
    )
    assert [(p.scope, p.reason) for p in problems] == [
        ("...", "not a SMART scope"),
        (
            "patient/Patinet.read",
            "'Patinet' is not a FHIR R4 resource type (did you mean Patient?)",
        ),
        ("user/Patient.sr", "v2 permissions are written once each in the order c r u d s ('sr')"),
        ("patient/Patient.rs", "listed twice"),
        (
            "patient/Observation.read?category=x",
            "v1 scopes (read/write/*) take no ?query; use v2 letters (e.g. .rs?...)",
        ),
        (
            "patient/Observation.rs?",
            "a granular scope's ?query must be name=value pairs joined by &",
        ),
        ("openId", "not a SMART scope (did you mean openid?)"),
        ("clinic/Patient.read", "unknown context 'clinic': use patient/, user/ or system/"),
        (
            "patient/Patient.rx",
            "permission 'rx' is neither v1 (read, write, *) nor v2 (letters of cruds)",
        ),
        ("patient/Observation.rs?=x", "search parameter '' is not a parameter name"),
    ]


def test_backend_scopes_must_be_system_scopes() -> None:
    problems = validate_scopes("launch system/Patient.rs patient/Patient.rs ...", level="backend")
    assert [p.scope for p in problems] == ["launch", "patient/Patient.rs", "..."]
    assert str(problems[1]) == (
        "'patient/Patient.rs': backend services (client_credentials) take system/ scopes only"
    )


def test_user_level_refuses_system_scopes_and_empty_string() -> None:
    assert [p.scope for p in validate_scopes("launch system/Patient.rs")] == ["system/Patient.rs"]
    assert [p.reason for p in validate_scopes("   ")] == ["no scopes given"]


def test_r4_resource_types_are_the_r4_list() -> None:
    assert {"Patient", "QuestionnaireResponse", "MedicinalProduct", "Media"} <= (
        FHIR_R4_RESOURCE_TYPES
    )
    # R5-only types are not R4.
    assert not {"Transport", "InventoryItem", "ActorDefinition"} & FHIR_R4_RESOURCE_TYPES


def test_each_feature_scope_is_valid_at_its_level() -> None:
    for feature in FEATURES:
        for level in ("user", "backend"):
            scopes = feature.scopes(level)  # type: ignore[arg-type]
            if scopes:
                assert validate_scopes(" ".join(scopes), level=level) == [], feature.name  # type: ignore[arg-type]


def test_feature_scopes_are_the_documented_ones() -> None:
    assert scopes_for_features(FEATURES, "backend") == (
        "system/Patient.rs system/Appointment.rus system/ServiceRequest.cus system/Task.cus "
        "system/Practitioner.rs system/Location.rs system/Encounter.rs "
        "system/QuestionnaireResponse.cs system/Questionnaire.crs system/Coverage.rs "
        "system/Organization.rs"
    )
    assert scopes_for_features([FEATURES_BY_NAME["sidebar"]], "user") == (
        "launch openid fhirUser offline_access user/Patient.rs user/Appointment.rs "
        "user/Coverage.rs user/Practitioner.rs user/Location.rs user/Organization.rs"
    )
    # Sidebar and board never run in a job; publishing never runs in a user's launch.
    assert FEATURES_BY_NAME["sidebar"].scopes("backend") == ()
    assert FEATURES_BY_NAME["survey-publish"].scopes("user") == ()
    rows = {row["name"]: row for row in feature_table()}
    assert rows["survey-write-back"]["backend_scopes"] == [
        "system/QuestionnaireResponse.cs",
        "system/Questionnaire.rs",
    ]


def test_feature_missing_scopes_compare_by_meaning() -> None:
    publish = FEATURES_BY_NAME["survey-publish"]
    # The sample registration of issue 15 had no Questionnaire scope at all.
    assert publish.missing("system/Patient.rs system/QuestionnaireResponse.c", "backend") == [
        "system/Questionnaire.crs"
    ]
    assert publish.missing("system/*.*", "backend") == []
    assert publish.missing(translate("system/Questionnaire.crs", v2=False), "backend") == []
