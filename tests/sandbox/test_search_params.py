"""Search parameters CareDesk needs: inbound-message matching by telecom, referrals,
name pickers and batched reads by id."""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import quote

import pytest
import requests

from sandbox.testing import SandboxHandle
from tests.sandbox.conftest import fhir_get, fhir_post, login


@pytest.fixture
def real_token(real: SandboxHandle) -> str:
    value: str = login(real, scope="openid fhirUser user/*.cruds", patient="pat-001")[
        "access_token"
    ]
    return value


@pytest.fixture
def user_token(sb: SandboxHandle) -> str:
    value: str = login(sb, scope="openid fhirUser user/*.cruds")["access_token"]
    return value


def _ids(resp: Any) -> list[str]:
    assert resp.status_code == 200, resp.text
    return [e["resource"]["id"] for e in resp.json().get("entry", [])]


def _first(patient: dict[str, Any], system: str) -> str:
    value: str = next(t["value"] for t in patient["telecom"] if t["system"] == system)
    return value


# --- telecom --------------------------------------------------------------------------


def test_patient_search_by_phone_ignores_punctuation_and_country_code(
    real: SandboxHandle, real_token: str
) -> None:
    patient = fhir_get(real, "Patient/pat-001", real_token).json()
    stored = _first(patient, "phone")  # "+1 312-555-0104" in the fixtures' style
    digits = re.sub(r"\D", "", stored)
    assert len(digits) == 11 and digits.startswith("1")
    local = digits[1:]
    forms = [
        "+" + digits,  # E.164, as an SMS provider sends it
        f"({local[:3]}) {local[3:6]}-{local[6:]}",
        f"{local[:3]}.{local[3:6]}.{local[6:]}",
        local,
        stored,
    ]
    for form in forms:
        found = _ids(fhir_get(real, f"Patient?phone={quote(form)}", real_token))
        assert "pat-001" in found, form
    # An unencoded "+" arrives as a space: still the same number.
    assert "pat-001" in _ids(fhir_get(real, f"Patient?phone=+{digits}", real_token))
    assert _ids(fhir_get(real, "Patient?phone=%2B19995550000", real_token)) == []


def test_patient_search_by_phone_returns_everyone_sharing_the_number(
    real: SandboxHandle, real_token: str
) -> None:
    everyone = fhir_get(real, "Patient?_count=1000", real_token).json()["entry"]
    by_number: dict[str, list[str]] = {}
    for entry in everyone:
        for cp in entry["resource"].get("telecom", []):
            if cp["system"] == "phone":
                by_number.setdefault(re.sub(r"\D", "", cp["value"]), []).append(
                    entry["resource"]["id"]
                )
    shared = next(number for number, ids in by_number.items() if len(set(ids)) > 1)
    found = _ids(fhir_get(real, f"Patient?phone=%2B{shared}", real_token))
    assert sorted(found) == sorted(set(by_number[shared]))


def test_patient_search_by_email_is_case_insensitive(real: SandboxHandle, real_token: str) -> None:
    email = _first(fhir_get(real, "Patient/pat-001", real_token).json(), "email")
    assert _ids(fhir_get(real, f"Patient?email={quote(email.upper())}", real_token)) == ["pat-001"]
    assert _ids(fhir_get(real, "Patient?email=nobody%40example.com", real_token)) == []
    # phone= does not look at email addresses, and email= not at phones.
    assert _ids(fhir_get(real, f"Patient?phone={quote(email)}", real_token)) == []


def test_patient_search_by_telecom_matches_phones_and_emails(
    real: SandboxHandle, real_token: str
) -> None:
    patient = fhir_get(real, "Patient/pat-001", real_token).json()
    email, phone = _first(patient, "email"), _first(patient, "phone")
    digits = re.sub(r"\D", "", phone)
    assert "pat-001" in _ids(fhir_get(real, f"Patient?telecom={quote(email)}", real_token))
    assert "pat-001" in _ids(fhir_get(real, f"Patient?telecom=%2B{digits}", real_token))
    with_system = f"Patient?telecom=email|{quote(email)}"
    assert _ids(fhir_get(real, with_system, real_token)) == ["pat-001"]
    assert _ids(fhir_get(real, f"Patient?telecom=phone|{quote(email)}", real_token)) == []


# --- names and ids ---------------------------------------------------------------------


def test_practitioner_search_by_partial_name_ignores_case_and_accents(
    real: SandboxHandle, real_token: str
) -> None:
    def names(query: str) -> list[str]:
        return _ids(fhir_get(real, f"Practitioner?name={quote(query)}", real_token))

    assert names("le") == ["prac-clinician-lee"]
    assert names("LEE") == ["prac-clinician-lee"]
    assert names("ana l") == ["prac-clinician-lee"]  # given then family, as typed
    assert names("ngu") == ["prac-clinician-nguyen"]
    assert names("zz") == []
    assert "pat-002" in _ids(fhir_get(real, "Patient?name=jose", real_token))  # José


def test_practitioner_and_location_read_many_by_id(sb: SandboxHandle, user_token: str) -> None:
    found = _ids(fhir_get(sb, "Practitioner?_id=prac-clinician-lee,prac-other", user_token))
    assert sorted(found) == ["prac-clinician-lee", "prac-other"]
    assert sorted(_ids(fhir_get(sb, "Location?_id=loc-1,loc-2,nope", user_token))) == [
        "loc-1",
        "loc-2",
    ]


