"""Refresh tokens, backend services, id_token, jwks and introspection."""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import requests
from joserfc import jwk, jwt
from werkzeug.serving import make_server
from werkzeug.wrappers import Response

from sandbox.testing import SandboxHandle, running_sandbox
from tests.sandbox.conftest import (
    Pkce,
    authorize,
    authorize_params,
    backend_token,
    client_assertion,
    exchange,
    fhir_get,
    login,
    token_request,
)
from tests.sandbox.population import population


def _refresh(sb: SandboxHandle, refresh_token: str, **extra: str) -> requests.Response:
    data = {"grant_type": "refresh_token", "refresh_token": refresh_token, "client_id": "pub"}
    data.update(extra)
    return token_request(sb, data)


# --- refresh ------------------------------------------------------------------------


def test_refresh_rotates_the_refresh_token(sb: SandboxHandle) -> None:
    first = login(sb)
    resp = _refresh(sb, first["refresh_token"])
    assert resp.status_code == 200, resp.text
    second = resp.json()
    assert second["refresh_token"] != first["refresh_token"]
    assert second["access_token"] != first["access_token"]
    assert second["patient"] == "pat-a"
    assert fhir_get(sb, "Patient/pat-a", second["access_token"]).status_code == 200
    assert _refresh(sb, second["refresh_token"]).status_code == 200


def test_reused_refresh_token_revokes_the_whole_grant(sb: SandboxHandle) -> None:
    first = login(sb)
    second = _refresh(sb, first["refresh_token"]).json()
    reuse = _refresh(sb, first["refresh_token"])
    assert reuse.status_code == 400
    assert reuse.json()["error"] == "invalid_grant"
    # The legitimate holder's tokens die with it: one copy was stolen.
    assert fhir_get(sb, "Patient/pat-a", second["access_token"]).status_code == 401
    assert _refresh(sb, second["refresh_token"]).json()["error"] == "invalid_grant"


def test_refresh_rejects_scope_escalation(sb: SandboxHandle) -> None:
    first = login(sb)
    resp = _refresh(sb, first["refresh_token"], scope="patient/*.rs user/*.cruds")
    assert resp.status_code == 400
    assert resp.json()["error"] == "invalid_scope"


def test_refresh_may_narrow_the_scope(sb: SandboxHandle) -> None:
    first = login(sb)
    resp = _refresh(sb, first["refresh_token"], scope="offline_access patient/Patient.rs")
    assert resp.status_code == 200, resp.text
    narrowed = resp.json()
    assert narrowed["scope"] == "offline_access patient/Patient.rs"
    assert fhir_get(sb, "Patient/pat-a", narrowed["access_token"]).status_code == 200
    assert fhir_get(sb, "Coverage?patient=pat-a", narrowed["access_token"]).status_code == 403


def test_refresh_token_only_with_offline_or_online_access(sb: SandboxHandle) -> None:
    body = login(sb, scope="launch/patient patient/*.rs")
    assert "refresh_token" not in body
    online = login(sb, scope="launch/patient online_access patient/*.rs")
    assert online["refresh_token"]


def test_refresh_by_another_client_is_rejected(sb: SandboxHandle) -> None:
    first = login(sb)
    resp = token_request(
        sb,
        {"grant_type": "refresh_token", "refresh_token": first["refresh_token"]},
        auth=("conf", "s3cret-for-tests"),
    )
    assert resp.json()["error"] == "invalid_grant"


def test_drop_refresh_tokens_knob_invalidates_refresh(sb: SandboxHandle) -> None:
    first = login(sb)
    sb.set_knobs(drop_refresh_tokens=True)
    assert _refresh(sb, first["refresh_token"]).json()["error"] == "invalid_grant"
    assert "refresh_token" not in login(sb)


