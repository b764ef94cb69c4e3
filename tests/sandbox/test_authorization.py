"""Authorization-code flow: what a misbehaving client gets from the sandbox."""

from __future__ import annotations

from urllib.parse import parse_qs, urlencode, urlsplit

import requests

from sandbox.testing import SandboxHandle
from tests.sandbox.conftest import (
    REDIRECT,
    SECRET,
    Pkce,
    authorize,
    authorize_params,
    exchange,
    fhir_get,
    get_code,
    login,
)


def _authorize_raw(sb: SandboxHandle, params: dict[str, str]) -> requests.Response:
    return requests.get(
        f"{sb.base_url}/auth/authorize?{urlencode(params)}", allow_redirects=False, timeout=10
    )


def _redirect_query(resp: requests.Response) -> dict[str, list[str]]:
    assert resp.status_code == 302, resp.text
    return parse_qs(urlsplit(resp.headers["Location"]).query)


def test_standalone_launch_returns_token_with_patient_context(sb: SandboxHandle) -> None:
    body = login(sb)
    assert body["token_type"] == "Bearer"
    assert body["patient"] == "pat-a"
    assert body["need_patient_banner"] is True
    assert body["smart_style_url"] == f"{sb.base_url}/style/smart-style.json"
    assert set(body["scope"].split()) == {
        "launch/patient",
        "openid",
        "fhirUser",
        "offline_access",
        "patient/*.rs",
    }
    assert body["refresh_token"] and body["id_token"]
    assert requests.get(body["smart_style_url"], timeout=10).json()["color_highlight"]
    patient = fhir_get(sb, "Patient/pat-a", body["access_token"])
    assert patient.status_code == 200
    assert patient.json()["id"] == "pat-a"


def test_authorize_echoes_state(sb: SandboxHandle) -> None:
    params = authorize_params(sb, Pkce.new(), state="my-state-123")
    assert authorize(sb, params)["state"] == ["my-state-123"]


def test_authorize_post_is_supported(sb: SandboxHandle) -> None:
    pkce = Pkce.new()
    launch = sb.launch("pub", patient="pat-b")["launch"]
    params = authorize_params(sb, pkce, scope="launch openid fhirUser patient/*.rs", launch=launch)
    resp = requests.post(
        f"{sb.base_url}/auth/authorize", data=params, allow_redirects=False, timeout=10
    )
    code = _redirect_query(resp)["code"][0]
    token = exchange(sb, code, pkce.verifier).json()
    assert token["patient"] == "pat-b"


def test_authorize_rejects_wrong_redirect_uri_without_redirecting(sb: SandboxHandle) -> None:
    params = authorize_params(sb, Pkce.new(), redirect_uri="http://127.0.0.1:9/evil")
    resp = _authorize_raw(sb, params)
    assert resp.status_code == 400
    assert "Location" not in resp.headers
    assert "redirect_uri" in resp.text


def test_authorize_rejects_prefix_of_registered_redirect_uri(sb: SandboxHandle) -> None:
    params = authorize_params(sb, Pkce.new(), redirect_uri=REDIRECT + "/more")
    assert _authorize_raw(sb, params).status_code == 400


def test_authorize_rejects_unknown_client(sb: SandboxHandle) -> None:
    resp = _authorize_raw(sb, authorize_params(sb, Pkce.new(), client_id="nobody"))
    assert resp.status_code == 400
    assert "Location" not in resp.headers


def test_authorize_requires_pkce(sb: SandboxHandle) -> None:
    params = authorize_params(sb, Pkce.new(), code_challenge=None, code_challenge_method=None)
    query = _redirect_query(_authorize_raw(sb, params))
    assert query["error"] == ["invalid_request"]
    assert "PKCE" in query["error_description"][0]
    assert query["state"] == [params["state"]]


def test_authorize_rejects_plain_pkce(sb: SandboxHandle) -> None:
    params = authorize_params(sb, Pkce.new(), code_challenge_method="plain")
    assert _redirect_query(_authorize_raw(sb, params))["error"] == ["invalid_request"]


def test_authorize_rejects_missing_aud(sb: SandboxHandle) -> None:
    params = authorize_params(sb, Pkce.new(), aud=None)
    query = _redirect_query(_authorize_raw(sb, params))
    assert query["error"] == ["invalid_request"]
    assert "aud" in query["error_description"][0]


def test_authorize_rejects_aud_of_another_server(sb: SandboxHandle) -> None:
    params = authorize_params(sb, Pkce.new(), aud="http://127.0.0.1:1/fhir")
    assert _redirect_query(_authorize_raw(sb, params))["error"] == ["invalid_request"]


def test_authorize_rejects_unknown_launch(sb: SandboxHandle) -> None:
    params = authorize_params(sb, Pkce.new(), scope="launch patient/*.rs", launch="made-up")
    assert _redirect_query(_authorize_raw(sb, params))["error"] == ["invalid_request"]


def test_authorize_rejects_launch_issued_for_another_client(sb: SandboxHandle) -> None:
    launch = sb.launch("conf", patient="pat-a")["launch"]
    params = authorize_params(sb, Pkce.new(), scope="launch patient/*.rs", launch=launch)
    assert _redirect_query(_authorize_raw(sb, params))["error"] == ["invalid_request"]


def test_authorize_requires_state(sb: SandboxHandle) -> None:
    params = authorize_params(sb, Pkce.new(), state=None)
    assert _redirect_query(_authorize_raw(sb, params))["error"] == ["invalid_request"]


