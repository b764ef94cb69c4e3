"""The sandbox's clock: tests move it instead of sleeping until something expires."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import requests
from joserfc import jwk

from sandbox.testing import SandboxHandle, running_sandbox
from tests.sandbox.conftest import (
    Pkce,
    authorize_params,
    backend_token,
    client_assertion,
    exchange,
    fhir_get,
    get_code,
    login,
    token_request,
)
from tests.sandbox.population import population


def _refresh(sb: SandboxHandle, refresh_token: str) -> requests.Response:
    data = {"grant_type": "refresh_token", "refresh_token": refresh_token, "client_id": "pub"}
    return token_request(sb, data)


def test_access_token_is_refused_after_the_clock_passes_its_lifetime(sb: SandboxHandle) -> None:
    body = login(sb)
    assert body["expires_in"] == 3600
    started = time.monotonic()
    sb.advance_clock(3599)
    assert fhir_get(sb, "Patient/pat-a", body["access_token"]).status_code == 200
    sb.advance_clock(2)
    expired = fhir_get(sb, "Patient/pat-a", body["access_token"])
    assert expired.status_code == 401
    assert expired.json()["resourceType"] == "OperationOutcome"
    assert "invalid_token" in expired.headers["WWW-Authenticate"]
    assert time.monotonic() - started < 5  # an hour went by without waiting for it


def test_refresh_still_works_after_the_access_token_expired(sb: SandboxHandle) -> None:
    first = login(sb)
    sb.advance_clock(7200)
    refreshed = _refresh(sb, first["refresh_token"])
    assert refreshed.status_code == 200, refreshed.text
    # Issued on the moved clock, the new token lives its full hour from there.
    assert fhir_get(sb, "Patient/pat-a", refreshed.json()["access_token"]).status_code == 200


def test_refresh_token_lifetime_runs_on_the_sandbox_clock(sb: SandboxHandle) -> None:
    sb.set_knobs(refresh_token_lifetime_s=600)
    body = login(sb)
    sb.advance_clock(599)
    rotated = _refresh(sb, body["refresh_token"])
    assert rotated.status_code == 200
    sb.advance_clock(601)
    late = _refresh(sb, rotated.json()["refresh_token"])
    assert late.status_code == 400
    assert late.json() == {"error": "invalid_grant", "error_description": "refresh token expired"}


def test_authorization_code_expires_on_the_sandbox_clock(sb: SandboxHandle) -> None:
    pkce = Pkce.new()
    code = get_code(sb, pkce)
    sb.advance_clock(121)
    resp = exchange(sb, code, pkce.verifier)
    assert resp.status_code == 400
    assert resp.json()["error_description"] == "authorization code expired"


def test_launch_expires_on_the_sandbox_clock(sb: SandboxHandle) -> None:
    launch = sb.launch("pub", patient="pat-a")["launch"]
    sb.advance_clock(601)
    params = authorize_params(sb, Pkce.new(), scope="launch openid patient/*.rs", launch=launch)
    resp = requests.get(
        f"{sb.base_url}/auth/authorize", params=params, allow_redirects=False, timeout=10
    )
    assert resp.status_code == 302
    assert "unknown+or+expired+launch" in resp.headers["Location"]


def test_introspection_reports_expiry_on_the_wall_clock(sb: SandboxHandle) -> None:
    body = login(sb)
    url = f"{sb.base_url}/auth/introspect"
    before = requests.post(url, data={"token": body["access_token"]}, timeout=10).json()
    sb.advance_clock(1000)
    after = requests.post(url, data={"token": body["access_token"]}, timeout=10).json()
    # The token aged 1000 s: the client sees it ending 1000 s sooner.
    assert before["exp"] - after["exp"] == 1000
    assert abs(before["exp"] - (time.time() + 3600)) < 5


def test_clock_reports_its_offset_and_resets(sb: SandboxHandle) -> None:
    assert sb.clock()["offset_seconds"] == 0
    assert sb.advance_clock(90)["offset_seconds"] == 90
    assert sb.advance_clock(10)["offset_seconds"] == 100
    assert sb.reset_clock()["offset_seconds"] == 0
    sb.advance_clock(5)
    sb.reset()
    assert sb.clock()["offset_seconds"] == 0


def test_clock_refuses_to_go_backwards_or_take_junk(sb: SandboxHandle) -> None:
    for bad in ({"advance_seconds": -5}, {"advance_seconds": "60"}, {}, {"reset": "yes"}):
        resp = requests.post(f"{sb.base_url}/admin/clock", json=bad, timeout=10)
        assert resp.status_code == 400, bad
    assert sb.clock()["offset_seconds"] == 0


def test_backend_assertions_are_checked_on_the_wall_clock(
    sb: SandboxHandle, rsa_key: jwk.RSAKey
) -> None:
    """The client's clock did not move: its fresh assertion must still be accepted."""
    sb.advance_clock(3600)
    assertion = client_assertion(rsa_key, f"{sb.base_url}/auth/token")
    resp = backend_token(sb, assertion)
    assert resp.status_code == 200, resp.text
    assert fhir_get(sb, "Patient/pat-a", resp.json()["access_token"]).status_code == 200


def test_expire_tokens_ends_every_access_token_but_not_refresh(sb: SandboxHandle) -> None:
    first = login(sb)
    second = login(sb, scope="openid fhirUser user/*.rs")
    assert sb.expire_tokens() == 2
    for body in (first, second):
        assert fhir_get(sb, "Patient/pat-a", body["access_token"]).status_code == 401
    refreshed = _refresh(sb, first["refresh_token"]).json()
    assert fhir_get(sb, "Patient/pat-a", refreshed["access_token"]).status_code == 200
    assert sb.expire_tokens() == 1


def test_clock_offset_survives_a_restart_with_a_data_dir(
    clients: list[dict[str, Any]], tmp_path: Path
) -> None:
    with running_sandbox(clients=clients, population=population(), data_dir=tmp_path) as sb:
        body = login(sb)
        sb.advance_clock(3000)
    with running_sandbox(clients=clients, population=population(), data_dir=tmp_path) as sb:
        assert sb.clock()["offset_seconds"] == 3000
        assert fhir_get(sb, "Patient/pat-a", body["access_token"]).status_code == 200
        sb.advance_clock(601)
        assert fhir_get(sb, "Patient/pat-a", body["access_token"]).status_code == 401
