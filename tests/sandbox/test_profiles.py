"""Vendor profiles and feature switches: each behaves as its CapabilityStatement says."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
from joserfc import jwk, jwt

from sandbox.testing import SandboxHandle, running_sandbox
from tests.sandbox.conftest import fhir_get, fhir_post, login, token_request
from tests.sandbox.population import Q_URL, population

QR = {
    "resourceType": "QuestionnaireResponse",
    "status": "completed",
    "questionnaire": Q_URL,
    "identifier": {"system": "urn:x", "value": "same"},
    "subject": {"reference": "Patient/pat-a"},
}
COND = {"If-None-Exist": "identifier=urn:x|same"}


@pytest.fixture
def epic(clients: list[dict[str, Any]]) -> Iterator[SandboxHandle]:
    with running_sandbox(profile="epic", clients=clients, population=population()) as sb:
        yield sb


@pytest.fixture
def oracle(clients: list[dict[str, Any]]) -> Iterator[SandboxHandle]:
    with running_sandbox(profile="oracle", clients=clients, population=population()) as sb:
        yield sb


def _capability(sb: SandboxHandle) -> dict[str, Any]:
    cap: dict[str, Any] = requests.get(f"{sb.fhir_base}/metadata", timeout=10).json()
    return cap


def _resource_caps(sb: SandboxHandle) -> dict[str, dict[str, Any]]:
    return {r["type"]: r for r in _capability(sb)["rest"][0]["resource"]}


def _interactions(entry: dict[str, Any]) -> set[str]:
    return {i["code"] for i in entry["interaction"]}


# --- epic -------------------------------------------------------------------------------


def test_epic_id_token_issuer_differs_from_fhir_base(epic: SandboxHandle) -> None:
    body = login(epic)
    keys = jwk.KeySet.import_key_set(requests.get(f"{epic.base_url}/auth/jwks", timeout=10).json())
    claims = jwt.decode(body["id_token"], keys, algorithms=["RS256"]).claims
    assert claims["iss"] == f"{epic.base_url}/oauth2"
    assert claims["iss"] != epic.fhir_base
    conf = requests.get(f"{epic.fhir_base}/.well-known/smart-configuration", timeout=10).json()
    assert conf["issuer"] == claims["iss"]
    oidc = requests.get(f"{claims['iss']}/.well-known/openid-configuration", timeout=10)
    assert oidc.json()["jwks_uri"] == f"{epic.base_url}/auth/jwks"


def test_epic_returns_refresh_token_while_scope_omits_offline_access(epic: SandboxHandle) -> None:
    body = login(epic)
    assert "offline_access" not in body["scope"].split()
    assert body["refresh_token"]
    refreshed = token_request(
        epic,
        {"grant_type": "refresh_token", "refresh_token": body["refresh_token"], "client_id": "pub"},
    )
    assert refreshed.status_code == 200


def test_epic_access_tokens_are_opaque(epic: SandboxHandle) -> None:
    token = login(epic)["access_token"]
    assert token.count(".") != 2
    assert fhir_get(epic, "Patient/pat-a", token).status_code == 200


def test_epic_has_no_conditional_create(epic: SandboxHandle) -> None:
    token = login(epic, scope="openid fhirUser user/*.cruds")["access_token"]
    first = fhir_post(epic, "QuestionnaireResponse", token, QR, COND)
    second = fhir_post(epic, "QuestionnaireResponse", token, QR, COND)
    # If-None-Exist is ignored: two resources. A client must search first.
    assert (first.status_code, second.status_code) == (201, 201)
    assert first.json()["id"] != second.json()["id"]
    assert _resource_caps(epic)["QuestionnaireResponse"]["conditionalCreate"] is False


def test_epic_questionnaire_is_read_only(epic: SandboxHandle) -> None:
    token = login(epic, scope="openid fhirUser user/*.cruds")["access_token"]
    q = {"resourceType": "Questionnaire", "status": "active", "url": "http://x/q"}
    resp = fhir_post(epic, "Questionnaire", token, q)
    assert resp.status_code == 405
    assert resp.json()["issue"][0]["code"] == "not-supported"
    assert _interactions(_resource_caps(epic)["Questionnaire"]) == {"read", "search-type"}


def test_epic_serves_ids_longer_than_64_characters(epic: SandboxHandle) -> None:
    token = login(epic, scope="openid fhirUser user/*.rs")["access_token"]
    bundle = fhir_get(epic, "Appointment?patient=pat-a&_count=100", token).json()
    ids = [e["resource"]["id"] for e in bundle["entry"]]
    long_ids = [i for i in ids if len(i) > 64]
    assert long_ids
    assert fhir_get(epic, f"Appointment/{long_ids[0]}", token).status_code == 200
    coverage = fhir_get(epic, "Coverage?patient=pat-a", token).json()
    assert coverage["total"] == 1  # references were rewritten along with the ids


def test_epic_capability_statement_names_profile_and_oauth_uris(epic: SandboxHandle) -> None:
    cap = _capability(epic)
    assert "epic" in cap["description"]
    assert "conditional-create" in cap["description"]
    ext = cap["rest"][0]["security"]["extension"][0]
    assert ext["url"] == "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris"


# --- oracle -----------------------------------------------------------------------------


def test_oracle_has_no_questionnaire_response_create(oracle: SandboxHandle) -> None:
    token = login(oracle, scope="openid fhirUser user/*.cruds")["access_token"]
    resp = fhir_post(oracle, "QuestionnaireResponse", token, QR)
    assert resp.status_code == 405
    caps = _resource_caps(oracle)
    assert "create" not in _interactions(caps["QuestionnaireResponse"])


def test_oracle_has_no_task(oracle: SandboxHandle) -> None:
    token = login(oracle, scope="openid fhirUser user/*.cruds")["access_token"]
    assert fhir_get(oracle, "Task?patient=pat-a", token).status_code == 404
    task = {"resourceType": "Task", "status": "requested", "intent": "order"}
    assert fhir_post(oracle, "Task", token, task).status_code == 404
    assert "Task" not in _resource_caps(oracle)


def test_oracle_tokens_live_ten_minutes(oracle: SandboxHandle) -> None:
    assert login(oracle)["expires_in"] == 600


def test_oracle_refreshes_only_with_online_or_offline_access(oracle: SandboxHandle) -> None:
    assert "refresh_token" not in login(oracle, scope="launch/patient patient/*.rs")
    online = login(oracle, scope="launch/patient online_access patient/*.rs")
    assert online["refresh_token"]
    assert "online_access" in online["scope"].split()


# --- thirdparty -----------------------------------------------------------------------


# The fixtures population has no pat-a for the picker: a user-level login, no patient.
USER_SCOPE = "openid fhirUser offline_access user/*.rs"


@pytest.fixture
def thirdparty(clients: list[dict[str, Any]]) -> Iterator[SandboxHandle]:
    """The fixtures population: its references carry display, so dropping them shows."""
    with running_sandbox(profile="thirdparty", clients=clients) as sb:
        yield sb


def _refresh(sb: SandboxHandle, refresh_token: str) -> requests.Response:
    data = {"grant_type": "refresh_token", "refresh_token": refresh_token, "client_id": "pub"}
    return token_request(sb, data)


def test_thirdparty_references_carry_no_display(thirdparty: SandboxHandle) -> None:
    token = login(thirdparty, scope=USER_SCOPE)
    query = "Appointment?patient=pat-001&_include=Appointment:actor"
    bundle = fhir_get(thirdparty, query, token["access_token"]).json()
    actors = [
        p["actor"]
        for e in bundle["entry"]
        if e["resource"]["resourceType"] == "Appointment"
        for p in e["resource"]["participant"]
    ]
    assert actors and all(set(a) == {"reference"} for a in actors)
    # The names are there to read: the referenced Practitioners come along.
    included = {e["resource"]["resourceType"] for e in bundle["entry"][1:]}
    assert "Practitioner" in included


def test_thirdparty_has_no_canonical_version_search(thirdparty: SandboxHandle) -> None:
    token = login(thirdparty, scope=USER_SCOPE)
    access = token["access_token"]
    q = fhir_get(thirdparty, "Questionnaire", access).json()["entry"][0]["resource"]
    piped = fhir_get(thirdparty, f"Questionnaire?url={q['url']}|{q['version']}", access)
    assert piped.json()["total"] == 0
    apart = fhir_get(thirdparty, f"Questionnaire?url={q['url']}&version={q['version']}", access)
    assert [e["resource"]["id"] for e in apart.json()["entry"]] == [q["id"]]


def test_thirdparty_launch_iss_has_trailing_slash_and_fhir_user_is_relative(
    thirdparty: SandboxHandle,
) -> None:
    url = thirdparty.launch("pub", patient="pat-001")["url"]
    assert parse_qs(urlsplit(url).query)["iss"] == [thirdparty.fhir_base + "/"]
    body = login(thirdparty, scope=USER_SCOPE)
    keys = jwk.KeySet.import_key_set(
        requests.get(f"{thirdparty.base_url}/auth/jwks", timeout=10).json()
    )
    claims = jwt.decode(body["id_token"], keys, algorithms=["RS256"]).claims
    assert claims["fhirUser"] == "Practitioner/prac-clinician-lee"


def test_thirdparty_rotates_refresh_tokens_and_drops_aud_on_refresh(
    thirdparty: SandboxHandle,
) -> None:
    first = login(thirdparty, scope=USER_SCOPE)
    keys = jwk.KeySet.import_key_set(
        requests.get(f"{thirdparty.base_url}/auth/jwks", timeout=10).json()
    )
    assert jwt.decode(first["id_token"], keys, algorithms=["RS256"]).claims["aud"] == "pub"
    second = _refresh(thirdparty, first["refresh_token"])
    assert second.status_code == 200, second.text
    refreshed = second.json()
    assert refreshed["refresh_token"] != first["refresh_token"]
    assert "aud" not in jwt.decode(refreshed["id_token"], keys, algorithms=["RS256"]).claims
    old = _refresh(thirdparty, first["refresh_token"])
    assert (old.status_code, old.json()["error"]) == (400, "invalid_grant")


def test_thirdparty_knobs_are_the_profile_defaults_and_can_be_changed(
    thirdparty: SandboxHandle,
) -> None:
    knobs = thirdparty.get_knobs()
    assert knobs["omit_display"] is True
    assert knobs["canonical_version_search"] is False
    assert knobs["refresh_id_token"] == "no-aud"
    thirdparty.set_knobs(omit_display=False)
    assert thirdparty.get_knobs()["omit_display"] is False
    with running_sandbox(
        profile="thirdparty", population=population(), refresh_id_token="omit"
    ) as sb:
        assert sb.get_knobs()["refresh_id_token"] == "omit"  # what you set wins


# --- feature switches -------------------------------------------------------------------


def test_disabled_well_known_leaves_only_oauth_uris(clients: list[dict[str, Any]]) -> None:
    with running_sandbox(clients=clients, population=population(), disabled=["well-known"]) as sb:
        url = f"{sb.fhir_base}/.well-known/smart-configuration"
        assert requests.get(url, timeout=10).status_code == 404
        ext = _capability(sb)["rest"][0]["security"]["extension"][0]["extension"]
        assert {e["url"] for e in ext} >= {"authorize", "token"}


def test_disabled_features_refuse_and_show_in_metadata(sb: SandboxHandle) -> None:
    token = login(sb, scope="openid fhirUser user/*.cruds")["access_token"]
    sb.set_knobs(disabled=["batch", "task-create", "service-request-create"])
    batch = fhir_post(sb, "", token, {"resourceType": "Bundle", "type": "batch", "entry": []})
    assert batch.status_code == 405
    task = {"resourceType": "Task", "status": "requested", "intent": "order"}
    assert fhir_post(sb, "Task", token, task).status_code == 405
    assert fhir_get(sb, "Task", token).status_code == 200
    cap = _capability(sb)
    assert "interaction" not in cap["rest"][0]
    caps = _resource_caps(sb)
    assert "create" not in _interactions(caps["Task"])
    assert "create" not in _interactions(caps["ServiceRequest"])
    assert "create" in _interactions(caps["QuestionnaireResponse"])


@pytest.mark.parametrize("profile", ["smart", "epic", "oracle", "thirdparty"])
def test_capability_statement_is_valid_r4(profile: str) -> None:
    from fhir.resources.R4B.capabilitystatement import CapabilityStatement

    with running_sandbox(profile=profile, population=population()) as sb:
        cap = CapabilityStatement.model_validate(_capability(sb))
    assert cap.software is not None
    assert cap.software.version == f"profile-{profile}"
