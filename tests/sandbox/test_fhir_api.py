"""The FHIR REST API: metadata, read, search, scopes, create, batch, errors."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
import requests

from sandbox.testing import SandboxHandle
from tests.sandbox.conftest import (
    backend_token,
    client_assertion,
    fhir_get,
    fhir_post,
    login,
)
from tests.sandbox.population import MRN, Q_URL, today


@pytest.fixture
def system_token(sb: SandboxHandle, rsa_key: Any) -> str:
    """A backend token that may read everything and create QuestionnaireResponses."""
    assertion = client_assertion(rsa_key, f"{sb.base_url}/auth/token")
    resp = backend_token(sb, assertion, "system/*.rs system/QuestionnaireResponse.c")
    assert resp.status_code == 200, resp.text
    token: str = resp.json()["access_token"]
    return token


@pytest.fixture
def user_token(sb: SandboxHandle) -> str:
    token: str = login(sb, scope="openid fhirUser user/*.cruds")["access_token"]
    return token


def _ids(bundle: dict[str, Any], mode: str = "match") -> list[str]:
    return [e["resource"]["id"] for e in bundle.get("entry", []) if e["search"]["mode"] == mode]


def _qr(identifier: str, subject: str = "pat-a", questionnaire: str = Q_URL) -> dict[str, Any]:
    return {
        "resourceType": "QuestionnaireResponse",
        "identifier": {"system": "urn:caredesk:invitation", "value": identifier},
        "questionnaire": questionnaire,
        "status": "completed",
        "subject": {"reference": f"Patient/{subject}"},
        "authored": dt.datetime.now(dt.UTC).isoformat(),
        "item": [{"linkId": "1", "answer": [{"valueInteger": 5}]}],
    }


# --- metadata and errors -------------------------------------------------------------


def test_metadata_advertises_smart_security_without_a_token(sb: SandboxHandle) -> None:
    resp = requests.get(f"{sb.fhir_base}/metadata", timeout=10)
    assert resp.status_code == 200
    assert resp.headers["Content-Type"].startswith("application/fhir+json")
    cap = resp.json()
    assert cap["fhirVersion"] == "4.0.1"
    security = cap["rest"][0]["security"]
    assert security["service"][0]["coding"][0]["code"] == "SMART-on-FHIR"
    uris = {e["url"]: e["valueUri"] for e in security["extension"][0]["extension"]}
    assert uris["authorize"] == f"{sb.base_url}/auth/authorize"
    assert uris["token"] == f"{sb.base_url}/auth/token"
    types = {r["type"]: r for r in cap["rest"][0]["resource"]}
    assert types["QuestionnaireResponse"]["conditionalCreate"] is True
    assert "Appointment:actor" in types["Appointment"]["searchInclude"]
    assert {"code": "batch"} in cap["rest"][0]["interaction"]


def test_smart_configuration_lists_required_capabilities(sb: SandboxHandle) -> None:
    conf = requests.get(f"{sb.fhir_base}/.well-known/smart-configuration", timeout=10).json()
    for capability in (
        "launch-ehr",
        "launch-standalone",
        "client-public",
        "client-confidential-symmetric",
        "client-confidential-asymmetric",
        "context-ehr-patient",
        "context-standalone-patient",
        "sso-openid-connect",
        "permission-offline",
        "permission-v1",
        "permission-v2",
        "authorize-post",
    ):
        assert capability in conf["capabilities"]
    assert conf["code_challenge_methods_supported"] == ["S256"]
    assert conf["token_endpoint"] == f"{sb.base_url}/auth/token"
    assert set(conf["token_endpoint_auth_signing_alg_values_supported"]) == {"RS384", "ES384"}


def test_fhir_requires_a_bearer_token(sb: SandboxHandle) -> None:
    resp = fhir_get(sb, "Patient/pat-a", None)
    assert resp.status_code == 401
    assert resp.json()["resourceType"] == "OperationOutcome"
    assert resp.headers["WWW-Authenticate"].startswith("Bearer")
    assert fhir_get(sb, "Patient/pat-a", "forged").status_code == 401


def test_read_unknown_resource_is_404_operation_outcome(sb: SandboxHandle, user_token: str) -> None:
    resp = fhir_get(sb, "Patient/nope", user_token)
    assert resp.status_code == 404
    assert resp.json()["issue"][0]["code"] == "not-found"
    assert fhir_get(sb, "Frobnicator/1", user_token).status_code == 404


def test_read_carries_etag_and_version(sb: SandboxHandle, user_token: str) -> None:
    resp = fhir_get(sb, "Patient/pat-a", user_token)
    assert resp.status_code == 200
    assert resp.headers["ETag"] == 'W/"1"'
    assert resp.json()["meta"]["versionId"] == "1"
    assert "Last-Modified" in resp.headers


# --- scopes -----------------------------------------------------------------------


def test_patient_scope_cannot_read_another_patient(sb: SandboxHandle) -> None:
    token = login(sb)["access_token"]  # patient/*.rs, launch patient pat-a
    assert fhir_get(sb, "Patient/pat-a", token).status_code == 200
    other = fhir_get(sb, "Patient/pat-b", token)
    assert other.status_code == 403
    assert other.json()["issue"][0]["code"] == "forbidden"
    assert fhir_get(sb, "Coverage/cov-b", token).status_code == 403
    assert fhir_get(sb, "Appointment?patient=pat-b", token).status_code == 403


def test_patient_scope_search_only_returns_the_launch_patient(sb: SandboxHandle) -> None:
    token = login(sb)["access_token"]
    coverage = fhir_get(sb, "Coverage", token).json()
    assert _ids(coverage) == ["cov-a"]
    appts = fhir_get(sb, "Appointment?_count=100", token).json()
    assert all(i.startswith("appt-a-") for i in _ids(appts))
    # Not in the Patient compartment: readable under patient/ scopes.
    assert fhir_get(sb, "Practitioner/prac-other", token).status_code == 200


def test_v1_read_scope_allows_read_and_search(sb: SandboxHandle) -> None:
    token = login(sb, scope="launch/patient patient/Appointment.read")["access_token"]
    assert fhir_get(sb, "Appointment?patient=pat-a", token).status_code == 200
    assert fhir_get(sb, "Appointment/appt-a-8", token).status_code == 200
    assert fhir_get(sb, "Patient/pat-a", token).status_code == 403


def test_v2_search_only_scope_forbids_read(sb: SandboxHandle) -> None:
    token = login(sb, scope="launch/patient patient/Appointment.s")["access_token"]
    assert fhir_get(sb, "Appointment?patient=pat-a", token).status_code == 200
    assert fhir_get(sb, "Appointment/appt-a-8", token).status_code == 403


def test_patient_scope_without_patient_context_grants_nothing(sb: SandboxHandle) -> None:
    token = login(sb, scope="patient/*.rs")["access_token"]
    assert fhir_get(sb, "Patient/pat-a", token).status_code == 403


def test_user_scope_reads_any_patient(sb: SandboxHandle, user_token: str) -> None:
    assert fhir_get(sb, "Patient/pat-b", user_token).status_code == 200


def test_read_scope_cannot_create(sb: SandboxHandle) -> None:
    token = login(sb)["access_token"]
    resp = fhir_post(sb, "QuestionnaireResponse", token, _qr("x"))
    assert resp.status_code == 403


def test_patient_scope_cannot_write_for_another_patient(sb: SandboxHandle) -> None:
    token = login(sb, scope="launch/patient patient/QuestionnaireResponse.cruds")["access_token"]
    assert fhir_post(sb, "QuestionnaireResponse", token, _qr("1", "pat-a")).status_code == 201
    assert fhir_post(sb, "QuestionnaireResponse", token, _qr("2", "pat-b")).status_code == 403


def test_v2_granular_scope_query_restricts_results(sb: SandboxHandle) -> None:
    token = login(sb, scope="launch/patient patient/Appointment.rs?status=cancelled")[
        "access_token"
    ]
    assert _ids(fhir_get(sb, "Appointment", token).json()) == ["appt-a-tomorrow"]
    assert fhir_get(sb, "Appointment/appt-a-8", token).status_code == 403


def test_include_leaves_out_resources_the_token_may_not_read(sb: SandboxHandle) -> None:
    token = login(sb, scope="launch/patient patient/Appointment.rs patient/Location.rs")[
        "access_token"
    ]
    bundle = fhir_get(sb, "Appointment?_id=appt-a-8&_include=Appointment:actor", token).json()
    assert sorted(_ids(bundle, "include")) == ["loc-1"]


# --- search ---------------------------------------------------------------------------


def test_patient_search_by_identifier_name_and_id(sb: SandboxHandle, user_token: str) -> None:
    assert _ids(fhir_get(sb, f"Patient?identifier={MRN}|B2", user_token).json()) == ["pat-b"]
    assert _ids(fhir_get(sb, "Patient?identifier=B2", user_token).json()) == ["pat-b"]
    assert _ids(fhir_get(sb, "Patient?identifier=other|B2", user_token).json()) == []
    assert _ids(fhir_get(sb, "Patient?name=alp", user_token).json()) == ["pat-a"]
    assert _ids(fhir_get(sb, "Patient?name=CAROL", user_token).json()) == ["pat-c"]
    both = fhir_get(sb, "Patient?_id=pat-a,pat-c", user_token).json()
    assert sorted(_ids(both)) == ["pat-a", "pat-c"]


def test_appointment_search_by_date_prefixes(sb: SandboxHandle, user_token: str) -> None:
    day = today()
    tomorrow = day + dt.timedelta(days=1)

    def ids(query: str) -> list[str]:
        resp = fhir_get(sb, f"Appointment?{query}&_count=100", user_token)
        assert resp.status_code == 200, resp.text
        return sorted(_ids(resp.json()))

    todays = sorted(f"appt-a-{h}" for h in (8, 9, 10, 11, 12, 13))
    assert ids(f"date={day}") == todays
    assert ids(f"date=ge{day}&date=lt{tomorrow}") == todays
    assert ids(f"date=gt{day}") == ["appt-a-tomorrow"]
    assert ids(f"date=lt{day}") == ["appt-b-yesterday"]
    assert ids(f"date=le{day}") == sorted([*todays, "appt-b-yesterday"])
    noon = dt.datetime.combine(day, dt.time(12), tzinfo=dt.timezone(dt.timedelta(hours=-6)))
    # A dateTime with an offset: 12:00 at UTC-6 (Chicago standard time, Nov 27).
    assert ids(f"date=ge{noon.isoformat()}".replace("+", "%2B")) == [
        "appt-a-12",
        "appt-a-13",
        "appt-a-tomorrow",
    ]
    assert fhir_get(sb, "Appointment?date=ge-not-a-date", user_token).status_code == 400


def test_appointment_search_by_participants_and_status(sb: SandboxHandle, user_token: str) -> None:
    def ids(query: str) -> list[str]:
        return sorted(_ids(fhir_get(sb, f"Appointment?{query}&_count=100", user_token).json()))

    assert ids("practitioner=prac-other") == ["appt-b-yesterday"]
    assert ids("location=Location/loc-2") == ["appt-b-yesterday"]
    assert ids("actor=Practitioner/prac-other") == ["appt-b-yesterday"]
    assert ids("actor=loc-2") == ["appt-b-yesterday"]
    assert ids("patient=pat-b") == ["appt-b-yesterday"]
    assert ids(f"patient={sb.fhir_base}/Patient/pat-b") == ["appt-b-yesterday"]
    assert ids("status=cancelled") == ["appt-a-tomorrow"]
    assert len(ids("status=booked,cancelled")) == 8


def test_appointment_include_actor(sb: SandboxHandle, user_token: str) -> None:
    resp = fhir_get(sb, "Appointment?_id=appt-b-yesterday&_include=Appointment:actor", user_token)
    bundle = resp.json()
    assert _ids(bundle) == ["appt-b-yesterday"]
    assert sorted(_ids(bundle, "include")) == ["loc-2", "pat-b", "prac-other"]
    only_locations = fhir_get(
        sb, "Appointment?_id=appt-b-yesterday&_include=Appointment:actor:Location", user_token
    ).json()
    assert _ids(only_locations, "include") == ["loc-2"]
    bad = fhir_get(sb, "Appointment?_include=Patient:link", user_token)
    assert bad.status_code == 400


def test_search_pages_with_next_links(sb: SandboxHandle, user_token: str) -> None:
    url: str | None = f"{sb.fhir_base}/Appointment?patient=pat-a&_count=3"
    seen: list[str] = []
    pages = 0
    while url:
        bundle = fhir_get(sb, url, user_token).json()
        assert bundle["type"] == "searchset"
        assert bundle["total"] == 7
        seen += _ids(bundle)
        pages += 1
        url = next((link["url"] for link in bundle["link"] if link["relation"] == "next"), None)
    assert pages == 3
    assert len(seen) == len(set(seen)) == 7


def test_coverage_search_by_beneficiary_and_status(sb: SandboxHandle, user_token: str) -> None:
    assert _ids(fhir_get(sb, "Coverage?beneficiary=pat-b", user_token).json()) == ["cov-b"]
    assert _ids(fhir_get(sb, "Coverage?patient=Patient/pat-a", user_token).json()) == ["cov-a"]
    assert _ids(fhir_get(sb, "Coverage?status=active", user_token).json()) == ["cov-a"]


def test_questionnaire_search_by_canonical_url_and_version(
    sb: SandboxHandle, user_token: str
) -> None:
    assert sorted(_ids(fhir_get(sb, f"Questionnaire?url={Q_URL}", user_token).json())) == [
        "q1",
        "q2",
    ]
    assert _ids(fhir_get(sb, f"Questionnaire?url={Q_URL}|2.0.0", user_token).json()) == ["q2"]


def test_empty_for_knob_returns_empty_bundles(sb: SandboxHandle, user_token: str) -> None:
    sb.set_knobs(empty_for=["Coverage"])
    bundle = fhir_get(sb, "Coverage?patient=pat-a", user_token).json()
    assert bundle["total"] == 0 and "entry" not in bundle
    assert fhir_get(sb, "Coverage/cov-a", user_token).status_code == 200
    assert fhir_get(sb, "Patient?_id=pat-a", user_token).json()["total"] == 1


# --- create, conditional create, update, batch ------------------------------------


def test_create_questionnaire_response_and_find_it(sb: SandboxHandle, system_token: str) -> None:
    resp = fhir_post(sb, "QuestionnaireResponse", system_token, _qr("inv-1"))
    assert resp.status_code == 201, resp.text
    created = resp.json()
    assert created["meta"]["versionId"] == "1"
    assert resp.headers["Location"].startswith(
        f"{sb.fhir_base}/QuestionnaireResponse/{created['id']}"
    )
    assert resp.headers["ETag"] == 'W/"1"'
    for query in (
        "identifier=urn:caredesk:invitation|inv-1",
        "subject=Patient/pat-a",
        "patient=pat-a",
        f"questionnaire={Q_URL}",
    ):
        found = fhir_get(sb, f"QuestionnaireResponse?{query}", system_token).json()
        assert _ids(found) == [created["id"]], query


def test_conditional_create_returns_200_on_second_post(
    sb: SandboxHandle, system_token: str
) -> None:
    header = {"If-None-Exist": "identifier=urn:caredesk:invitation|inv-7"}
    first = fhir_post(sb, "QuestionnaireResponse", system_token, _qr("inv-7"), header)
    assert first.status_code == 201
    second = fhir_post(sb, "QuestionnaireResponse", system_token, _qr("inv-7"), header)
    assert second.status_code == 200
    assert second.json()["id"] == first.json()["id"]
    found = fhir_get(sb, "QuestionnaireResponse?identifier=inv-7", system_token).json()
    assert found["total"] == 1


def test_conditional_create_with_several_matches_is_412(
    sb: SandboxHandle, system_token: str
) -> None:
    for _ in range(2):
        assert fhir_post(sb, "QuestionnaireResponse", system_token, _qr("dup")).status_code == 201
    header = {"If-None-Exist": "identifier=urn:caredesk:invitation|dup"}
    resp = fhir_post(sb, "QuestionnaireResponse", system_token, _qr("dup"), header)
    assert resp.status_code == 412
    assert resp.json()["resourceType"] == "OperationOutcome"


def test_create_rejects_unknown_questionnaire_with_422(
    sb: SandboxHandle, system_token: str
) -> None:
    body = _qr("x", questionnaire="http://example.org/Questionnaire/unknown")
    resp = fhir_post(sb, "QuestionnaireResponse", system_token, body)
    assert resp.status_code == 422
    assert "unknown" in resp.json()["issue"][0]["diagnostics"]
    missing_status = {**_qr("y"), "status": ""}
    assert fhir_post(sb, "QuestionnaireResponse", system_token, missing_status).status_code == 422


def test_create_rejects_bad_json_and_wrong_type_with_400(
    sb: SandboxHandle, system_token: str
) -> None:
    resp = requests.post(
        f"{sb.fhir_base}/QuestionnaireResponse",
        data=b"{not json",
        headers={"Authorization": f"Bearer {system_token}"},
        timeout=10,
    )
    assert resp.status_code == 400
    assert resp.json()["resourceType"] == "OperationOutcome"
    wrong = fhir_post(sb, "QuestionnaireResponse", system_token, {"resourceType": "Patient"})
    assert wrong.status_code == 400


def test_task_and_service_request_create_and_search(sb: SandboxHandle, user_token: str) -> None:
    task = {
        "resourceType": "Task",
        "status": "requested",
        "intent": "order",
        "identifier": [{"system": "urn:caredesk:task", "value": "t-1"}],
        "for": {"reference": "Patient/pat-b"},
    }
    created = fhir_post(sb, "Task", user_token, task)
    assert created.status_code == 201, created.text
    assert _ids(fhir_get(sb, "Task?patient=pat-b", user_token).json()) == [created.json()["id"]]
    assert _ids(fhir_get(sb, "Task?identifier=t-1", user_token).json()) == [created.json()["id"]]
    sr = {
        "resourceType": "ServiceRequest",
        "status": "active",
        "intent": "order",
        "subject": {"reference": "Patient/pat-b"},
        "identifier": [{"system": "urn:caredesk:ref", "value": "r-1"}],
    }
    made = fhir_post(sb, "ServiceRequest", user_token, sr)
    assert made.status_code == 201
    assert _ids(fhir_get(sb, "ServiceRequest?patient=pat-b", user_token).json()) == [
        made.json()["id"]
    ]
    assert fhir_post(sb, "Task", user_token, {**task, "intent": None}).status_code == 422
    assert fhir_post(sb, "Patient", user_token, {"resourceType": "Patient"}).status_code == 405


def test_update_with_stale_if_match_is_412(sb: SandboxHandle, user_token: str) -> None:
    task = {"resourceType": "Task", "status": "requested", "intent": "order"}
    created = fhir_post(sb, "Task", user_token, task).json()
    url = f"{sb.fhir_base}/Task/{created['id']}"
    headers = {"Authorization": f"Bearer {user_token}", "If-Match": 'W/"1"'}
    done = {**created, "status": "completed"}
    ok = requests.put(url, json=done, headers=headers, timeout=10)
    assert ok.status_code == 200
    assert ok.headers["ETag"] == 'W/"2"'
    stale = requests.put(url, json=done, headers=headers, timeout=10)
    assert stale.status_code == 412


def test_batch_runs_each_entry_and_reports_each_status(
    sb: SandboxHandle, system_token: str
) -> None:
    bundle = {
        "resourceType": "Bundle",
        "type": "batch",
        "entry": [
            {"request": {"method": "GET", "url": "Patient/pat-a"}},
            {"request": {"method": "GET", "url": "Coverage?patient=pat-a"}},
            {"request": {"method": "GET", "url": "Patient/missing"}},
            {
                "resource": _qr("b-1"),
                "request": {
                    "method": "POST",
                    "url": "QuestionnaireResponse",
                    "ifNoneExist": "identifier=urn:caredesk:invitation|b-1",
                },
            },
        ],
    }
    resp = fhir_post(sb, "", system_token, bundle)
    assert resp.status_code == 200, resp.text
    out = resp.json()
    assert out["type"] == "batch-response"
    statuses = [e["response"]["status"] for e in out["entry"]]
    assert statuses == ["200 OK", "200 OK", "404 Not Found", "201 Created"]
    assert out["entry"][0]["resource"]["id"] == "pat-a"
    assert out["entry"][1]["resource"]["total"] == 1
    assert out["entry"][2]["response"]["outcome"]["resourceType"] == "OperationOutcome"
    again = fhir_post(sb, "", system_token, bundle).json()
    assert again["entry"][3]["response"]["status"] == "200 OK"


def test_batch_rejects_transaction(sb: SandboxHandle, system_token: str) -> None:
    resp = fhir_post(sb, "", system_token, {"resourceType": "Bundle", "type": "transaction"})
    assert resp.status_code == 400
