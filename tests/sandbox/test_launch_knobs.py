"""Knobs for what real servers do at launch and at the token endpoint."""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest
import requests
from joserfc import jwk, jwt

from sandbox.testing import SandboxHandle
from tests.sandbox.conftest import (
    REDIRECT,
    Pkce,
    authorize_params,
    exchange,
    fhir_get,
    login,
    token_request,
)


def _refresh(sb: SandboxHandle, refresh_token: str) -> requests.Response:
    data = {"grant_type": "refresh_token", "refresh_token": refresh_token, "client_id": "pub"}
    return token_request(sb, data)


def _claims(sb: SandboxHandle, token: str) -> dict[str, Any]:
    keys = jwk.KeySet.import_key_set(requests.get(f"{sb.base_url}/auth/jwks", timeout=10).json())
    return dict(jwt.decode(token, keys, algorithms=["RS256"]).claims)


def _ehr_login(sb: SandboxHandle, scope: str) -> dict[str, Any]:
    pkce = Pkce.new()
    launch = sb.launch("pub", patient="pat-a")["launch"]
    params = authorize_params(sb, pkce, scope=scope, launch=launch)
    resp = requests.get(
        f"{sb.base_url}/auth/authorize", params=params, allow_redirects=False, timeout=10
    )
    code = parse_qs(urlsplit(resp.headers["Location"]).query)["code"][0]
    token = exchange(sb, code, pkce.verifier)
    assert token.status_code == 200, token.text
    body: dict[str, Any] = token.json()
    return body


# --- iss with a trailing slash ----------------------------------------------------------


def test_launch_link_iss_has_a_trailing_slash_with_the_knob(sb: SandboxHandle) -> None:
    plain = parse_qs(urlsplit(sb.launch("pub", patient="pat-a")["url"]).query)
    assert plain["iss"] == [sb.fhir_base]
    sb.set_knobs(iss_trailing_slash=True)
    slashed = parse_qs(urlsplit(sb.launch("pub", patient="pat-a")["url"]).query)
    assert slashed["iss"] == [sb.fhir_base + "/"]
    iss = slashed["iss"][0]
    # Discovery below that iss works; the server's own names stay without the slash.
    conf = requests.get(f"{iss}.well-known/smart-configuration", timeout=10).json()
    assert conf["issuer"] == sb.fhir_base
    # aud as the launch link gave it is accepted.
    body = login(sb, aud=iss)
    assert _claims(sb, body["access_token"])["aud"] == sb.fhir_base


# --- fhirUser ---------------------------------------------------------------------------


def test_fhir_user_is_relative_by_default_and_absolute_with_the_knob(sb: SandboxHandle) -> None:
    relative = _claims(sb, login(sb)["id_token"])
    assert relative["fhirUser"] == "Practitioner/prac-clinician-lee"
    sb.set_knobs(fhir_user_relative=False)
    body = login(sb)
    absolute = _claims(sb, body["id_token"])
    assert absolute["fhirUser"] == f"{sb.fhir_base}/Practitioner/prac-clinician-lee"
    info = requests.post(
        f"{sb.base_url}/auth/introspect", data={"token": body["access_token"]}, timeout=10
    ).json()
    assert info["fhirUser"] == absolute["fhirUser"]


# --- refresh rotation -------------------------------------------------------------------


def test_rotating_refresh_refuses_the_old_token_with_invalid_grant(sb: SandboxHandle) -> None:
    assert sb.get_knobs()["rotate_refresh"] is True
    first = login(sb)
    second = _refresh(sb, first["refresh_token"]).json()
    third = _refresh(sb, second["refresh_token"]).json()
    assert len({first["refresh_token"], second["refresh_token"], third["refresh_token"]}) == 3
    reused = _refresh(sb, second["refresh_token"])
    assert (reused.status_code, reused.json()["error"]) == (400, "invalid_grant")


def test_without_rotation_the_refresh_token_is_reused(sb: SandboxHandle) -> None:
    sb.set_knobs(rotate_refresh=False)
    first = login(sb)
    for _ in range(3):
        resp = _refresh(sb, first["refresh_token"])
        assert resp.status_code == 200, resp.text
        # RFC 6749 6: no new refresh token, so the client keeps the one it has.
        assert "refresh_token" not in resp.json()
        assert fhir_get(sb, "Patient/pat-a", resp.json()["access_token"]).status_code == 200