def test_token_lifetime_knob_sets_expiry(sb: SandboxHandle) -> None:
    sb.set_knobs(token_lifetime_s=60)
    body = login(sb)
    assert body["expires_in"] == 60
    assert fhir_get(sb, "Patient/pat-a", body["access_token"]).status_code == 200
    sb.advance_clock(61)
    expired = fhir_get(sb, "Patient/pat-a", body["access_token"])
    assert expired.status_code == 401
    assert expired.json()["resourceType"] == "OperationOutcome"
    assert "invalid_token" in expired.headers["WWW-Authenticate"]


def test_token_stats_count_grant_types(sb: SandboxHandle) -> None:
    first = login(sb)
    _refresh(sb, first["refresh_token"])
    assert sb.stats()["token_requests"] == {
        "authorization_code": 1,
        "refresh_token": 1,
        "client_credentials": 0,
    }


# --- backend services ---------------------------------------------------------------


def test_backend_client_credentials_with_rs384(sb: SandboxHandle, rsa_key: jwk.RSAKey) -> None:
    token_url = f"{sb.base_url}/auth/token"
    resp = backend_token(sb, client_assertion(rsa_key, token_url), "system/Patient.rs")
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["scope"] == "system/Patient.rs"
    assert "refresh_token" not in body and "patient" not in body
    assert fhir_get(sb, "Patient/pat-b", body["access_token"]).status_code == 200
    assert fhir_get(sb, "Coverage", body["access_token"]).status_code == 403


def test_backend_client_credentials_with_es384(sb: SandboxHandle, ec_key: jwk.ECKey) -> None:
    assertion = client_assertion(ec_key, f"{sb.base_url}/auth/token", alg="ES384")
    assert backend_token(sb, assertion).status_code == 200


def test_backend_rejects_expired_assertion(sb: SandboxHandle, rsa_key: jwk.RSAKey) -> None:
    assertion = client_assertion(rsa_key, f"{sb.base_url}/auth/token", exp_in=-60)
    resp = backend_token(sb, assertion)
    assert resp.status_code == 401
    assert resp.json()["error"] == "invalid_client"
    assert "expired" in resp.json()["error_description"]


def test_backend_rejects_assertion_valid_over_five_minutes(
    sb: SandboxHandle, rsa_key: jwk.RSAKey
) -> None:
    assertion = client_assertion(rsa_key, f"{sb.base_url}/auth/token", exp_in=3600)
    assert backend_token(sb, assertion).json()["error"] == "invalid_client"


def test_backend_rejects_reused_jti(sb: SandboxHandle, rsa_key: jwk.RSAKey) -> None:
    url = f"{sb.base_url}/auth/token"
    assert backend_token(sb, client_assertion(rsa_key, url, jti="once")).status_code == 200
    replay = backend_token(sb, client_assertion(rsa_key, url, jti="once"))
    assert replay.status_code == 401
    assert "jti" in replay.json()["error_description"]


def test_backend_rejects_assertion_for_another_audience(
    sb: SandboxHandle, rsa_key: jwk.RSAKey
) -> None:
    assertion = client_assertion(rsa_key, sb.fhir_base)
    assert backend_token(sb, assertion).json()["error"] == "invalid_client"


def test_backend_rejects_rs256_assertion(sb: SandboxHandle, rsa_key: jwk.RSAKey) -> None:
    assertion = client_assertion(rsa_key, f"{sb.base_url}/auth/token", alg="RS256")
    assert backend_token(sb, assertion).json()["error"] == "invalid_client"


def test_backend_rejects_assertion_signed_with_unregistered_key(sb: SandboxHandle) -> None:
    other = jwk.RSAKey.generate_key(2048, parameters={"kid": "rsa-1"})
    assertion = client_assertion(other, f"{sb.base_url}/auth/token")
    resp = backend_token(sb, assertion)
    assert resp.status_code == 401
    assert "signature" in resp.json()["error_description"]


def test_backend_grants_only_system_scopes(sb: SandboxHandle, rsa_key: jwk.RSAKey) -> None:
    assertion = client_assertion(rsa_key, f"{sb.base_url}/auth/token")
    resp = backend_token(sb, assertion, "patient/*.rs user/*.rs")
    assert resp.json()["error"] == "invalid_scope"


