"""Knobs for how a real server serves data: references without display, no canonical
`url|version` search."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from sandbox.testing import SandboxHandle
from tests.sandbox.conftest import fhir_get, fhir_post, login
from tests.sandbox.population import Q_URL


def _references(value: Any) -> Iterator[dict[str, Any]]:
    if isinstance(value, list):
        for item in value:
            yield from _references(item)
    elif isinstance(value, dict):
        if isinstance(value.get("reference"), str):
            yield value
        for item in value.values():
            yield from _references(item)


def _displays(value: Any) -> list[str]:
    return [r["reference"] for r in _references(value) if "display" in r]


def _ids(bundle: dict[str, Any]) -> list[str]:
    return [e["resource"]["id"] for e in bundle.get("entry", [])]


def test_omit_display_strips_display_from_reads_searches_and_includes(
    real: SandboxHandle,
) -> None:
    token = login(real, scope="openid fhirUser user/*.rs", patient="pat-001")["access_token"]
    query = (
        "Appointment?patient=pat-001&_include=Appointment:practitioner"
        "&_include=Appointment:location"
    )
    with_display = fhir_get(real, query, token).json()
    assert _displays(with_display)  # the fixtures name who and where
    coverage_id = fhir_get(real, "Coverage?patient=pat-001", token).json()["entry"][0]["resource"]
    assert _displays(coverage_id)

    real.set_knobs(omit_display=True)
    bundle = fhir_get(real, query, token).json()
    included = [e for e in bundle["entry"] if e["search"]["mode"] == "include"]
    assert {e["resource"]["resourceType"] for e in included} == {"Practitioner", "Location"}
    assert _displays(bundle) == []
    assert len(list(_references(bundle))) == len(list(_references(with_display)))
    appt = bundle["entry"][0]["resource"]
    read = fhir_get(real, f"Appointment/{appt['id']}", token).json()
    assert _displays(read) == []
    assert read["participant"][0]["actor"] == {"reference": "Patient/pat-001"}
    coverage = fhir_get(real, f"Coverage/{coverage_id['id']}", token).json()
    assert _displays(coverage) == []
    assert "display" not in coverage["payor"][0] and "display" not in coverage["beneficiary"]
    # Codings keep their display: only References lose it.
    assert "Medical record number" in str(fhir_get(real, "Patient/pat-001", token).json())


def test_omit_display_applies_to_batch_reads(real: SandboxHandle) -> None:
    token = login(real, scope="openid fhirUser user/*.rs", patient="pat-001")["access_token"]
    real.set_knobs(omit_display=True)
    batch = {
        "resourceType": "Bundle",
        "type": "batch",
        "entry": [
            {"request": {"method": "GET", "url": "Coverage?patient=pat-001"}},
            {"request": {"method": "GET", "url": "Location/loc-chicago-main"}},
        ],
    }
    answer = fhir_post(real, "", token, batch).json()
    assert [e["response"]["status"] for e in answer["entry"]] == ["200 OK", "200 OK"]
    assert list(_references(answer))
    assert _displays(answer) == []


def test_omit_display_keeps_a_display_only_reference(real: SandboxHandle) -> None:
    """The fixtures have a Coverage whose payor is only a display: stripping it would
    leave an empty element no server sends."""
    token = login(real, scope="openid fhirUser user/*.rs", patient="pat-001")["access_token"]
    real.set_knobs(omit_display=True)
    messy = fhir_get(real, "Coverage/cov-messy-display-payor", token).json()
    assert messy["payor"] and all(p.get("display") for p in messy["payor"])
    assert "display" not in messy["beneficiary"]


def test_canonical_version_search_on_and_off(sb: SandboxHandle) -> None:
    token = login(sb, scope="openid fhirUser user/*.rs")["access_token"]

    def found(query: str) -> list[str]:
        resp = fhir_get(sb, f"Questionnaire?{query}", token)
        assert resp.status_code == 200, resp.text
        return sorted(_ids(resp.json()))

    assert sb.get_knobs()["canonical_version_search"] is True
    assert found(f"url={Q_URL}|1.0.0") == ["q1"]
    assert found(f"url={Q_URL}&version=2.0.0") == ["q2"]
    assert found("version=1.0.0") == ["q1"]
    sb.set_knobs(canonical_version_search=False)
    # As the real server did: the whole string is the url, so nothing matches.
    assert found(f"url={Q_URL}|1.0.0") == []
    assert found(f"url={Q_URL}") == ["q1", "q2"]
    assert found(f"url={Q_URL}&version=1.0.0") == ["q1"]
    assert found("version=2.0.0") == ["q2"]


def test_conditional_create_follows_the_canonical_knob(sb: SandboxHandle) -> None:
    """A publish that guards with If-None-Exist `url=X|v` creates a second copy on a
    server without canonical search; `url=X&version=v` finds the first."""
    token = login(sb, scope="openid fhirUser user/*.cruds")["access_token"]
    sb.set_knobs(canonical_version_search=False)
    q = {"resourceType": "Questionnaire", "status": "active", "url": Q_URL, "version": "1.0.0"}
    piped = fhir_post(sb, "Questionnaire", token, q, {"If-None-Exist": f"url={Q_URL}|1.0.0"})
    assert piped.status_code == 201
    apart = fhir_post(
        sb, "Questionnaire", token, q, {"If-None-Exist": f"url={Q_URL}&version=2.0.0"}
    )
    assert (apart.status_code, apart.json()["id"]) == (200, "q2")
