"""No input makes a mapper raise: every fixture resource, and every fixture resource with
any one field replaced by a value of the wrong shape (what real EHR JSON does)."""

from __future__ import annotations

import copy
import datetime as dt
import json
from collections.abc import Iterator
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from fhir_mappers.appointment import to_visit
from fhir_mappers.bundle import contexts_for_file
from fhir_mappers.context import build_context
from fhir_mappers.coverage import to_insurance
from fhir_mappers.patient import to_contact
from fhir_mappers.validation import validation_warnings
from fixtures.population import build_population

NOW = dt.datetime(2026, 11, 27, 9, 30, tzinfo=ZoneInfo("America/Chicago"))
POP = build_population(NOW.date())
INCLUDED = {
    f"{r['resourceType']}/{r['id']}": r
    for t in ("Practitioner", "Location", "Organization")
    for r in POP[t]
}
GARBAGE: list[Any] = [None, 0, -1, True, "", "x", [], {}, [None], [1, "a"], {"a": 1}, 1.5]


def _map(resource: dict[str, Any]) -> None:
    rtype = resource.get("resourceType")
    if rtype == "Patient":
        to_contact(resource, now=NOW)
    elif rtype == "Appointment":
        to_visit(resource, now=NOW, viewer_tz="America/Chicago", included=INCLUDED)
    elif rtype == "Coverage":
        to_insurance([resource], now=NOW, included=INCLUDED)
    validation_warnings(resource)


def _mutations(resource: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Each top-level field, and each field of the first item of a list field, replaced
    by each garbage value; plus the field removed."""
    for key in list(resource):
        if key == "resourceType":
            continue
        removed = dict(resource)
        del removed[key]
        yield removed
        for bad in GARBAGE:
            yield {**resource, key: bad}
        value = resource[key]
        first = value[0] if isinstance(value, list) and value else value
        if isinstance(first, dict):
            for sub in list(first):
                for bad in (None, "", [], {}, 7):
                    changed = copy.deepcopy(resource)
                    target = changed[key][0] if isinstance(value, list) else changed[key]
                    target[sub] = bad
                    yield changed


MAPPED = [r for t in ("Patient", "Appointment", "Coverage") for r in POP[t]]


@pytest.mark.parametrize("rtype", ["Patient", "Appointment", "Coverage"])
def test_no_fixture_resource_makes_a_mapper_raise(rtype: str) -> None:
    for resource in POP[rtype]:
        _map(resource)


@pytest.mark.parametrize("rtype", ["Patient", "Appointment", "Coverage"])
def test_wrongly_shaped_fields_never_make_a_mapper_raise(rtype: str) -> None:
    # one resource of each kind from every category of the population is plenty: the
    # mutations cover every field it has
    samples = [
        r for r in POP[rtype] if r["id"].startswith(("pat-001", "appt-pat-016", "cov-pat-003"))
    ]
    samples += [r for r in POP[rtype] if "messy" in r["id"]][:2]
    count = 0
    for resource in samples:
        for mutated in _mutations(resource):
            _map(mutated)
            count += 1
    assert count > 100


def test_whole_population_builds_contexts_without_raising() -> None:
    lines = "\n".join(json.dumps(r) for rs in POP.values() for r in rs)
    contexts = contexts_for_file(lines, now=NOW, viewer_tz="Europe/Berlin")
    assert len(contexts) == len(POP["Patient"])


def test_build_context_accepts_non_dict_garbage_in_lists() -> None:
    context = build_context(
        patient={"resourceType": "Patient", "name": "nope", "telecom": {"value": 1}},
        appointments=[{"resourceType": "Appointment", "participant": "x", "start": 5}],
        included=[{"resourceType": "Location"}, {"id": "x"}],
        coverages=[{"resourceType": "Coverage", "period": [], "class": {"type": 3}}],
        now=NOW,
        viewer_tz="America/Chicago",
        tickets=[{"status": None}],
    )
    assert context.to_json()["warnings"]
    json.dumps(context.to_json())