def test_client_credentials_refused_to_public_client(sb: SandboxHandle) -> None:
    resp = token_request(
        sb, {"grant_type": "client_credentials", "client_id": "pub", "scope": "system/*.rs"}
    )
    assert resp.json()["error"] == "unauthorized_client"


def test_backend_key_from_jwks_uri(rsa_key: jwk.RSAKey) -> None:
    """An asymmetric client registered with a jwks_uri: the sandbox fetches its keys."""
    jwks = json.dumps({"keys": [rsa_key.as_dict(private=False)]})

    def keys_app(environ: dict[str, Any], start_response: Any) -> Any:
        return Response(jwks, mimetype="application/json")(environ, start_response)

    server = make_server("127.0.0.1", 0, keys_app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        client = {
            "client_id": "remote-keys",
            "type": "confidential-asymmetric",
            "jwks_uri": f"http://127.0.0.1:{server.server_port}/jwks.json",
            "backend": True,
        }
        with running_sandbox(clients=[client], population=population()) as sb:
            url = f"{sb.base_url}/auth/token"
            assertion = client_assertion(rsa_key, url, client_id="remote-keys")
            assert backend_token(sb, assertion, "system/Patient.rs").status_code == 200
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


# --- id_token, jwks, introspection --------------------------------------------------


def _id_token_claims(sb: SandboxHandle, id_token: str) -> dict[str, Any]:
    keys = jwk.KeySet.import_key_set(requests.get(f"{sb.base_url}/auth/jwks", timeout=10).json())
    token = jwt.decode(id_token, keys, algorithms=["RS256"])
    assert token.header["alg"] == "RS256"
    return dict(token.claims)


def test_id_token_is_rs256_signed_with_fhir_user(sb: SandboxHandle) -> None:
    body = login(sb, nonce="n-123")
    claims = _id_token_claims(sb, body["id_token"])
    assert claims["iss"] == sb.fhir_base
    assert claims["aud"] == "pub"
    assert claims["fhirUser"] == "Practitioner/prac-clinician-lee"
    assert claims["sub"] == "prac-clinician-lee"
    assert claims["nonce"] == "n-123"
    assert claims["exp"] > time.time()
    conf = requests.get(f"{sb.fhir_base}/.well-known/smart-configuration", timeout=10).json()
    assert conf["issuer"] == claims["iss"]


def test_scheduler_user_is_selectable_at_login(sb: SandboxHandle) -> None:
    pkce_login = login(sb, scope="openid fhirUser user/*.rs")
    assert _id_token_claims(sb, pkce_login["id_token"])["fhirUser"].startswith("Practitioner/")
    pkce = Pkce.new()
    params = authorize_params(sb, pkce, scope="openid fhirUser user/*.rs")
    code = authorize(sb, params, user="prac-scheduler-ortiz")["code"][0]
    body = exchange(sb, code, pkce.verifier).json()
    claims = _id_token_claims(sb, body["id_token"])
    assert claims["fhirUser"] == "Practitioner/prac-scheduler-ortiz"
    assert "patient" not in body


def test_smart_access_token_is_a_jwt_signed_by_the_jwks(sb: SandboxHandle) -> None:
    body = login(sb)
    claims = _id_token_claims(sb, body["access_token"])
    assert claims["aud"] == sb.fhir_base
    assert claims["patient"] == "pat-a"
    assert claims["scope"] == body["scope"]


def test_introspection_reports_active_and_inactive(sb: SandboxHandle) -> None:
    body = login(sb)
    url = f"{sb.base_url}/auth/introspect"
    info = requests.post(url, data={"token": body["access_token"]}, timeout=10).json()
    assert info["active"] is True
    assert info["client_id"] == "pub"
    assert info["patient"] == "pat-a"
    assert info["scope"] == body["scope"]
    assert info["fhirUser"] == "Practitioner/prac-clinician-lee"
    dead = requests.post(url, data={"token": "nope"}, timeout=10).json()
    assert dead == {"active": False}