# --- referrals ------------------------------------------------------------------------


def _service_request(sb: SandboxHandle, token: str, **extra: Any) -> dict[str, Any]:
    body = {
        "resourceType": "ServiceRequest",
        "status": "active",
        "intent": "order",
        "subject": {"reference": "Patient/pat-a"},
        "performer": [{"reference": "Practitioner/prac-other"}],
        "requester": {"reference": "Practitioner/prac-clinician-lee"},
        "authoredOn": "2026-11-30T09:00:00-06:00",
        **extra,
    }
    created = fhir_post(sb, "ServiceRequest", token, body)
    assert created.status_code == 201, created.text
    result: dict[str, Any] = created.json()
    return result


def test_appointment_search_by_based_on_service_request(sb: SandboxHandle, user_token: str) -> None:
    sr = _service_request(sb, user_token)
    booked = sb.put_resource(
        {
            "resourceType": "Appointment",
            "status": "booked",
            "start": "2026-12-03T10:00:00-06:00",
            "basedOn": [{"reference": f"ServiceRequest/{sr['id']}"}],
            "participant": [
                {"actor": {"reference": "Patient/pat-a"}, "status": "needs-action"},
                {"actor": {"reference": "Practitioner/prac-other"}, "status": "accepted"},
            ],
        }
    )
    for value in (
        f"ServiceRequest/{sr['id']}",
        sr["id"],
        f"{sb.fhir_base}/ServiceRequest/{sr['id']}",
    ):
        found = _ids(fhir_get(sb, f"Appointment?based-on={value}", user_token))
        assert found == [booked["id"]], value
    assert _ids(fhir_get(sb, "Appointment?based-on=ServiceRequest/other", user_token)) == []
    needs = _ids(fhir_get(sb, "Appointment?patient=pat-a&part-status=needs-action", user_token))
    assert needs == [booked["id"]]


def test_service_request_search_by_performer_requester_and_authored(
    sb: SandboxHandle, user_token: str
) -> None:
    sr = _service_request(sb, user_token)
    assert _ids(fhir_get(sb, "ServiceRequest?performer=Practitioner/prac-other", user_token)) == [
        sr["id"]
    ]
    by_requester = "ServiceRequest?requester=Practitioner/prac-clinician-lee"
    assert _ids(fhir_get(sb, by_requester, user_token)) == [sr["id"]]
    assert _ids(fhir_get(sb, "ServiceRequest?authored=ge2026-11-30", user_token)) == [sr["id"]]
    assert _ids(fhir_get(sb, "ServiceRequest?authored=lt2026-11-30", user_token)) == []


def test_task_search_by_based_on_owner_and_dates(sb: SandboxHandle, user_token: str) -> None:
    sr = _service_request(sb, user_token)
    task = {
        "resourceType": "Task",
        "status": "requested",
        "intent": "order",
        "for": {"reference": "Patient/pat-a"},
        "focus": {"reference": f"ServiceRequest/{sr['id']}"},
        "basedOn": [{"reference": f"ServiceRequest/{sr['id']}"}],
        "owner": {"reference": "Practitioner/prac-other"},
        "authoredOn": "2026-11-30T09:00:00-06:00",
        "lastModified": "2026-11-30T10:00:00-06:00",
    }
    created = fhir_post(sb, "Task", user_token, task).json()
    for query in (
        f"based-on=ServiceRequest/{sr['id']}",
        "owner=Practitioner/prac-other",
        "authored-on=2026-11-30",
        "modified=gt2026-11-30T09:30:00-06:00",
    ):
        assert _ids(fhir_get(sb, f"Task?{query}", user_token)) == [created["id"]], query
    assert _ids(fhir_get(sb, "Task?modified=lt2026-11-30T09:30:00-06:00", user_token)) == []


def test_last_updated_filters_on_when_the_server_stored_it(
    sb: SandboxHandle, user_token: str
) -> None:
    old = sb.put_resource(
        {
            "resourceType": "Appointment",
            "status": "booked",
            "start": "2026-12-01T10:00:00-06:00",
            "meta": {"lastUpdated": "2026-11-01T08:00:00-05:00"},
            "participant": [{"actor": {"reference": "Patient/pat-b"}, "status": "accepted"}],
        }
    )
    new = sb.put_resource(
        {
            "resourceType": "Appointment",
            "status": "booked",
            "start": "2026-12-01T11:00:00-06:00",
            "participant": [{"actor": {"reference": "Patient/pat-b"}, "status": "accepted"}],
        }
    )
    recent = _ids(fhir_get(sb, "Appointment?patient=pat-b&_lastUpdated=gt2026-11-15", user_token))
    assert new["id"] in recent and old["id"] not in recent
    early = _ids(fhir_get(sb, "Appointment?patient=pat-b&_lastUpdated=lt2026-11-15", user_token))
    assert early == [old["id"]]


def test_capability_statement_lists_the_new_search_params(sb: SandboxHandle) -> None:
    cap = requests.get(f"{sb.fhir_base}/metadata", timeout=10).json()
    params = {
        r["type"]: {p["name"]: p["type"] for p in r["searchParam"]}
        for r in cap["rest"][0]["resource"]
    }
    assert {"phone": "token", "email": "token", "telecom": "token"}.items() <= params[
        "Patient"
    ].items()
    assert params["Appointment"]["based-on"] == "reference"
    assert params["Appointment"]["_lastUpdated"] == "date"
    assert params["Task"]["modified"] == "date"
