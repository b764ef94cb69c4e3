"""Fixtures for the sandbox protocol tests: registered clients, keys, a running sandbox.

The helpers here play a *client* by hand (raw HTTP with requests), so each test can
misbehave in exactly one way and check that the sandbox refuses it.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest
import requests
from joserfc import jwk, jwt

from sandbox.testing import SandboxHandle, running_sandbox
from tests.sandbox.population import population

REDIRECT = "http://127.0.0.1:9/callback"
LAUNCH_URL = "http://127.0.0.1:9/launch"
SECRET = "s3cret-for-tests"
FULL_SCOPE = "launch/patient openid fhirUser offline_access patient/*.rs"


@pytest.fixture(scope="session")
def rsa_key() -> jwk.RSAKey:
    return jwk.RSAKey.generate_key(2048, parameters={"kid": "rsa-1"})


@pytest.fixture(scope="session")
def ec_key() -> jwk.ECKey:
    return jwk.ECKey.generate_key("P-384", parameters={"kid": "ec-1"})


def clients_for(rsa: jwk.RSAKey, ec: jwk.ECKey) -> list[dict[str, Any]]:
    return [
        {
            "client_id": "pub",
            "type": "public",
            "redirect_uris": [REDIRECT],
            "launch_url": LAUNCH_URL,
        },
        {
            "client_id": "conf",
            "type": "confidential-symmetric",
            "client_secret": SECRET,
            "redirect_uris": [REDIRECT],
        },
        {
            "client_id": "narrow",
            "type": "public",
            "redirect_uris": [REDIRECT],
            "scopes": "launch/patient openid fhirUser patient/Patient.rs patient/Appointment.rs",
        },
        {
            "client_id": "backend",
            "type": "confidential-asymmetric",
            "jwks": {"keys": [rsa.as_dict(private=False), ec.as_dict(private=False)]},
            "backend": True,
            "scopes": "system/*.rs system/QuestionnaireResponse.c",
        },
    ]


@pytest.fixture
def clients(rsa_key: jwk.RSAKey, ec_key: jwk.ECKey) -> list[dict[str, Any]]:
    return clients_for(rsa_key, ec_key)


@pytest.fixture
def sb(clients: list[dict[str, Any]]) -> Iterator[SandboxHandle]:
    with running_sandbox(clients=clients, population=population()) as handle:
        yield handle


@pytest.fixture
def real(clients: list[dict[str, Any]]) -> Iterator[SandboxHandle]:
    """The fixtures population (32 patients, references with display as Epic's)."""
    with running_sandbox(clients=clients) as handle:
        yield handle


@dataclass
class Pkce:
    verifier: str
    challenge: str

    @classmethod
    def new(cls) -> Pkce:
        verifier = secrets.token_urlsafe(48)
        digest = hashlib.sha256(verifier.encode()).digest()
        return cls(verifier, base64.urlsafe_b64encode(digest).decode().rstrip("="))


def authorize_params(sb: SandboxHandle, pkce: Pkce, **overrides: Any) -> dict[str, str]:
    params = {
        "response_type": "code",
        "client_id": "pub",
        "redirect_uri": REDIRECT,
        "scope": FULL_SCOPE,
        "state": "st-" + secrets.token_hex(4),
        "aud": sb.fhir_base,
        "code_challenge": pkce.challenge,
        "code_challenge_method": "S256",
    }
    params.update(overrides)
    return {k: v for k, v in params.items() if v is not None}


def authorize(
    sb: SandboxHandle, params: dict[str, str], *, patient: str = "pat-a", user: str | None = None
) -> dict[str, list[str]]:
    """Run authorize (approving the picker if shown); return the callback's query."""
    url = f"{sb.base_url}/auth/authorize?{urlencode(params)}"
    callback = sb.approve(url, patient=patient, user=user)
    assert callback.startswith(params["redirect_uri"])
    return parse_qs(urlsplit(callback).query)


def get_code(sb: SandboxHandle, pkce: Pkce, **overrides: Any) -> str:
    query = authorize(sb, authorize_params(sb, pkce, **overrides))
    return query["code"][0]


def token_request(sb: SandboxHandle, data: dict[str, str], **kw: Any) -> requests.Response:
    return requests.post(f"{sb.base_url}/auth/token", data=data, timeout=10, **kw)


def exchange(
    sb: SandboxHandle, code: str, verifier: str | None, *, client_id: str = "pub", **kw: Any
) -> requests.Response:
    data = {"grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT}
    if verifier is not None:
        data["code_verifier"] = verifier
    if "auth" not in kw:
        data["client_id"] = client_id
    data.update(kw.pop("extra", {}))
    return token_request(sb, data, **kw)


def login(sb: SandboxHandle, **overrides: Any) -> dict[str, Any]:
    pkce = Pkce.new()
    code = get_code(sb, pkce, **overrides)
    resp = exchange(sb, code, pkce.verifier, client_id=overrides.get("client_id", "pub"))
    assert resp.status_code == 200, resp.text
    body: dict[str, Any] = resp.json()
    return body


def fhir_get(sb: SandboxHandle, path: str, token: str | None, **kw: Any) -> requests.Response:
    headers = {"Accept": "application/fhir+json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    url = path if path.startswith("http") else f"{sb.fhir_base}/{path}"
    return requests.get(url, headers=headers, timeout=10, **kw)


def fhir_post(
    sb: SandboxHandle, path: str, token: str, body: Any, headers: dict[str, str] | None = None
) -> requests.Response:
    all_headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/fhir+json"}
    all_headers.update(headers or {})
    return requests.post(f"{sb.fhir_base}/{path}", json=body, headers=all_headers, timeout=10)


def client_assertion(
    key: jwk.RSAKey | jwk.ECKey,
    aud: str,
    *,
    client_id: str = "backend",
    alg: str = "RS384",
    exp_in: float = 240,
    jti: str | None = None,
) -> str:
    now = int(time.time())
    claims = {
        "iss": client_id,
        "sub": client_id,
        "aud": aud,
        "exp": int(now + exp_in),
        "jti": jti or uuid.uuid4().hex,
    }
    return jwt.encode({"alg": alg, "kid": key.kid, "typ": "JWT"}, claims, key, algorithms=[alg])


def backend_token(
    sb: SandboxHandle, assertion: str, scope: str = "system/Patient.rs"
) -> requests.Response:
    return token_request(
        sb,
        {
            "grant_type": "client_credentials",
            "scope": scope,
            "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            "client_assertion": assertion,
        },
    )