# --- refreshed id_token -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("mode", "aud"), [("normal", "pub"), ("no-aud", None), ("omit", "no id_token")]
)
def test_refreshed_id_token_modes(sb: SandboxHandle, mode: str, aud: str | None) -> None:
    sb.set_knobs(refresh_id_token=mode)
    first = login(sb, nonce="n-1")
    assert _claims(sb, first["id_token"])["aud"] == "pub"  # the launch's is always whole
    refreshed = _refresh(sb, first["refresh_token"]).json()
    if aud == "no id_token":
        assert "id_token" not in refreshed
        return
    claims = _claims(sb, refreshed["id_token"])
    assert claims.get("aud") == aud
    assert claims["fhirUser"] == "Practitioner/prac-clinician-lee"
    assert claims["iss"] == sb.fhir_base


def test_refresh_id_token_knob_rejects_unknown_modes(sb: SandboxHandle) -> None:
    resp = requests.post(
        f"{sb.base_url}/admin/knobs", json={"refresh_id_token": "strange"}, timeout=10
    )
    assert resp.status_code == 400
    assert "normal" in resp.json()["error"]


# --- consent: unticked scopes -----------------------------------------------------------


def test_consent_drop_scopes_on_ehr_launch_narrow_the_grant(sb: SandboxHandle) -> None:
    sb.set_knobs(consent_drop_scopes=["patient/Coverage.rs", "offline_access"])
    body = _ehr_login(
        sb, "launch openid fhirUser offline_access patient/Patient.rs patient/Coverage.rs"
    )
    assert body["scope"].split() == ["launch", "openid", "fhirUser", "patient/Patient.rs"]
    assert "refresh_token" not in body
    assert fhir_get(sb, "Patient/pat-a", body["access_token"]).status_code == 200
    refused = fhir_get(sb, "Coverage?patient=pat-a", body["access_token"])
    assert refused.status_code == 403
    outcome = refused.json()
    assert outcome["resourceType"] == "OperationOutcome"
    assert outcome["issue"][0]["code"] == "forbidden"


def test_consent_page_shows_scopes_as_checkboxes_and_honours_unticking(
    sb: SandboxHandle,
) -> None:
    pkce = Pkce.new()
    scope = "launch/patient openid fhirUser patient/Patient.rs patient/Appointment.rs"
    params = authorize_params(sb, pkce, scope=scope)
    url = f"{sb.base_url}/auth/authorize?{urlencode(params)}"
    page = requests.get(url, timeout=10).text
    for s in scope.split():
        assert f'name="scope" value="{s}" checked' in page
    callback = sb.approve(url, untick=["patient/Appointment.rs"])
    code = parse_qs(urlsplit(callback).query)["code"][0]
    body = exchange(sb, code, pkce.verifier).json()
    assert "patient/Appointment.rs" not in body["scope"].split()
    assert fhir_get(sb, "Appointment?patient=pat-a", body["access_token"]).status_code == 403
    assert fhir_get(sb, "Patient/pat-a", body["access_token"]).status_code == 200


def test_consent_page_starts_with_the_knobs_scopes_unticked(sb: SandboxHandle) -> None:
    sb.set_knobs(consent_drop_scopes=["patient/Appointment.rs"])
    pkce = Pkce.new()
    scope = "launch/patient openid fhirUser patient/Patient.rs patient/Appointment.rs"
    params = authorize_params(sb, pkce, scope=scope)
    page = requests.get(f"{sb.base_url}/auth/authorize?{urlencode(params)}", timeout=10).text
    assert 'value="patient/Appointment.rs">' in page  # shown, not ticked
    assert 'value="patient/Patient.rs" checked' in page
    # A script that posts the picker without the consent fields still loses it.
    pending = page.split('name="pending" value="', 1)[1].split('"', 1)[0]
    resp = requests.post(
        f"{sb.base_url}/auth/authorize/decide",
        data={
            "pending": pending,
            "decision": "approve",
            "user": "prac-clinician-lee",
            "patient": "pat-a",
        },
        allow_redirects=False,
        timeout=10,
    )
    code = parse_qs(urlsplit(resp.headers["Location"]).query)["code"][0]
    body = exchange(sb, code, pkce.verifier).json()
    assert body["scope"].split() == ["launch/patient", "openid", "fhirUser", "patient/Patient.rs"]
    assert resp.headers["Location"].startswith(REDIRECT)
