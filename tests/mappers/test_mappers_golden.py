"""Golden files: every fixture patient and every MESSY resource, FHIR in, context out.

To regenerate after an intended change: `.venv/bin/python -m tests.mappers.regen`, then
review `git diff tests/mappers/golden` by eye.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import pytest
from golden_cases import GOLDEN_DIR, build_cases, dump, run_case

from fixtures.population import MESSY, build_population

CASES = sorted(p.name.removesuffix(".input.json") for p in GOLDEN_DIR.glob("*.input.json"))


def _load(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


@pytest.mark.parametrize("case", CASES)
def test_golden_context_matches_expected(case: str) -> None:
    bundle = _load(GOLDEN_DIR / f"{case}.input.json")
    expected = (GOLDEN_DIR / f"{case}.expected.json").read_text(encoding="utf-8")
    assert dump(run_case(bundle)) == expected


def test_golden_inputs_are_what_the_fixtures_generate_today() -> None:
    """Fixture changes must come with regenerated (and reviewed) goldens."""
    generated = build_cases()
    assert sorted(generated) == CASES
    for name, bundle in generated.items():
        assert _load(GOLDEN_DIR / f"{name}.input.json") == bundle, name


def test_there_is_a_golden_case_for_every_patient_and_every_messy_resource() -> None:
    pop = build_population(dt.date(2026, 11, 27))
    assert len([c for c in CASES if c.startswith("patient-")]) == len(pop["Patient"])
    assert len([c for c in CASES if c.startswith("messy-")]) == len(MESSY)
    for rtype, rid, _why in MESSY:
        found = [
            c
            for c in CASES
            if c.startswith(f"messy-{rtype.lower()}-")
            and rid in (GOLDEN_DIR / f"{c}.input.json").read_text(encoding="utf-8")
        ]
        assert found, rid


def _expected(case: str) -> list[dict[str, Any]]:
    data: list[dict[str, Any]] = _load(GOLDEN_DIR / f"{case}.expected.json")
    return data


def _codes(context: dict[str, Any], rid: str) -> list[tuple[str, str]]:
    return [(w["field"], w["code"]) for w in context["warnings"] if w["resource_id"] == rid]


# Each oddity must be visible in its golden output as the right warning (spot checks that
# keep a careless regen from quietly dropping them).
@pytest.mark.parametrize(
    ("case", "rid", "warning"),
    [
        ("messy-appointment-appt-messy-notz", "appt-messy-notz", ("start", "no-timezone")),
        ("messy-appointment-appt-messy-notz", "appt-messy-notz", ("end", "no-timezone")),
        (
            "messy-coverage-cov-messy-display-payor",
            "cov-messy-display-payor",
            ("payor[0]", "display-only-reference"),
        ),
        ("messy-coverage-cov-messy-no-payor", "cov-messy-no-payor", ("payor", "missing-required")),
        (
            "messy-patient-pat-messy-ext-no-url",
            "pat-messy-ext-no-url",
            ("extension[0].url", "missing-required"),
        ),
        (
            "messy-appointment-appt-messy-extra-field",
            "appt-messy-extra-field",
            ("ehrDepartmentId", "unknown-element"),
        ),
        (
            "messy-patient-pat-messy-partial-birth",
            "pat-messy-partial-birth",
            ("birthDate", "partial-date"),
        ),
    ],
)
def test_each_oddity_surfaces_as_its_warning(case: str, rid: str, warning: tuple[str, str]) -> None:
    (context,) = _expected(case)
    assert warning in _codes(context, rid)


def test_long_id_is_kept_whole_and_warned_about() -> None:
    (context,) = _expected("messy-patient-long-id")
    assert len(context["patient_id"]) > 64
    assert ("id", "id-too-long") in _codes(context, context["patient_id"])


def test_script_name_is_passed_through_verbatim_for_the_template_to_escape() -> None:
    (context,) = _expected("messy-patient-pat-messy-script")
    assert context["contact"]["display_name"] == "<script>alert(1)</script> <b>Test</b>"


def test_no_timezone_appointment_is_read_as_location_wall_clock() -> None:
    (context,) = _expected("messy-appointment-appt-messy-notz")
    (visit,) = context["visits"]
    assert visit["start"] == "2026-11-27T14:00:00-06:00"
    assert visit["timing"] == "today"


def test_no_warning_message_contains_patient_values() -> None:
    """Warnings get logged: they may name fields, never carry the data in them."""
    for case in CASES:
        for context in _expected(case):
            contact = context["contact"] or {}
            secrets = [contact.get("display_name"), contact.get("mrn"), contact.get("birth_date")]
            secrets += [t["value"] for t in contact.get("phones", []) + contact.get("emails", [])]
            for warning in context["warnings"]:
                text = f"{warning['field']} {warning['message']} {warning['plain']}"
                for secret in filter(None, secrets):
                    assert secret not in text, (case, warning)
