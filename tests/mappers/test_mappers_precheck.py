"""R4B warnings without strict validation of every resource (issue 16 §2): a cheap walk
vouches for the resources strict validation would pass, and only the rest are validated.
The warnings must be exactly those of full validation."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import pydantic
import pytest
from fhir.resources.R4B import get_fhir_model_class
from fuzzing import resources
from golden_cases import GOLDEN_DIR, run_case
from hypothesis import HealthCheck, given, settings

from fhir_mappers import validation
from fhir_mappers.bundle import read_resources
from fhir_mappers.precheck import surely_valid
from fhir_mappers.validation import validation_warnings
from fixtures.population import MESSY, build_population

POPULATION = build_population(dt.date(2026, 11, 27))
ALL = [r for rs in POPULATION.values() for r in rs]
MESSY_IDS = {rid for _, rid, _ in MESSY}
GOLDEN_INPUTS = sorted(GOLDEN_DIR.glob("*.input.json"))


def strictly_valid(resource: Any) -> bool:
    try:
        get_fhir_model_class(resource["resourceType"]).model_validate(resource)
    except pydantic.ValidationError:
        return False
    return True


@pytest.mark.parametrize("resource", ALL, ids=lambda r: f"{r['resourceType']}/{r['id'][:30]}")
def test_what_the_walk_vouches_for_passes_strict_validation(resource: dict[str, Any]) -> None:
    if surely_valid(resource):
        assert strictly_valid(resource)


@pytest.mark.parametrize("resource", ALL, ids=lambda r: f"{r['resourceType']}/{r['id'][:30]}")
def test_warnings_are_those_of_full_validation(resource: dict[str, Any]) -> None:
    assert validation_warnings(resource) == validation_warnings(resource, always_strict=True)


@pytest.mark.parametrize("path", GOLDEN_INPUTS, ids=lambda p: p.name.removesuffix(".input.json"))
def test_warnings_of_every_golden_case_are_those_of_full_validation(path: Path) -> None:
    for resource in read_resources(path.read_text(encoding="utf-8")):
        assert validation_warnings(resource) == validation_warnings(resource, always_strict=True)


@settings(
    max_examples=400,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=list(HealthCheck),
)
@given(resources())
def test_the_walk_never_vouches_for_what_strict_validation_refuses(resource: Any) -> None:
    """Damaged fixture resources (the fuzz suite's generator): a wrong yes here would lose
    a warning; a wrong no only costs time."""
    if surely_valid(resource):
        assert strictly_valid(resource), json.dumps(resource)[:500]
        assert validation_warnings(resource) == validation_warnings(resource, always_strict=True)


def test_nearly_every_valid_fixture_resource_skips_strict_validation() -> None:
    unsure = [r["id"] for r in ALL if not surely_valid(r) and strictly_valid(r)]
    assert len(unsure) <= 2, unsure  # today: a Questionnaire (contained-free but unmodelled
    # primitive types) and one appointment


def test_a_clean_bundle_is_not_strictly_validated_at_all(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fails if the optimisation is undone: every resource of a clean patient's bundle
    would go through the R4B models again."""
    calls: list[str] = []
    real = validation.validate_strictly

    def counting(model: Any, resource: Any) -> None:
        calls.append(str(resource.get("resourceType")))
        real(model, resource)

    monkeypatch.setattr(validation, "validate_strictly", counting)
    (context,) = run_case(json.loads((GOLDEN_DIR / "patient-pat-001.input.json").read_text()))
    assert context["warnings"] == []
    assert calls == []
    (messy,) = run_case(
        json.loads((GOLDEN_DIR / "messy-appointment-appt-messy-extra-field.input.json").read_text())
    )
    assert calls == ["Appointment"]  # only the odd one
    assert ("ehrDepartmentId", "unknown-element") in [
        (w["field"], w["code"]) for w in messy["warnings"]
    ]


@pytest.mark.parametrize(
    ("change", "why"),
    [
        ({"gender": "a  b"}, "a code with two spaces"),
        ({"birthDate": "2026-02-30"}, "no such day"),
        ({"birthDate": "1980-07-04T10:00:00"}, "a time in a date"),
        ({"deceasedDateTime": "2026-02-30T10:00:00Z"}, "no such day in a dateTime"),
        ({"deceasedDateTime": "2026-02-30"}, "no such day in a dateTime without a time"),
        ({"meta": {"lastUpdated": "2026-02-30T10:00:00Z"}}, "no such day in an instant"),
        ({"meta": {"lastUpdated": "2026-11-30T10:00:00"}}, "an instant without its offset"),
        ({"active": "true"}, "a string for a boolean: strict coerces it, the walk is unsure"),
        ({"name": []}, "an empty list"),
        ({"name": [{}]}, "an empty object"),
        ({"gender": None}, "a null"),
        ({"_gender": {"extension": []}}, "a primitive extension"),
        ({"contained": [{"resourceType": "Organization", "id": "o"}]}, "a contained resource"),
        ({"fhir_comments": "x"}, "fhir_comments"),
        ({"deceasedBoolean": False, "deceasedDateTime": "2020"}, "two choices"),
        ({"name": [{"family": "a\ud800"}]}, "a lone surrogate"),
        ({"telecom": [{"system": "phone", "rank": 0}]}, "rank must be positive"),
        ({"extension": [{"valueCode": "x"}]}, "an extension without url"),
        ({"bogus": 1}, "an element FHIR does not define"),
    ],
)
def test_the_walk_is_unsure_of(change: dict[str, Any], why: str) -> None:
    patient = {**POPULATION["Patient"][0], **change}
    assert not surely_valid(patient), why


def test_odd_ids_and_types_are_left_to_strict_validation() -> None:
    for resource in (
        {"resourceType": "Spaceship", "id": "s"},
        {"id": "x"},
        [],
        None,
        {"resourceType": 5},
    ):
        assert not surely_valid(resource)
    assert MESSY_IDS  # the messy set is part of ALL above