def test_user_denying_access_returns_access_denied(sb: SandboxHandle) -> None:
    params = authorize_params(sb, Pkce.new())
    page = _authorize_raw(sb, params)
    pending = page.text.split('name="pending" value="')[1].split('"')[0]
    resp = requests.post(
        f"{sb.base_url}/auth/authorize/decide",
        data={"pending": pending, "decision": "deny"},
        allow_redirects=False,
        timeout=10,
    )
    assert _redirect_query(resp)["error"] == ["access_denied"]


def test_token_rejects_wrong_redirect_uri(sb: SandboxHandle) -> None:
    pkce = Pkce.new()
    code = get_code(sb, pkce)
    resp = exchange(sb, code, pkce.verifier, extra={"redirect_uri": "http://127.0.0.1:9/other"})
    assert resp.status_code == 400
    assert resp.json()["error"] == "invalid_grant"


def test_token_rejects_missing_pkce_verifier(sb: SandboxHandle) -> None:
    code = get_code(sb, Pkce.new())
    resp = exchange(sb, code, None)
    assert resp.status_code == 400
    assert resp.json()["error"] == "invalid_grant"


def test_token_rejects_wrong_pkce_verifier(sb: SandboxHandle) -> None:
    code = get_code(sb, Pkce.new())
    resp = exchange(sb, code, Pkce.new().verifier)
    assert resp.status_code == 400
    assert resp.json()["error"] == "invalid_grant"


def test_token_rejects_reused_code_and_revokes_its_tokens(sb: SandboxHandle) -> None:
    pkce = Pkce.new()
    code = get_code(sb, pkce)
    first = exchange(sb, code, pkce.verifier)
    assert first.status_code == 200
    access = first.json()["access_token"]
    assert fhir_get(sb, "Patient/pat-a", access).status_code == 200
    second = exchange(sb, code, pkce.verifier)
    assert second.status_code == 400
    assert second.json()["error"] == "invalid_grant"
    # RFC 6749 4.1.2: tokens issued from a replayed code are revoked.
    assert fhir_get(sb, "Patient/pat-a", access).status_code == 401


def test_token_rejects_code_from_another_client(sb: SandboxHandle) -> None:
    pkce = Pkce.new()
    code = get_code(sb, pkce)
    resp = exchange(sb, code, pkce.verifier, auth=("conf", SECRET))
    assert resp.status_code == 400
    assert resp.json()["error"] == "invalid_grant"


def test_confidential_client_authenticates_with_basic(sb: SandboxHandle) -> None:
    pkce = Pkce.new()
    code = get_code(sb, pkce, client_id="conf")
    resp = exchange(sb, code, pkce.verifier, auth=("conf", SECRET))
    assert resp.status_code == 200, resp.text
    assert resp.headers["Cache-Control"] == "no-store"


def test_confidential_client_with_wrong_secret_is_rejected(sb: SandboxHandle) -> None:
    pkce = Pkce.new()
    code = get_code(sb, pkce, client_id="conf")
    resp = exchange(sb, code, pkce.verifier, auth=("conf", "wrong"))
    assert resp.status_code == 401
    assert resp.json()["error"] == "invalid_client"


def test_confidential_client_without_credentials_is_rejected(sb: SandboxHandle) -> None:
    pkce = Pkce.new()
    code = get_code(sb, pkce, client_id="conf")
    resp = exchange(sb, code, pkce.verifier, client_id="conf")
    assert resp.status_code == 401
    assert resp.json()["error"] == "invalid_client"


def test_scopes_outside_registration_are_dropped_from_grant(sb: SandboxHandle) -> None:
    body = login(
        sb,
        client_id="narrow",
        scope="launch/patient patient/Patient.rs patient/Coverage.rs user/*.cruds",
    )
    assert body["scope"].split() == ["launch/patient", "patient/Patient.rs"]
    assert fhir_get(sb, "Coverage?patient=pat-a", body["access_token"]).status_code == 403


def test_ehr_launch_carries_encounter_and_banner_context(sb: SandboxHandle) -> None:
    pkce = Pkce.new()
    launch = requests.post(
        f"{sb.base_url}/admin/launch",
        json={"client_id": "pub", "patient": "pat-a", "encounter": "enc-a"},
        timeout=10,
    ).json()
    assert launch["url"].startswith("http://127.0.0.1:9/launch?")
    launch_query = parse_qs(urlsplit(launch["url"]).query)
    assert launch_query["iss"] == [sb.fhir_base]
    assert launch_query["launch"] == [launch["launch"]]
    params = authorize_params(
        sb, pkce, scope="launch openid fhirUser patient/*.rs", launch=launch["launch"]
    )
    code = _redirect_query(_authorize_raw(sb, params))["code"][0]
    body = exchange(sb, code, pkce.verifier).json()
    assert body["patient"] == "pat-a"
    assert body["encounter"] == "enc-a"
    assert body["need_patient_banner"] is False
    assert "refresh_token" not in body  # neither offline_access nor online_access asked


def test_token_endpoint_rejects_unknown_grant_type(sb: SandboxHandle) -> None:
    resp = requests.post(
        f"{sb.base_url}/auth/token",
        data={"grant_type": "password", "client_id": "pub"},
        timeout=10,
    )
    assert resp.status_code == 400
    assert resp.json()["error"] == "unsupported_grant_type"
